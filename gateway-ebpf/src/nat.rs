//! The translation itself, shared by the XDP and TC entry points.
//!
//! In order: published servers (stateless DNAT, and SNAT of their replies); then the session
//! table (masqueraded connections, both directions); then new masqueraded connections from the
//! inside networks; then outside traffic to a masquerade address, which a mapping may admit
//! and is otherwise dropped as unsolicited. Everything else goes to the kernel untouched.
//! Drops are counted by reason; nothing is dropped silently.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use gateway_common::{
    Counter, Endpoint, ExpectationEntry, ExpectationKey, FlowKey, FragmentKey, FragmentTranslation,
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, MAX_FTP_CONTROL_PORTS, MAX_MASQ_ADDRESSES,
    MAX_MASQ_NETWORKS, NatConfig, PORT_ALLOCATION_TRIES, PeerKey, REWRITE_BOTH,
    REWRITE_DESTINATION, REWRITE_SOURCE, Session, endpoint_flags, expectation_kind, filtering,
    outcome::{Dropped, Passed, Translated},
    punt_reason, session_state,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    forward::Quote,
    maps::{
        EXPECTATIONS, FRAGMENTS, MASQ_BY_PRIVATE, MASQ_BY_PUBLIC, MASQ_PEERS, NAT_CONFIG,
        PUBLISH_DNAT, PUBLISH_SNAT, PUNT_ENDPOINTS, SESSIONS, count,
    },
    packet::{L4Check, Packet, ptr_at},
};

/// What the translation did with a packet. The program's verdict follows from the variant
/// alone (`main.rs` matches every one), and each variant carries only counters of its own
/// kind: a drop reason is a `Dropped`, so nothing can end up passed that was meant dropped.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// Translated: forward it (from BPF where the hook can, else through the stack).
    Forward(Translated),
    /// Continue into the kernel's stack, untouched.
    Stack(Passed),
    Drop(Dropped),
    /// A packet of an FTP control connection, for the agent, with why: the entry point hands
    /// it over by its hook's transport (`punt.rs`), which counts it, and it goes no further.
    Punt(u8),
}

const ETH_LEN: usize = EthHdr::LEN;
const ETHERTYPE_IPV4: u16 = 0x0800;
/// Offsets inside the IPv4 header.
const IP_CHECK: usize = 10;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;
/// More-fragments flag and fragment offset, in the host-order `frags` field.
const IP_MORE_FRAGMENTS: u16 = 0x2000;
const IP_FRAGMENT_OFFSET: u16 = 0x1fff;
/// Offsets inside the TCP/UDP header.
const L4_SRC_PORT: usize = 0;
const L4_DST_PORT: usize = 2;
const TCP_FLAGS: usize = 13;
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;
/// ICMP: checksum and echo identifier.
const ICMP_CHECK: usize = 2;
const ICMP_ID: usize = 4;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// The embedded packet starts after the 8-byte ICMP error header.
const ICMP_ERROR_HEADER: usize = 8;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// BPF_NOEXIST / BPF_ANY map update flags.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
/// Least interval between two refreshes of a connection's `MASQ_PEERS` entry.
const PEER_REFRESH_NS: u64 = 1_000_000_000;

/// What the translation needs of a parsed packet.
struct Headers {
    /// Frame offset of the transport header.
    l4: usize,
    check: L4Check,
    /// Addresses and ports (for ICMP echo: the identifier, see `FlowKey`).
    key: FlowKey,
    tcp_flags: u8,
    /// IPv4 total length, for the byte counters.
    ip_len: u16,
    /// An ICMP error (destination unreachable, time exceeded, parameter problem): `key` has
    /// no ports and the packet it is about is embedded after the ICMP header.
    icmp_error: bool,
    /// The first fragment of a fragmented datagram: its translation is remembered for the
    /// later fragments under this key.
    first_fragment: Option<FragmentKey>,
}

/// What parsing found.
enum Parsed {
    Packet(Headers),
    /// A fragment after the first: no transport header to translate by.
    LaterFragment(FragmentKey),
}

