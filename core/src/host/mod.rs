//! # `ocd_core::host` — runtime-neutral glue for the daemons (feature `host`)
//!
//! Everything both runtimes (tokio + iroh, smol + quinn) need besides the protocol itself is
//! written once here, so that no logic exists twice. Unlike [`crate::proto`], this module does
//! I/O: it reads and writes files and draws randomness from the operating system.
//!
//! * [`identity`] — the daemon's key, DID and network key on disk.
//! * [`transport`] — the two small traits (transport, runtime) a runtime implements.
//! * [`driver`] — the one event loop feeding the core, shared by both runtimes.
//! * [`daemon`], [`config`], [`cli`] — starting a daemon, its configuration, its commands.
//! * [`control`], [`status`], [`lookup`], [`search`] — the local control socket and what it
//!   answers.
//! * [`store`] — the durable store (redb): the DNT queue (encrypted), the inbox, received ids and
//!   the sender sequence; [`app`] — `ocd send`, `ocd inbox` and the DNT part of `ocd status`.
//! * [`metrics`] — Prometheus counters and gauges; [`devnet`] — a whole network on 127.0.0.1.

pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod devnet;
pub mod driver;
pub mod identity;
pub mod journal;
pub mod lookup;
pub mod metrics;
pub mod nats;
pub mod search;
pub mod status;
pub mod store;
pub mod transport;
