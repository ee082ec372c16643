//! Deterministic simulator of many `ocd-core` peers. (Being implemented.)