impl Headers {
    /// Frame offset of the port (or ICMP identifier) a rewrite of `side` changes.
    #[inline(always)]
    fn port_offset(&self, side: u8) -> usize {
        if self.key.proto == IPPROTO_ICMP {
            self.l4 + ICMP_ID
        } else if side == REWRITE_SOURCE {
            self.l4 + L4_SRC_PORT
        } else {
            self.l4 + L4_DST_PORT
        }
    }
}

/// Translates the packet in place. `quote` receives the head of the packet as it arrived,
/// for the ICMP error forwarding may have to send instead of it, or for handing the stack the
/// packet as it arrived. Counts the outcome, except a punt (its transport counts it: Punted,
/// or DropPuntFailed when it has no room).
#[inline(always)]
pub fn translate<P: Packet>(packet: &mut P, quote: Option<&mut Quote>) -> Outcome {
    let outcome = match try_translate(packet, quote) {
        Ok(translated) => Outcome::Forward(translated),
        Err(outcome) => outcome,
    };
    match outcome {
        Outcome::Forward(translated) => count(translated.counter()),
        Outcome::Stack(passed) => count(passed.counter()),
        Outcome::Drop(dropped) => count(dropped.counter()),
        Outcome::Punt(_) => {}
    }
    outcome
}

/// The translation the packet got; any other outcome (passed, dropped, punted) ends the
/// translation early, as the error.
#[inline(always)]
fn try_translate<P: Packet>(
    packet: &mut P,
    quote: Option<&mut Quote>,
) -> Result<Translated, Outcome> {
    let headers = match parse(packet)? {
        Parsed::Packet(headers) => headers,
        Parsed::LaterFragment(fragment) => return translate_later_fragment(packet, fragment),
    };
    // Never an ICMP error: the gateway must not answer one with another.
    if let Some(quote) = quote
        && !headers.icmp_error
    {
        quote.take(packet, headers.l4 - ETH_LEN);
    }
    let result = translate_headers(packet, &headers);
    if let (Ok(_), Some(fragment)) = (&result, headers.first_fragment) {
        remember_fragment(packet, fragment);
    }
    result
}

/// Remembers the addresses the first fragment of a datagram left with, for the later ones.
#[inline(always)]
fn remember_fragment<P: Packet>(packet: &mut P, fragment: FragmentKey) {
    let Some(ip) = ptr_at::<P, Ipv4Hdr>(packet, ETH_LEN) else {
        return;
    };
    // SAFETY: bounds-checked by ptr_at.
    let translation = unsafe {
        FragmentTranslation {
            src: (*ip).src_addr,
            dst: (*ip).dst_addr,
        }
    };
    if translation.src != fragment.src || translation.dst != fragment.dst {
        let _ = FRAGMENTS.insert(fragment, translation, BPF_ANY);
    }
}

/// A fragment after the first gets its datagram's translation. One whose first fragment was
/// not seen (lost, or reordered behind it) is passed on only where it cannot leak: from an
/// inside network or to a masquerade address it would leave untranslated, so it is dropped
/// and counted, and the sender's reassembly timeout or retransmission takes over.
#[inline(always)]
fn translate_later_fragment<P: Packet>(
    packet: &mut P,
    fragment: FragmentKey,
) -> Result<Translated, Outcome> {
    // SAFETY: map values are plain data and only read here.
    let Some(translation) = (unsafe { FRAGMENTS.get(fragment) }) else {
        let guarded = NAT_CONFIG
            .get(0)
            .filter(|config| config.address_count != 0)
            .is_some_and(|config| {
                in_networks(config, fragment.src) || is_masquerade_address(config, fragment.dst)
            });
        return Err(if guarded {
            Outcome::Drop(Dropped::FragmentUnknown)
        } else {
            Outcome::Stack(Passed::Fragment)
        });
    };
    let translation = *translation;
    let ip_check = ETH_LEN + IP_CHECK;
    if translation.src != fragment.src {
        packet
            .rewrite_addr(
                ETH_LEN + IP_SRC,
                ip_check,
                L4Check::Absent,
                fragment.src,
                translation.src,
            )
            .map_err(|_| Outcome::Drop(Dropped::RewriteFailed))?;
    }
    if translation.dst != fragment.dst {
        packet
            .rewrite_addr(
                ETH_LEN + IP_DST,
                ip_check,
                L4Check::Absent,
                fragment.dst,
                translation.dst,
            )
            .map_err(|_| Outcome::Drop(Dropped::RewriteFailed))?;
    }
    Ok(Translated::FragmentTranslated)
}

