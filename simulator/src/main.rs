//! `ocd-sim`: runs simulator scenarios.
fn main() {}
