//! # ocd on tokio + iroh
//!
//! The runtime half of the `ocd` binary: a [`Runtime`] over tokio, and the [`Launcher`] that binds
//! an [`IrohTransport`] and hands both to the shared driver in [`ocd_core::host`]. Nothing else
//! lives here — the CLI, configuration, driver and protocol are shared with `ocd-smol`.

use ocd_core::host::cli::Launcher;
use ocd_core::host::daemon::{self, DaemonSetup, HostError};
use ocd_core::host::transport::{BoxFuture, Runtime, Transport};
use ocd_transport_iroh::{IrohConfig, IrohTransport};
use std::time::Instant;

/// tokio as an ocd [`Runtime`]. Must be used from inside a tokio runtime.
#[derive(Clone, Debug, Default)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    fn spawn(&self, future: BoxFuture<()>) {
        tokio::spawn(future);
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}

/// Runs `ocd` daemons on tokio + iroh.
#[derive(Debug)]
pub struct TokioLauncher;

impl Launcher for TokioLauncher {
    const BINARY: &'static str = "ocd";
    const RUNTIME: &'static str = "tokio";

    fn run(setup: DaemonSetup) -> Result<(), HostError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("ocd-tokio")
            .build()
            .map_err(|source| HostError::Io { context: "starting tokio".into(), source })?;
        rt.block_on(async move {
            let transport =
                IrohTransport::bind(iroh_config(&setup)).await.map_err(|e| HostError::Transport(e.to_string()))?;
            let result = daemon::serve(TokioRuntime, transport.clone(), setup, Self::RUNTIME).await;
            if result.is_err() {
                // The daemon stopped before its own shutdown (say, the metrics address was taken):
                // close the endpoint ourselves, or iroh logs `Endpoint dropped without calling
                // Endpoint::close` at ERROR over the real error.
                transport.shutdown().await;
            }
            result
        })
    }
}

/// The iroh settings of a daemon.
pub fn iroh_config(setup: &DaemonSetup) -> IrohConfig {
    IrohConfig {
        secret: setup.identity.keypair.secret_bytes(),
        bind: setup.config.listen,
        relays: setup.config.relays,
        address_lookup: setup.config.address_lookup,
        keep_alive: setup.config.keep_alive,
        idle_timeout: setup.config.quic_idle_timeout,
        shutdown_grace: IrohConfig::DEFAULT_SHUTDOWN_GRACE,
        inbound: ocd_core::host::transport::InboundLimits::default(),
    }
}
