//! `ocd-smol`: the discovery daemon on smol + quinn. Same CLI as `ocd`; see `ocd-smol --help`.

fn main() -> std::process::ExitCode {
    ocd_core::host::cli::main::<ocd_runtime_smol::SmolLauncher>()
}
