//! # `ocd_core::host` — runtime-neutral glue for the daemons (feature `host`)
//!
//! Everything both runtimes (tokio + iroh, smol + quinn) need besides the protocol itself is
//! written once here, so that no logic exists twice. Unlike [`crate::proto`], this module does
//! I/O: it reads and writes files and draws randomness from the operating system.
//!
//! * [`identity`] — the daemon's key, DID and network key on disk.

pub mod identity;
