//! Data connections announced on FTP control connections: the agent installs an expectation
//! before it releases the reply that announces the connection; the connection's SYN uses it
//! (once) and gets its two sessions.

use gateway_common::{
    Counter, Endpoint, ExpectationKey, ExpectationKind, FlowKey, NatConfig, Rewrite, Session,
    outcome::{Dropped, Translated},
};

use super::{
    Outcome,
    hairpin::use_hairpin_expectation,
    headers::{BPF_ANY, Headers, state_bits},
    sessions::apply_session,
    sync_events,
};
use crate::{
    maps::{EXPECTATIONS, SESSIONS, count},
    packet::Packet,
};

/// A data connection's SYN: if an FTP control connection announced it, use (and remove) the
/// expectation and create the connection's two sessions.
#[inline(always)]
pub(super) fn use_expectation<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    settings: &NatConfig,
    now: u64,
) -> Option<Result<Translated, Outcome>> {
    let key = headers.key;
    let expectation_key = ExpectationKey {
        endpoint: Endpoint::new(key.dst, key.dst_port, key.proto),
        peer: key.src,
    };
    // SAFETY: map values are plain data and only read here.
    let expectation = *unsafe { EXPECTATIONS.get(expectation_key) }?;
    // One-shot: of two SYNs racing for it, only the one that removes it uses it.
    EXPECTATIONS.remove(expectation_key).ok()?;
    sync_events::changed(&expectation_key);
    if now > expectation.expires_ns {
        count(Counter::ExpectationExpired);
        return None;
    }
    let target = expectation.target;
    if expectation.kind == ExpectationKind::HairpinToServer as u8
        || expectation.kind == ExpectationKind::HairpinToClient as u8
    {
        return Some(use_hairpin_expectation(
            packet,
            headers,
            settings,
            &expectation,
            now,
        ));
    }
    let (forward, reply, backward) = if expectation.kind == ExpectationKind::Inbound as u8 {
        // To the public endpoint: delivered to the private one.
        (
            (target.addr, target.port, Rewrite::Destination),
            FlowKey {
                src: target.addr,
                dst: key.src,
                src_port: target.port,
                dst_port: key.src_port,
                proto: key.proto,
                _pad: [0; 3],
            },
            (key.dst, key.dst_port, Rewrite::Source),
        )
    } else {
        // From behind the gateway: leaves with the public address, same port.
        (
            (target.addr, key.src_port, Rewrite::Source),
            FlowKey {
                src: key.dst,
                dst: target.addr,
                src_port: key.dst_port,
                dst_port: key.src_port,
                proto: key.proto,
                _pad: [0; 3],
            },
            (key.src, key.src_port, Rewrite::Destination),
        )
    };
    let session = |(addr, port, rewrite): ([u8; 4], [u8; 2], Rewrite)| Session {
        addr,
        port,
        rewrite: rewrite as u8,
        state: state_bits(headers),
        peer_addr: [0; 4],
        peer_port: [0; 2],
        _pad: [0; 2],
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
    };
    let forward = session(forward);
    let inserted = SESSIONS
        .insert(key, forward, BPF_ANY)
        .and_then(|()| SESSIONS.insert(reply, session(backward), BPF_ANY));
    if inserted.is_err() {
        return Some(Err(Outcome::Drop(Dropped::SessionTableFull)));
    }
    sync_events::changed(&key);
    sync_events::changed(&reply);
    Some(apply_session(packet, headers, &forward).map(|()| Translated::ExpectationUsed))
}