/// Translates a packet with its transport header.
#[inline(always)]
fn translate_headers<P: Packet>(packet: &mut P, headers: &Headers) -> Result<Translated, Outcome> {
    if headers.icmp_error {
        return translate_icmp_error(packet, headers);
    }
    let key = headers.key;

    // Published servers: stateless, both directions.
    let settings = NAT_CONFIG.get(0);
    // Masquerade settings, when a masquerade is configured.
    let config = settings.filter(|config| config.address_count != 0);

    let endpoint = Endpoint::new(key.dst, key.dst_port, key.proto);
    // SAFETY: map values are plain data and only read here.
    if let Some(private) = unsafe { PUBLISH_DNAT.get(endpoint) } {
        let private = *private;
        // An inside host reaching a published server through its public address (REQ-8):
        // the server must see (and answer) a public source, so the source is masqueraded too.
        if let Some(config) = config
            && in_networks(config, key.src)
        {
            // From outside, an inside source is a spoof, not a hairpin: masquerading it would
            // have the server answer a real inside host about a connection it never opened.
            if config.outside_ifindex != 0 && packet.ingress_ifindex() == config.outside_ifindex {
                return Err(Outcome::Drop(Dropped::Spoofed));
            }
            return hairpin(packet, headers, config, endpoint, private);
        }
        if let Some(reason) = punt_reason(endpoint) {
            return Err(Outcome::Punt(reason));
        }
        rewrite(
            packet,
            headers,
            REWRITE_DESTINATION,
            private.addr,
            private.port,
        )?;
        return Ok(Translated::DnatPublished);
    }
    let endpoint = Endpoint::new(key.src, key.src_port, key.proto);
    // SAFETY: as above.
    if let Some(public) = unsafe { PUBLISH_SNAT.get(endpoint) } {
        let public = *public;
        // A published server answering a hairpinned client: that connection's session says
        // both rewrites.
        if let Some(config) = config
            && is_masquerade_address(config, key.dst)
            && let Some(result) = session_hit(packet, headers, config, now())
        {
            return result;
        }
        if let Some(reason) = punt_reason(endpoint) {
            return Err(Outcome::Punt(reason));
        }
        rewrite(packet, headers, REWRITE_SOURCE, public.addr, public.port)?;
        return Ok(Translated::SnatPublished);
    }

    // Sessions exist without masquerade too (data connections of published FTP servers).
    let Some(settings) = settings else {
        return Err(Outcome::Stack(Passed::Unmatched));
    };
    let now = now();
    if let Some(result) = session_hit(packet, headers, settings, now) {
        return result;
    }
    if key.proto == IPPROTO_TCP
        && headers.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && let Some(result) = use_expectation(packet, headers, settings, now)
    {
        return result;
    }
    let Some(config) = config else {
        return Err(Outcome::Stack(Passed::Unmatched));
    };

    let ingress = packet.ingress_ifindex();
    let inside = config.inside_ifindex == 0 || ingress == config.inside_ifindex;
    let outside = config.outside_ifindex == 0 || ingress == config.outside_ifindex;
    if in_networks(config, key.src) {
        if config.outside_ifindex != 0 && ingress == config.outside_ifindex {
            return Err(Outcome::Drop(Dropped::Spoofed));
        }
        if inside && !in_networks(config, key.dst) {
            if is_ftp_control_port(config, key.proto, key.dst_port) {
                return Err(Outcome::Punt(punt_reason::MASQUERADE_FROM_CLIENT));
            }
            return masquerade_new(packet, headers, config, now);
        }
    }
    if outside && is_masquerade_address(config, key.dst) {
        // (The gateway's own FTP client, if any, keeps its connections.)
        if is_ftp_control_port(config, key.proto, key.src_port) && !packet.local_socket_exists(&key)
        {
            return Err(Outcome::Punt(punt_reason::MASQUERADE_FROM_SERVER));
        }
        return admit_inbound(packet, headers, config, now);
    }
    Err(Outcome::Stack(Passed::Unmatched))
}

