//! `ocd`: the discovery daemon on tokio + iroh. See `ocd --help`.

fn main() -> std::process::ExitCode {
    ocd_core::host::cli::main::<ocd_runtime_tokio::TokioLauncher>()
}
