//! Hairpinning (RFC 4787 REQ-8): an inside host reaching a published server through its
//! public address. Both addresses are rewritten, so the server answers the gateway.

use gateway_common::{
    Endpoint, ExpectationEntry, ExpectationKind, FlowKey, NatConfig, PuntReason, Rewrite, Session,
    outcome::{Dropped, Passed, Translated},
};

use super::{
    Outcome,
    ftp_control::punt_endpoint,
    headers::{BPF_ANY, Headers, state_bits},
    masquerade::mapping,
    sessions::{apply_session, now, session_hit},
    sync_events,
};
use crate::{maps::SESSIONS, packet::Packet};

/// A new hairpinned connection: an inside client to `published` (public), served by
/// `server` (private). The client is masqueraded like any outgoing connection, so the server
/// answers the gateway, which sends the answer back to the client from the public endpoint.
/// A published FTP control endpoint's connections go to the agent instead (after their
/// sessions: one made before the publish got its `alg` keeps going here until it ends).
#[inline(always)]
pub(super) fn hairpin<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    config: &NatConfig,
    published: Endpoint,
    server: Endpoint,
) -> Result<Translated, Outcome> {
    let now = now();
    if let Some(result) = session_hit(packet, headers, config, now) {
        return result;
    }
    if punt_endpoint(published).is_some() {
        return Err(Outcome::Punt(PuntReason::HairpinFromClient));
    }
    let key = headers.key;
    let client = Endpoint::new(key.src, key.src_port, key.proto);
    let public_client = mapping(config, client)?;
    install_hairpin(packet, headers, public_client, server, now)?;
    Ok(Translated::HairpinCreated)
}

/// A hairpinned FTP data connection's SYN, announced by the control connection's
/// expectation: translated both ways as any hairpinned connection. Passive mode
/// (`HairpinToServer`, the inside client opens it to the public data endpoint): the client
/// gets its masquerade mapping as source, the server is the destination. Active mode
/// (`HairpinToClient`, the server opens it to the client's masquerade endpoint): the server
/// gets its public address as source (its port kept), the client is the destination.
#[inline(always)]
pub(super) fn use_hairpin_expectation<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    config: &NatConfig,
    expectation: &ExpectationEntry,
    now: u64,
) -> Result<Translated, Outcome> {
    let key = headers.key;
    let source = if expectation.kind == ExpectationKind::HairpinToServer as u8 {
        if config.address_count == 0 {
            // Masquerade gone (a reload) since the expectation was made.
            return Err(Outcome::Stack(Passed::Unmatched));
        }
        mapping(config, Endpoint::new(key.src, key.src_port, key.proto))?
    } else {
        Endpoint::new(expectation.source, key.src_port, key.proto)
    };
    install_hairpin(packet, headers, source, expectation.target, now)?;
    Ok(Translated::ExpectationUsed)
}

/// The two sessions of a hairpinned connection, and its first packet translated: the packet's
/// direction leaves from `source` to `target`; the other direction (`target` to `source`)
/// leaves from where the packet was addressed to, back to its sender.
#[inline(always)]
pub(super) fn install_hairpin<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    source: Endpoint,
    target: Endpoint,
    now: u64,
) -> Result<(), Outcome> {
    let key = headers.key;
    let forward = Session {
        addr: source.addr,
        port: source.port,
        rewrite: Rewrite::Both as u8,
        state: state_bits(headers),
        peer_addr: target.addr,
        peer_port: target.port,
        _pad: [0; 2],
        last_seen_ns: now,
        packets: 1,
        bytes: headers.ip_len as u64,
    };
    let backward = Session {
        addr: key.dst,
        port: key.dst_port,
        peer_addr: key.src,
        peer_port: key.src_port,
        packets: 0,
        bytes: 0,
        ..forward
    };
    let reply = FlowKey {
        src: target.addr,
        dst: source.addr,
        src_port: target.port,
        dst_port: source.port,
        proto: key.proto,
        _pad: [0; 3],
    };
    SESSIONS
        .insert(key, forward, BPF_ANY)
        .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))?;
    sync_events::changed(&key);
    SESSIONS
        .insert(reply, backward, BPF_ANY)
        .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))?;
    sync_events::changed(&reply);
    apply_session(packet, headers, &forward)
}