/// A data connection's SYN: if an FTP control connection announced it, use (and remove) the
/// expectation and create the connection's two sessions.
#[inline(always)]
fn use_expectation<P: Packet>(
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
    if now > expectation.expires_ns {
        count(Counter::ExpectationExpired);
        return None;
    }
    let target = expectation.target;
    if expectation.kind == expectation_kind::HAIRPIN_TO_SERVER
        || expectation.kind == expectation_kind::HAIRPIN_TO_CLIENT
    {
        return Some(use_hairpin_expectation(
            packet,
            headers,
            settings,
            &expectation,
            now,
        ));
    }
    let (forward, reply, backward) = if expectation.kind == expectation_kind::INBOUND {
        // To the public endpoint: delivered to the private one.
        (
            (target.addr, target.port, REWRITE_DESTINATION),
            FlowKey {
                src: target.addr,
                dst: key.src,
                src_port: target.port,
                dst_port: key.src_port,
                proto: key.proto,
                _pad: [0; 3],
            },
            (key.dst, key.dst_port, REWRITE_SOURCE),
        )
    } else {
        // From behind the gateway: leaves with the public address, same port.
        (
            (target.addr, key.src_port, REWRITE_SOURCE),
            FlowKey {
                src: key.dst,
                dst: target.addr,
                src_port: key.dst_port,
                dst_port: key.src_port,
                proto: key.proto,
                _pad: [0; 3],
            },
            (key.src, key.src_port, REWRITE_DESTINATION),
        )
    };
    let session = |(addr, port, rewrite): ([u8; 4], [u8; 2], u8)| Session {
        addr,
        port,
        rewrite,
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
    Some(apply_session(packet, headers, &forward).map(|()| Translated::ExpectationUsed))
}

/// Whether `endpoint` is a published FTP control endpoint (`alg = "ftp"`), and if so why its
/// packets are punted.
#[inline(always)]
fn punt_reason(endpoint: Endpoint) -> Option<u8> {
    if endpoint.proto != IPPROTO_TCP {
        return None;
    }
    // SAFETY: map values are plain data and only read here.
    unsafe { PUNT_ENDPOINTS.get(endpoint) }.copied()
}

/// Whether `port` is one of `[ftp] control_ports` (outside servers of masqueraded clients).
#[inline(always)]
fn is_ftp_control_port(config: &NatConfig, proto: u8, port: [u8; 2]) -> bool {
    if proto != IPPROTO_TCP {
        return false;
    }
    for index in 0..MAX_FTP_CONTROL_PORTS {
        if index as u32 >= config.ftp_control_port_count {
            break;
        }
        if config.ftp_control_ports[index] == port {
            return true;
        }
    }
    false
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Translates the packet by its session, if it has a live one; `None` when it has none (an
/// expired one is removed and counted).
#[inline(always)]
fn session_hit<P: Packet>(
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
        count(Counter::SessionExpired);
        return None;
    }
    if session.rewrite == REWRITE_SOURCE && idle > PEER_REFRESH_NS {
        // Outbound traffic keeps the mapping open to this host (address-dependent
        // filtering); refreshed at most once a second per connection.
        let public = Endpoint::new(session.addr, session.port, key.proto);
        let _ = MASQ_PEERS.insert(
            PeerKey {
                public,
                remote: key.dst,
            },
            now,
            BPF_ANY,
        );
    }
    session.last_seen_ns = now;
    session.state |= state_bits(headers);
    session.packets += 1;
    session.bytes += headers.ip_len as u64;
    let session = *session;
    Some(apply_session(packet, headers, &session).map(|()| Translated::SessionHit))
}

#[inline(always)]
fn apply_session<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    session: &Session,
) -> Result<(), Outcome> {
    if session.rewrite == REWRITE_BOTH {
        rewrite(packet, headers, REWRITE_SOURCE, session.addr, session.port)?;
        return rewrite(
            packet,
            headers,
            REWRITE_DESTINATION,
            session.peer_addr,
            session.peer_port,
        );
    }
    rewrite(packet, headers, session.rewrite, session.addr, session.port)
}

/// A new hairpinned connection: an inside client to `published` (public), served by
/// `server` (private). The client is masqueraded like any outgoing connection, so the server
/// answers the gateway, which sends the answer back to the client from the public endpoint.
/// A published FTP control endpoint's connections go to the agent instead (after their
/// sessions: one made before the publish got its `alg` keeps going here until it ends).
#[inline(always)]
fn hairpin<P: Packet>(
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
    if punt_reason(published).is_some() {
        return Err(Outcome::Punt(punt_reason::HAIRPIN_FROM_CLIENT));
    }
    let key = headers.key;
    let client = Endpoint::new(key.src, key.src_port, key.proto);
    let public_client = mapping(config, client)?;
    install_hairpin(packet, headers, public_client, server, now)?;
    Ok(Translated::HairpinCreated)
}

/// A hairpinned FTP data connection's SYN, announced by the control connection's
/// expectation: translated both ways as any hairpinned connection. Passive mode
/// (`HAIRPIN_TO_SERVER`, the inside client opens it to the public data endpoint): the client
/// gets its masquerade mapping as source, the server is the destination. Active mode
/// (`HAIRPIN_TO_CLIENT`, the server opens it to the client's masquerade endpoint): the server
/// gets its public address as source (its port kept), the client is the destination.
#[inline(always)]
fn use_hairpin_expectation<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    config: &NatConfig,
    expectation: &ExpectationEntry,
    now: u64,
) -> Result<Translated, Outcome> {
    let key = headers.key;
    let source = if expectation.kind == expectation_kind::HAIRPIN_TO_SERVER {
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
fn install_hairpin<P: Packet>(
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
        rewrite: REWRITE_BOTH,
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
    SESSIONS
        .insert(reply, backward, BPF_ANY)
        .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))?;
    apply_session(packet, headers, &forward)
}

