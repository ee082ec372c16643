//! Node-side indexer scoring. (Stub — being implemented.)
