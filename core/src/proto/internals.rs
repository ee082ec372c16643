//! Internal machines, exposed only with the `internals` feature for benchmarks that drive them
//! directly (`cargo bench -p ocd-core --features internals`). Not a stable API.

pub use super::action::Action;
pub use super::dht::{Dht, Offer, Purpose};
pub use super::indexer::{IndexerService, RecordDesk};
pub use super::record::RecordStore;