#[inline(always)]
fn parse<P: Packet>(packet: &mut P) -> Result<Parsed, Outcome> {
    if !packet.make_readable(ETH_LEN) {
        return Err(Outcome::Stack(Passed::Malformed));
    }
    let eth: *const EthHdr = ptr_at(packet, 0).ok_or(Outcome::Stack(Passed::Malformed))?;
    // SAFETY: bounds-checked by ptr_at.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETHERTYPE_IPV4 {
        return Err(Outcome::Stack(Passed::NotIpv4));
    }
    if !packet.make_readable(ETH_LEN + Ipv4Hdr::LEN) {
        return Err(Outcome::Stack(Passed::Malformed));
    }
    let ip: *const Ipv4Hdr = ptr_at(packet, ETH_LEN).ok_or(Outcome::Stack(Passed::Malformed))?;
    // SAFETY: bounds-checked by ptr_at; the values are copied out before any rewrite.
    let (vihl, frags, proto, src, dst, tot_len, id) = unsafe {
        (
            (*ip).vihl,
            (*ip).frags,
            (*ip).proto,
            (*ip).src_addr,
            (*ip).dst_addr,
            (*ip).tot_len,
            (*ip).id,
        )
    };
    // IHL counts 32-bit words; options make it up to 60 bytes.
    let ip_len = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ip_len < Ipv4Hdr::LEN {
        return Err(Outcome::Stack(Passed::Malformed));
    }
    let frags = u16::from_be_bytes(frags);
    let fragment = FragmentKey {
        src,
        dst,
        id,
        proto,
        _pad: 0,
    };
    if frags & IP_FRAGMENT_OFFSET != 0 {
        return Ok(Parsed::LaterFragment(fragment));
    }
    let first_fragment = (frags & IP_MORE_FRAGMENTS != 0).then_some(fragment);

    let l4 = ETH_LEN + ip_len;
    let (check, needed) = match proto {
        IPPROTO_TCP => (L4Check::Tcp(l4 + TCP_CHECK), l4 + TCP_CHECK + 2),
        IPPROTO_UDP => (L4Check::Udp(l4 + UDP_CHECK), l4 + UDP_CHECK + 2),
        IPPROTO_ICMP => (L4Check::Icmp(l4 + ICMP_CHECK), l4 + ICMP_ID + 2),
        _ => return Err(Outcome::Stack(Passed::Unmatched)),
    };
    if !packet.make_readable(needed) {
        return Err(Outcome::Stack(Passed::Malformed));
    }
    let ports: *const [u8; 6] = ptr_at(packet, l4).ok_or(Outcome::Stack(Passed::Malformed))?;
    // SAFETY: bounds-checked by ptr_at (`needed` >= l4 + 6 for every protocol above).
    let ports = unsafe { *ports };
    let (src_port, dst_port) = match proto {
        IPPROTO_ICMP => match ports[0] {
            ICMP_ECHO_REQUEST => ([ports[4], ports[5]], [0, 0]),
            ICMP_ECHO_REPLY => ([0, 0], [ports[4], ports[5]]),
            ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => ([0, 0], [0, 0]),
            _ => return Err(Outcome::Stack(Passed::Unmatched)),
        },
        _ => ([ports[0], ports[1]], [ports[2], ports[3]]),
    };
    let tcp_flags = if proto == IPPROTO_TCP {
        let flags: *const u8 =
            ptr_at(packet, l4 + TCP_FLAGS).ok_or(Outcome::Stack(Passed::Malformed))?;
        // SAFETY: bounds-checked by ptr_at.
        unsafe { *flags }
    } else {
        0
    };
    Ok(Parsed::Packet(Headers {
        l4,
        check,
        key: FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            proto,
            _pad: [0; 3],
        },
        tcp_flags,
        ip_len: u16::from_be_bytes(tot_len),
        first_fragment,
        icmp_error: proto == IPPROTO_ICMP
            && !matches!(ports[0], ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY),
    }))
}

