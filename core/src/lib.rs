//! # ocd-core
//!
//! The protocol heart of `ocd`, a peer-to-peer discovery daemon that re-implements and goes beyond
//! OpenCloud's `oc-discovery`.
//!
//! * [`proto`] — pure, deterministic state machines (sans-IO): feed them [`proto::Input`]s with the
//!   current [`proto::Timestamp`], drain [`proto::Output`]s, and wake them at
//!   [`proto::Peer::poll_timeout`]. No clocks, sockets, threads or unseeded randomness live there.
//! * `host` (feature `host`) — runtime-neutral glue the daemons share: configuration, identity
//!   files, the CLI, the control socket, metrics, the generic driver and the devnet launcher.
//!
//! Runtimes (tokio + iroh, smol + quinn) and the deterministic simulator only move bytes, keep time
//! and store things; every protocol decision is taken here.
#![forbid(unsafe_code)]

#[cfg(feature = "host")]
pub mod host;
pub mod journal;
pub mod proto;

/// What the core's unit tests take from a host: a clock anchor for the search mesh (read here,
/// outside the pure `proto`, as a daemon or the simulator reads it once at start).
#[cfg(test)]
pub(crate) mod test_host {
    /// An arbitrary instant to anchor virtual time on.
    pub(crate) fn clock_anchor() -> std::time::Instant {
        std::time::Instant::now()
    }
}
