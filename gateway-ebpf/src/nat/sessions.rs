//! The session table: connections already translated, one entry per direction, keyed as
//! their packets arrive (Cilium's `snat_v4_*` lookups in `nat.h`).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use gateway_common::{
    Counter, Endpoint, NatConfig, PeerKey, Rewrite, Session, outcome::Translated,
    sync_event::refresh_due,
};

use super::{
    Outcome,
    headers::{BPF_ANY, Headers, rewrite, state_bits},
    sync_events,
};
use crate::{
    maps::{MASQ_PEERS, SESSIONS, count},
    packet::Packet,
};

/// Least interval between two refreshes of a connection's `MASQ_PEERS` entry.
pub(super) const PEER_REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub(super) fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Translates the packet by its session, if it has a live one; `None` when it has none (an
/// expired one is removed and counted).
#[inline(always)]
pub(super) fn session_hit<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    config: &NatConfig,
    now: u64,
) -> Option<Result<Translated, Outcome>> {
    let key = headers.key;
    let session = SESSIONS.get_ptr_mut(key)?;
    // SAFETY: a live map value; concurrent updates of these counters from two CPUs may lose
    // an increment, which only blurs statistics.
    let session = unsafe { &mut *session };
    let idle = now.saturating_sub(session.last_seen_ns);
    if idle > config.session_timeout_ns(key.proto, session.state) {
        let _ = SESSIONS.remove(key);
        sync_events::changed(&key);
        count(Counter::SessionExpired);
        return None;
    }
    // The standby learns a new TCP state at once, a later last-seen time coarsely.
    let state = session.state | state_bits(headers);
    let sync_due = state != session.state || refresh_due(session.last_seen_ns, now);
    if session.rewrite == Rewrite::Source as u8 && idle > PEER_REFRESH_NS {
        // Outbound traffic keeps the mapping open to this host (address-dependent
        // filtering); refreshed at most once a second per connection.
        let peer = PeerKey {
            public: Endpoint::new(session.addr, session.port, key.proto),
            remote: key.dst,
        };
        if MASQ_PEERS.insert(peer, now, BPF_ANY).is_ok() && sync_due {
            sync_events::changed(&peer);
        }
    }
    session.last_seen_ns = now;
    session.state = state;
    if sync_due {
        sync_events::changed(&key);
    }
    session.packets += 1;
    session.bytes += headers.ip_len as u64;
    let session = *session;
    Some(apply_session(packet, headers, &session).map(|()| Translated::SessionHit))
}

#[inline(always)]
pub(super) fn apply_session<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    session: &Session,
) -> Result<(), Outcome> {
    if session.rewrite == Rewrite::Both as u8 {
        rewrite(packet, headers, Rewrite::Source, session.addr, session.port)?;
        return rewrite(
            packet,
            headers,
            Rewrite::Destination,
            session.peer_addr,
            session.peer_port,
        );
    }
    // As before the enum: any value but the source's rewrites the destination.
    let side = if session.rewrite == Rewrite::Source as u8 {
        Rewrite::Source
    } else {
        Rewrite::Destination
    };
    rewrite(packet, headers, side, session.addr, session.port)
}