/// Replaces the packet's source or destination address and port with `addr`/`port`.
#[inline(always)]
fn rewrite<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    side: u8,
    addr: [u8; 4],
    port: [u8; 2],
) -> Result<(), Outcome> {
    let key = &headers.key;
    let (addr_off, old_addr, old_port) = if side == REWRITE_SOURCE {
        (ETH_LEN + IP_SRC, key.src, key.src_port)
    } else {
        (ETH_LEN + IP_DST, key.dst, key.dst_port)
    };
    if old_addr != addr {
        packet
            .rewrite_addr(addr_off, ETH_LEN + IP_CHECK, headers.check, old_addr, addr)
            .map_err(|_| Outcome::Drop(Dropped::RewriteFailed))?;
    }
    if old_port != port {
        packet
            .rewrite_port(headers.port_offset(side), headers.check, old_port, port)
            .map_err(|_| Outcome::Drop(Dropped::RewriteFailed))?;
    }
    Ok(())
}

#[inline(always)]
fn state_bits(headers: &Headers) -> u8 {
    if headers.key.proto != IPPROTO_TCP {
        return 0;
    }
    let flags = headers.tcp_flags;
    let mut bits = 0;
    if flags & TCP_RST != 0 {
        bits |= session_state::RST;
    }
    if flags & TCP_FIN != 0 {
        bits |= session_state::FIN;
    }
    if flags & (TCP_SYN | TCP_RST) == 0 {
        bits |= session_state::ESTABLISHED;
    }
    bits
}

#[inline(always)]
fn in_networks(config: &NatConfig, addr: [u8; 4]) -> bool {
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
fn is_masquerade_address(config: &NatConfig, addr: [u8; 4]) -> bool {
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
fn mapping(config: &NatConfig, private: Endpoint) -> Result<Endpoint, Outcome> {
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
    let index = (u32::from_ne_bytes(private.addr) % config.address_count.max(1)) as usize;
    let Some(&addr) = config.addresses.get(index) else {
        return Err(Outcome::Stack(Passed::Unmatched));
    };
    let (min, max) = (config.port_min as u32, config.port_max as u32);
    let span = max.saturating_sub(min) + 1;
    let original = u16::from_be_bytes(private.port) as u32;
    for attempt in 0..PORT_ALLOCATION_TRIES {
        let port = if attempt == 0 && original >= min && original <= max {
            original
        } else {
            min + unsafe { bpf_get_prandom_u32() } % span
        };
        let public = Endpoint::new(addr, (port as u16).to_be_bytes(), private.proto);
        if MASQ_BY_PUBLIC.insert(public, private, BPF_NOEXIST).is_ok() {
            MASQ_BY_PRIVATE
                .insert(private, public, BPF_ANY)
                .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))?;
            return Ok(public);
        }
    }
    Err(Outcome::Drop(Dropped::PortExhausted))
}

