//! Masquerade: new connections from the inside networks get a public endpoint (a mapping,
//! endpoint-independent) and two sessions; outside traffic to a masquerade address is
//! admitted by a mapping as the filtering allows, else dropped as unsolicited.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use gateway_common::{
    Endpoint, Filtering, FlowKey, IPPROTO_ICMP, MAX_MASQ_ADDRESSES, MAX_MASQ_NETWORKS, NatConfig,
    PORT_ALLOCATION_TRIES, PeerKey, Rewrite, Session, endpoint_flags,
    masquerade::{PortCandidates, public_address_index},
    outcome::{Dropped, Passed, Translated},
    sync_event::{PrivateEndpoint, PublicEndpoint},
};

use super::{
    Outcome,
    headers::{BPF_ANY, BPF_NOEXIST, Headers, rewrite, state_bits},
    sync_events,
};
use crate::{
    maps::{MASQ_BY_PRIVATE, MASQ_BY_PUBLIC, MASQ_PEERS, SESSIONS},
    packet::Packet,
};

#[inline(always)]
pub(super) fn in_networks(config: &NatConfig, addr: [u8; 4]) -> bool {
    let count = config.network_count as usize;
    for index in 0..MAX_MASQ_NETWORKS {
        if index >= count {
            break;
        }
        if config.networks[index].contains(addr) {
            return true;
        }
    }
    false
}

#[inline(always)]
pub(super) fn is_masquerade_address(config: &NatConfig, addr: [u8; 4]) -> bool {
    let count = config.address_count as usize;
    for index in 0..MAX_MASQ_ADDRESSES {
        if index >= count {
            break;
        }
        if config.addresses[index] == addr {
            return true;
        }
    }
    false
}

/// The public endpoint of `private`: its existing mapping (endpoint-independent), else a new
/// one on the address its private address hashes to ("paired" pooling, RFC 4787 REQ-2),
/// keeping the private port when free, else trying random ports in the range.
#[inline(always)]
pub(super) fn mapping(config: &NatConfig, private: Endpoint) -> Result<Endpoint, Outcome> {
    // SAFETY: map values are plain data and only read here.
    if let Some(public) = unsafe { MASQ_BY_PRIVATE.get(private) } {
        let public = *public;
        // The reverse entry may have been evicted and the port given to someone else.
        if let Some(owner) = unsafe { MASQ_BY_PUBLIC.get(public) }
            && *owner == private
        {
            return Ok(public);
        }
    }
    let index = public_address_index(private.addr, config.address_count);
    let Some(&addr) = config.addresses.get(index) else {
        return Err(Outcome::Stack(Passed::Unmatched));
    };
    let candidates = PortCandidates::new(
        config.port_min,
        config.port_max,
        u16::from_be_bytes(private.port),
    );
    for attempt in 0..PORT_ALLOCATION_TRIES {
        // SAFETY: no preconditions.
        let port = candidates.candidate(attempt, || unsafe { bpf_get_prandom_u32() });
        let public = Endpoint::new(addr, port.to_be_bytes(), private.proto);
        if MASQ_BY_PUBLIC.insert(public, private, BPF_NOEXIST).is_ok() {
            sync_events::changed(&PublicEndpoint(public));
            MASQ_BY_PRIVATE
                .insert(private, public, BPF_ANY)
                .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))?;
            sync_events::changed(&PrivateEndpoint(private));
            return Ok(public);
        }
    }
    Err(Outcome::Drop(Dropped::PortExhausted))
}

/// Installs both directions of a masqueraded connection: `outbound` is the key of the inside
/// host's packets (private source), rewritten to `public`; the reply key is derived.
#[inline(always)]
pub(super) fn install(
    outbound: FlowKey,
    public: Endpoint,
    now: u64,
    state: u8,
) -> Result<(), Outcome> {
    let reply = FlowKey {
        src: outbound.dst,
        dst: public.addr,
        src_port: outbound.dst_port,
        dst_port: public.port,
        proto: outbound.proto,
        _pad: [0; 3],
    };
    let forward = Session {
        addr: public.addr,
        port: public.port,
        rewrite: Rewrite::Source as u8,
        state,
        peer_addr: [0; 4],
        peer_port: [0; 2],
        _pad: [0; 2],
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
    };
    let backward = Session {
        addr: outbound.src,
        port: outbound.src_port,
        rewrite: Rewrite::Destination as u8,
        ..forward
    };
    SESSIONS
        .insert(outbound, forward, BPF_ANY)
        .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))?;
    sync_events::changed(&outbound);
    SESSIONS
        .insert(reply, backward, BPF_ANY)
        .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))?;
    sync_events::changed(&reply);
    // Address-dependent filtering admits this remote host to the public endpoint from now on.
    let peer = PeerKey {
        public,
        remote: outbound.dst,
    };
    MASQ_PEERS
        .insert(peer, now, BPF_ANY)
        .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))?;
    sync_events::changed(&peer);
    Ok(())
}

