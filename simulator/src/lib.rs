//! # ocd-simulator — a deterministic discrete-event simulator of many `ocd-core` peers
//!
//! The simulator runs real [`ocd_core::proto::Peer`]s — the same state machines the daemons run —
//! in virtual time, thousands at once, and measures how the network copes with crashes,
//! partitions and byzantine peers (DESIGN.md §5). It contains **no protocol logic**: it moves
//! messages (through the real wire codec), keeps time, injects faults and misbehaviour, and
//! watches events and read-only pool views.
//!
//! * [`scenario`] — the TOML scenario format, parsed and checked up front;
//! * [`net`] — links, latency, loss, FIFO delivery, partitions, half-open links;
//! * [`queue`] — the event queue (a calendar queue ordered by time, then push order);
//! * [`sim`] — the event loop, faults, byzantine output filters and measurements;
//! * [`report`] — the JSON report and its text summary;
//! * [`trace`] — the buffered BLAKE3 trace hash;
//! * [`bench`](mod@bench) — the fixed large scenario of `ocd-sim bench`;
//! * [`plot`] — a hand-written SVG of a report's pool timeline.
//!
//! Same scenario and seed ⇒ the same report, field for field, except `wall_ms`: the run is a pure
//! function of its inputs, and `trace_hash` (BLAKE3 over every peer start, delivered message,
//! dial, close and event, in order) proves it.
//!
//! ## Measurement definitions
//!
//! Pool statistics cover alive, started, *honest* node-role peers (`node` or `node+indexer`);
//! a peer made byzantine is left out from then on. A node's live pool size is the number of
//! indexers in its pool (tracked from `IndexerAdded`/`IndexerEvicted` events) that
//! `IndexerPool::is_live` reports live.
//!
//! * `crash`: affected = nodes counting a target live at the crash; detect = crash → the node
//!   stops counting that target live (an `IndexerEvicted`/`IndexerDown` event or `is_live`
//!   turning false, checked after every input the node handles), per (node, target); recover =
//!   crash → first moment, once every target is detected, that the node has ≥ `min_indexers` live.
//! * `partition`: the same for live indexers across the cut. `heal`: affected = nodes below min at
//!   the heal; recover = heal → ≥ min. `restart`: `affected_nodes` = nodes that counted the target
//!   live when it crashed; `readmitted` = nodes whose `IndexerLive` for it came within 60 s.
//! * byzantine indexer: `honest_nodes` = honest nodes that had it in their pool at or after the
//!   start and either evicted it or held it for at least 5 simulated minutes (those that met it
//!   later and still hold it are counted in `too_recent`); `evicted_by` = the share of them that evicted it, for any reason (`evict_reasons`
//!   breaks it down); `evicted_for_cause_by` is stricter: of the honest nodes that counted it
//!   *live* after the start, the share whose next eviction of it was not a refusal, a returning
//!   seed or a migration. Byzantine node: `reached` = indexers that received a message from it
//!   after the start (for `claim_foreign_did` and `bad_signature`: a message carrying a record,
//!   i.e. a forged one), `banned_by` = the share of them that banned it; `records_accepted` =
//!   `RecordStored` events after the start for a record of it that carries a DID other than its
//!   own or whose signature does not verify (must stay 0). `withhold_records`: `lookups` /
//!   `lookups_ok_ratio` = workload lookups issued after the start and the share that succeeded.
//! * `lookup` workload: at Poisson times (the run's seed) a random alive, honest node-role peer
//!   started at least `warmup` ago looks up a random other such peer by DID, then (once that
//!   finished) by peer id. A lookup is counted (`issued`) when its `LookupDone` came and its
//!   target did not crash or restart meanwhile (else `excluded`); it succeeded (`ok`) when the
//!   record is the target's. Latency = command → `LookupDone`, in simulated ms; hops = the
//!   answering indexer's DHT hops. `failed_no_indexer` = failures where the asker had no live
//!   indexer to ask; `failed_own_budget` = failures where it had some but asked none, all at the
//!   record gets their window allows (the node refuses rather than be banned).
//! * `records`: `RecordStored` / `RecordRejected` events over the run; at the end, the alive
//!   indexers' record-store, routing-table and provider sizes and every alive peer's DHT counters.
//! * `search` workload: at Poisson times a random alive, honest node-role peer started at least
//!   `warmup` ago searches (`Command::Search`, one user per search so none cancels another) for a
//!   random other such peer, by name (`by = "name"`: a case-swapped middle part of its name — in a
//!   scenario that searches by name every node without a configured name is named
//!   `"<label>-<first 4 bytes of its peer id in hex>"`, so the needle names one peer), DID or peer
//!   id. A search is counted (`issued`) when its `SearchDone` came, unless its target crashed or
//!   restarted before its hit (then `excluded`); it is `found` when a `SearchHit` carrying the
//!   target's genuine record reached the asker, and its latency is command → that hit.
//!   `forged_delivered` counts every `SearchHit` (any search) whose record is not *genuine*: a
//!   signature that verifies now, and the peer id, DID and name of the simulated peer it names.
//!   Each not-found search gets a cause (`failure_causes`, from the state at its end and the
//!   indexers that held the target as a referent when it was issued); `referent_timeline`
//!   counts the nodes no indexer holds as a referent. `mesh`: `mesh_gossip` (PlumTree data) and
//!   `mesh_control` messages delivered from the first workload's `from` to 30 s after the last
//!   one's `until`, per search started in that window and per alive indexer running a mesh at the
//!   end; the mesh's shape (neighbours, connected components) every minute.
//! * `forge_search_hits` (indexer): `forged_sent` (records forged in `Found` / `Hits`),
//!   `forged_dropped` (`ForgedHitDropped` events naming it), `forged_delivered` (its forgeries
//!   that still became `SearchHit`s: must be 0), `reached` = emitters it sent a forged `Found`
//!   and `banned_by` the share of them that banned it (2 strikes), `exposed_nodes` = honest nodes
//!   that dropped a forgery it relayed as their emitter and `distrusted_by` the share of them that
//!   evicted it for `ForgedHits`.
//!
//! Invariants checked while running (each breach is listed in `invariant_violations`): pools within
//! their bounds and made of indexers, sessions within `max_nodes`, no honest peer banned, no honest
//! indexer storing a record whose DID belongs to another peer or whose owner misbehaves with a bad
//! signature, no DID lookup answered with the record of a peer that does not own that DID, no
//! forged record handed to an application as a search hit, no honest peer's hit dropped as forged
//! and no honest indexer evicted for forged hits.
//!
//! Byzantine behaviours are filters on the misbehaving peer's outputs (`lie_challenges`,
//! `fake_fill`, `flap_born_at`, `drop_responses`, `withhold_records`, `forge_search_hits`,
//! `claim_foreign_did`, `bad_signature`), on its inputs (`withhold_records` drops every `STORE` sent to it) or traffic
//! injected on its behalf (`heartbeat_flood`); the core itself always stays honest.

pub mod bench;
pub mod net;
pub mod plot;
pub mod queue;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod trace;

pub use report::Report;
pub use scenario::{Scenario, ScenarioError};
pub use sim::{DumpSpec, Simulation, run};