/// Installs both directions of a masqueraded connection: `outbound` is the key of the inside
/// host's packets (private source), rewritten to `public`; the reply key is derived.
#[inline(always)]
fn install(outbound: FlowKey, public: Endpoint, now: u64, state: u8) -> Result<(), Outcome> {
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
        rewrite: REWRITE_SOURCE,
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
        rewrite: REWRITE_DESTINATION,
        ..forward
    };
    SESSIONS
        .insert(outbound, forward, BPF_ANY)
        .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))?;
    SESSIONS
        .insert(reply, backward, BPF_ANY)
        .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))?;
    // Address-dependent filtering admits this remote host to the public endpoint from now on.
    MASQ_PEERS
        .insert(
            PeerKey {
                public,
                remote: outbound.dst,
            },
            now,
            BPF_ANY,
        )
        .map_err(|_| Outcome::Drop(Dropped::SessionTableFull))
}

/// A new connection from an inside network to the outside.
#[inline(always)]
fn masquerade_new<P: Packet>(
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
    rewrite(packet, headers, REWRITE_SOURCE, public.addr, public.port)?;
    Ok(Translated::SessionCreated)
}

/// Outside traffic to a masquerade address with no session. A mapping admits it when the
/// filtering allows: endpoint-independent, any host; address-dependent (the default), a host
/// the inside endpoint has sent to; address-and-port-dependent, none (only sessions). Traffic for the gateway's own sockets, and anything that is not to a port
/// of the masquerade range, is the kernel's.
#[inline(always)]
fn admit_inbound<P: Packet>(
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
    if config.filtering == filtering::ADDRESS_AND_PORT_DEPENDENT {
        return Err(Outcome::Drop(Dropped::Unsolicited));
    }
    let public = Endpoint::new(key.dst, key.dst_port, key.proto);
    if config.filtering == filtering::ADDRESS_DEPENDENT {
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
        REWRITE_DESTINATION,
        private.addr,
        private.port,
    )?;
    Ok(Translated::SessionCreated)
}