/// A new connection from an inside network to the outside.
#[inline(always)]
pub(super) fn masquerade_new<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    config: &NatConfig,
    now: u64,
) -> Result<Translated, Outcome> {
    let key = headers.key;
    // Only an echo request opens an ICMP mapping.
    if key.proto == IPPROTO_ICMP && key.dst_port != [0, 0] {
        return Err(Outcome::Stack(Passed::Unmatched));
    }
    let private = Endpoint::new(key.src, key.src_port, key.proto);
    let public = mapping(config, private)?;
    install(key, public, now, state_bits(headers))?;
    let session = SESSIONS
        .get_ptr_mut(key)
        .ok_or(Outcome::Drop(Dropped::SessionTableFull))?;
    // SAFETY: the entry just inserted.
    unsafe {
        (*session).packets = 1;
        (*session).bytes = headers.ip_len as u64;
    }
    rewrite(packet, headers, Rewrite::Source, public.addr, public.port)?;
    Ok(Translated::SessionCreated)
}

/// Outside traffic to a masquerade address with no session. A mapping admits it when the
/// filtering allows: endpoint-independent, any host; address-dependent (the default), a host
/// the inside endpoint has sent to; address-and-port-dependent, none (only sessions). Traffic for the gateway's own sockets, and anything that is not to a port
/// of the masquerade range, is the kernel's.
#[inline(always)]
pub(super) fn admit_inbound<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    config: &NatConfig,
    now: u64,
) -> Result<Translated, Outcome> {
    let key = headers.key;
    if key.proto == IPPROTO_ICMP {
        // Echo requests to the gateway, and replies to its own pings, are the kernel's.
        return Err(Outcome::Stack(Passed::Unmatched));
    }
    let port = u16::from_be_bytes(key.dst_port);
    if port < config.port_min || port > config.port_max || packet.local_socket_exists(&key) {
        return Err(Outcome::Stack(Passed::Unmatched));
    }
    if config.filtering == Filtering::AddressAndPortDependent as u32 {
        return Err(Outcome::Drop(Dropped::Unsolicited));
    }
    let public = Endpoint::new(key.dst, key.dst_port, key.proto);
    if config.filtering == Filtering::AddressDependent as u32 {
        let peer = PeerKey {
            public,
            remote: key.src,
        };
        // SAFETY: map values are plain data and only read here.
        match unsafe { MASQ_PEERS.get(peer) } {
            Some(&last_sent)
                if now.saturating_sub(last_sent) <= config.mapping_timeout_ns(key.proto) => {}
            _ => return Err(Outcome::Drop(Dropped::Unsolicited)),
        }
    }
    // SAFETY: map values are plain data and only read here.
    let Some(private) = (unsafe { MASQ_BY_PUBLIC.get(public) }) else {
        return Err(Outcome::Drop(Dropped::Unsolicited));
    };
    let private = *private;
    // A port the FTP ALG holds opens only by its expectation (checked before this).
    if private.flags & endpoint_flags::ALG_CLAIM != 0 {
        return Err(Outcome::Drop(Dropped::Unsolicited));
    }
    let outbound = FlowKey {
        src: private.addr,
        dst: key.src,
        src_port: private.port,
        dst_port: key.src_port,
        proto: key.proto,
        _pad: [0; 3],
    };
    install(outbound, public, now, state_bits(headers))?;
    rewrite(
        packet,
        headers,
        Rewrite::Destination,
        private.addr,
        private.port,
    )?;
    Ok(Translated::SessionCreated)
}
