//! Indexer-side abuse control. (Stub — being implemented.)