/// An ICMP error about a translated connection (RFC 5382 REQ-9, RFC 5508): the packet it
/// quotes is the connection's packet as the sender of the error saw it, so it is translated
/// the way that connection's replies are, and the error's own address with it. Never creates
/// or removes state: an ICMP message must not tear a mapping down (REQ-10).
#[inline(always)]
fn translate_icmp_error<P: Packet>(packet: &mut P, outer: &Headers) -> Result<Translated, Outcome> {
    let inner = outer.l4 + ICMP_ERROR_HEADER;
    if !packet.make_readable(inner + Ipv4Hdr::LEN) {
        return Err(Outcome::Stack(Passed::Malformed));
    }
    let ip: *const Ipv4Hdr = ptr_at(packet, inner).ok_or(Outcome::Stack(Passed::Malformed))?;
    // SAFETY: bounds-checked by ptr_at; copied out before any rewrite.
    let (vihl, proto, src, dst) =
        unsafe { ((*ip).vihl, (*ip).proto, (*ip).src_addr, (*ip).dst_addr) };
    let inner_ip_len = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || inner_ip_len < Ipv4Hdr::LEN {
        return Err(Outcome::Stack(Passed::Malformed));
    }
    let inner_l4 = inner + inner_ip_len;
    // RFC 792: at least the first 8 bytes of the quoted datagram's payload.
    if !packet.make_readable(inner_l4 + 8) {
        return Err(Outcome::Stack(Passed::Malformed));
    }
    let head: *const [u8; 8] = ptr_at(packet, inner_l4).ok_or(Outcome::Stack(Passed::Malformed))?;
    // SAFETY: bounds-checked by ptr_at.
    let head = unsafe { *head };
    let (src_port, dst_port, src_port_off, dst_port_off) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (
            [head[0], head[1]],
            [head[2], head[3]],
            inner_l4 + L4_SRC_PORT,
            inner_l4 + L4_DST_PORT,
        ),
        IPPROTO_ICMP => match head[0] {
            ICMP_ECHO_REQUEST => (
                [head[4], head[5]],
                [0, 0],
                inner_l4 + ICMP_ID,
                inner_l4 + ICMP_ID,
            ),
            ICMP_ECHO_REPLY => (
                [0, 0],
                [head[4], head[5]],
                inner_l4 + ICMP_ID,
                inner_l4 + ICMP_ID,
            ),
            _ => return Err(Outcome::Stack(Passed::Unmatched)),
        },
        _ => return Err(Outcome::Stack(Passed::Unmatched)),
    };
    let quoted = FlowKey {
        src,
        dst,
        src_port,
        dst_port,
        proto,
        _pad: [0; 3],
    };

    // Which endpoint of the quoted packet to restore, and to what. `InnerSource`: the quoted
    // packet left through the gateway translated, the error comes back to its translated
    // source. `InnerDestination`: the quoted packet entered through the gateway translated, the
    // error comes from its translated destination.
    let (inner_side, addr, port) = if let Some(private) =
        // SAFETY: map values are plain data and only read here.
        unsafe {
            PUBLISH_DNAT.get(Endpoint::new(src, src_port, proto))
        } {
        (REWRITE_SOURCE, private.addr, private.port)
    } else if let Some(public) = unsafe { PUBLISH_SNAT.get(Endpoint::new(dst, dst_port, proto)) } {
        (REWRITE_DESTINATION, public.addr, public.port)
    } else if let Some(session) = unsafe { SESSIONS.get(quoted.reversed()) }
        && session.rewrite != REWRITE_BOTH
    {
        // The quoted packet reversed is the connection's other direction, whose session says
        // how that direction is translated: exactly what the quoted packet needs undone.
        let side = if session.rewrite == REWRITE_DESTINATION {
            REWRITE_SOURCE
        } else {
            REWRITE_DESTINATION
        };
        (side, session.addr, session.port)
    } else {
        return Err(Outcome::Stack(Passed::Unmatched));
    };

    let icmp_check = outer.l4 + ICMP_CHECK;
    let inner_check = inner + IP_CHECK;
    let (outer_addr_off, outer_old, inner_addr_off, inner_old_addr, port_off, old_port) =
        if inner_side == REWRITE_SOURCE {
            // Error to the translated source: outer destination and quoted source.
            (
                ETH_LEN + IP_DST,
                outer.key.dst,
                inner + IP_SRC,
                src,
                src_port_off,
                src_port,
            )
        } else {
            (
                ETH_LEN + IP_SRC,
                outer.key.src,
                inner + IP_DST,
                dst,
                dst_port_off,
                dst_port,
            )
        };
    // The error's own address is rewritten only where it is the quoted endpoint's (an error
    // from a router on the path keeps that router's address).
    if outer_old == inner_old_addr && outer_old != addr {
        packet
            .rewrite_addr(
                outer_addr_off,
                ETH_LEN + IP_CHECK,
                outer.check,
                outer_old,
                addr,
            )
            .map_err(|_| Outcome::Drop(Dropped::RewriteFailed))?;
    }
    if inner_old_addr != addr {
        packet
            .rewrite_embedded_addr(
                inner_addr_off,
                inner_check,
                icmp_check,
                inner_old_addr,
                addr,
            )
            .map_err(|_| Outcome::Drop(Dropped::RewriteFailed))?;
    }
    if old_port != port {
        packet
            .rewrite_embedded_port(port_off, icmp_check, old_port, port)
            .map_err(|_| Outcome::Drop(Dropped::RewriteFailed))?;
    }
    Ok(Translated::IcmpErrorTranslated)
}
