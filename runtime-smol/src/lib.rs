//! # ocd on smol + quinn
//!
//! The runtime half of the `ocd-smol` binary: a [`Runtime`] over smol, a quinn transport
//! ([`transport`]) with mutual authentication by self-signed ed25519 certificates ([`tls`]), and
//! the [`Launcher`] that hands both to the shared driver in [`ocd_core::host`]. The CLI,
//! configuration, driver and protocol are shared with `ocd`.

pub mod tls;
pub mod transport;

use ocd_core::host::cli::Launcher;
use ocd_core::host::daemon::{self, DaemonSetup, HostError};
use ocd_core::host::transport::{BoxFuture, Runtime};
use std::time::Instant;
use transport::{QuinnConfig, QuinnTransport};

/// smol as an ocd [`Runtime`] (tasks run on smol's global executor).
#[derive(Clone, Debug, Default)]
pub struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn spawn(&self, future: BoxFuture<()>) {
        smol::spawn(future).detach();
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(async move {
            smol::Timer::at(deadline).await;
        })
    }
}

/// Runs `ocd-smol` daemons on smol + quinn.
#[derive(Debug)]
pub struct SmolLauncher;

impl Launcher for SmolLauncher {
    const BINARY: &'static str = "ocd-smol";
    const RUNTIME: &'static str = "smol";

    fn run(setup: DaemonSetup) -> Result<(), HostError> {
        if setup.config.relays || setup.config.address_lookup {
            tracing::warn!("relays and address lookup are iroh features; ocd-smol dials addresses directly");
        }
        // smol's global executor runs spawned tasks on its own threads; the driver runs here.
        smol::block_on(async move {
            let transport =
                QuinnTransport::bind(quinn_config(&setup)).map_err(|e| HostError::Transport(e.to_string()))?;
            daemon::serve(SmolRuntime, transport, setup, Self::RUNTIME).await
        })
    }
}

/// The quinn settings of a daemon.
pub fn quinn_config(setup: &DaemonSetup) -> QuinnConfig {
    QuinnConfig {
        keypair: setup.identity.keypair.clone(),
        bind: setup.config.listen,
        keep_alive: setup.config.keep_alive,
        idle_timeout: setup.config.quic_idle_timeout,
        inbound: ocd_core::host::transport::InboundLimits::default(),
    }
}
