//! Choosing indexers to join from DHT providers (spec B §4.6): less loaded first with a random
//! spread, at most one per IPv4 /24.

use crate::proto::identity::{Addr, PeerAddr, PeerId};
use crate::proto::record::ProviderRecord;
use crate::proto::rng::DetRng;
use std::collections::BTreeSet;

/// Picks up to `want` providers to join: not excluded, not full, the less loaded first with a
/// random spread (so every node does not rush the same emptiest indexer), and at most one per
/// IPv4 /24 (the seed's `SelectByFillRate` weighed `F(1−F)`, which is symmetric, and its callers
/// passed no fill rates, B §4.6). Loopback and unparsable addresses carry no subnet.
pub fn select_by_fill(
    providers: &[ProviderRecord],
    want: usize,
    exclude: impl Fn(&PeerId) -> bool,
    rng: &mut DetRng,
) -> Vec<PeerAddr> {
    const SPREAD: f64 = 0.25;
    let mut ranked: Vec<(f64, &ProviderRecord)> = providers
        .iter()
        .filter(|r| !exclude(&r.body.provider.id) && f64::from(r.body.fill_rate) < 1.0)
        .map(|r| (f64::from(r.body.fill_rate) + rng.unit_f64() * SPREAD, r))
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut subnets = BTreeSet::new();
    let mut out = Vec::new();
    for (_, r) in ranked {
        if out.len() >= want {
            break;
        }
        if let Some(s) = subnet24(&r.body.provider.addrs)
            && !subnets.insert(s)
        {
            continue;
        }
        out.push(r.body.provider.clone());
    }
    out
}

/// The first three octets of the first non-loopback, specified IPv4 address (`"host:port"`).
fn subnet24(addrs: &[Addr]) -> Option<[u8; 3]> {
    addrs.iter().find_map(|a| {
        let sock: std::net::SocketAddr = a.parse().ok()?;
        match sock.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => {
                let o = ip.octets();
                Some([o[0], o[1], o[2]])
            }
            _ => None,
        }
    })
}
