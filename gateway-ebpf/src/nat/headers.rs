//! Parsing a packet for the translation, and the rewrites every step makes: the offsets of
//! the fields translated, what the translation needs of a packet, and how an address and port
//! are replaced.

use gateway_common::{
    FlowKey, FragmentKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Rewrite,
    outcome::{Dropped, Passed},
    session_state, tcp,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use super::Outcome;
use crate::packet::{L4Check, Packet, ptr_at};

pub(super) const ETH_LEN: usize = EthHdr::LEN;
pub(super) const ETHERTYPE_IPV4: u16 = 0x0800;
/// Offsets inside the IPv4 header.
pub(super) const IP_CHECK: usize = 10;
pub(super) const IP_SRC: usize = 12;
pub(super) const IP_DST: usize = 16;
/// More-fragments flag and fragment offset, in the host-order `frags` field.
pub(super) const IP_MORE_FRAGMENTS: u16 = 0x2000;
pub(super) const IP_FRAGMENT_OFFSET: u16 = 0x1fff;
/// Offsets inside the TCP/UDP header.
pub(super) const L4_SRC_PORT: usize = 0;
pub(super) const L4_DST_PORT: usize = 2;
pub(super) const TCP_FLAGS: usize = 13;
pub(super) const TCP_CHECK: usize = 16;
pub(super) const UDP_CHECK: usize = 6;
/// ICMP: checksum and echo identifier.
pub(super) const ICMP_CHECK: usize = 2;
pub(super) const ICMP_ID: usize = 4;
pub(super) const ICMP_ECHO_REPLY: u8 = 0;
pub(super) const ICMP_ECHO_REQUEST: u8 = 8;
pub(super) const ICMP_DEST_UNREACHABLE: u8 = 3;
pub(super) const ICMP_TIME_EXCEEDED: u8 = 11;
pub(super) const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// The embedded packet starts after the 8-byte ICMP error header.
pub(super) const ICMP_ERROR_HEADER: usize = 8;

/// BPF_NOEXIST / BPF_ANY map update flags.
pub(super) const BPF_ANY: u64 = 0;
pub(super) const BPF_NOEXIST: u64 = 1;

/// What the translation needs of a parsed packet.
pub(super) struct Headers {
    /// Frame offset of the transport header.
    pub l4: usize,
    pub check: L4Check,
    /// Addresses and ports (for ICMP echo: the identifier, see `FlowKey`).
    pub key: FlowKey,
    pub tcp_flags: u8,
    /// IPv4 total length, for the byte counters.
    pub ip_len: u16,
    /// An ICMP error (destination unreachable, time exceeded, parameter problem): `key` has
    /// no ports and the packet it is about is embedded after the ICMP header.
    pub icmp_error: bool,
    /// The first fragment of a fragmented datagram: its translation is remembered for the
    /// later fragments under this key.
    pub first_fragment: Option<FragmentKey>,
}

/// What parsing found.
pub(super) enum Parsed {
    Packet(Headers),
    /// A fragment after the first: no transport header to translate by.
    LaterFragment(FragmentKey),
}

impl Headers {
    /// Frame offset of the port (or ICMP identifier) a rewrite of `side` changes.
    #[inline(always)]
    pub(super) fn port_offset(&self, side: Rewrite) -> usize {
        if self.key.proto == IPPROTO_ICMP {
            self.l4 + ICMP_ID
        } else if side == Rewrite::Source {
            self.l4 + L4_SRC_PORT
        } else {
            self.l4 + L4_DST_PORT
        }
    }
}

#[inline(always)]
pub(super) fn parse<P: Packet>(packet: &mut P) -> Result<Parsed, Outcome> {
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
pub(super) fn rewrite<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    side: Rewrite,
    addr: [u8; 4],
    port: [u8; 2],
) -> Result<(), Outcome> {
    let key = &headers.key;
    let (addr_off, old_addr, old_port) = if side == Rewrite::Source {
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
pub(super) fn state_bits(headers: &Headers) -> u8 {
    if headers.key.proto != IPPROTO_TCP {
        return 0;
    }
    let flags = headers.tcp_flags;
    let mut bits = 0;
    if flags & tcp::flags::RST != 0 {
        bits |= session_state::RST;
    }
    if flags & tcp::flags::FIN != 0 {
        bits |= session_state::FIN;
    }
    if flags & (tcp::flags::SYN | tcp::flags::RST) == 0 {
        bits |= session_state::ESTABLISHED;
    }
    bits
}
