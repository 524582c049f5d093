//! ICMP errors about translated connections: the packet an error quotes is translated back
//! the way its connection's replies are, and the error's own address with it.

use gateway_common::{
    Endpoint, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Rewrite,
    outcome::{Dropped, Passed, Translated},
};
use network_types::ip::Ipv4Hdr;

use super::{
    Outcome,
    headers::{
        ETH_LEN, Headers, ICMP_CHECK, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_ERROR_HEADER,
        ICMP_ID, IP_CHECK, IP_DST, IP_SRC, L4_DST_PORT, L4_SRC_PORT,
    },
};
use crate::{
    maps::{PUBLISH_DNAT, PUBLISH_SNAT, SESSIONS},
    packet::{Packet, ptr_at},
};

/// An ICMP error about a translated connection (RFC 5382 REQ-9, RFC 5508): the packet it
/// quotes is the connection's packet as the sender of the error saw it, so it is translated
/// the way that connection's replies are, and the error's own address with it. Never creates
/// or removes state: an ICMP message must not tear a mapping down (REQ-10).
#[inline(always)]
pub(super) fn translate_icmp_error<P: Packet>(
    packet: &mut P,
    outer: &Headers,
) -> Result<Translated, Outcome> {
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
        (Rewrite::Source, private.addr, private.port)
    } else if let Some(public) = unsafe { PUBLISH_SNAT.get(Endpoint::new(dst, dst_port, proto)) } {
        (Rewrite::Destination, public.addr, public.port)
    } else if let Some(session) = unsafe { SESSIONS.get(quoted.reversed()) }
        && session.rewrite != Rewrite::Both as u8
    {
        // The quoted packet reversed is the connection's other direction, whose session says
        // how that direction is translated: exactly what the quoted packet needs undone.
        let side = if session.rewrite == Rewrite::Destination as u8 {
            Rewrite::Source
        } else {
            Rewrite::Destination
        };
        (side, session.addr, session.port)
    } else {
        return Err(Outcome::Stack(Passed::Unmatched));
    };

    let icmp_check = outer.l4 + ICMP_CHECK;
    let inner_check = inner + IP_CHECK;
    let (outer_addr_off, outer_old, inner_addr_off, inner_old_addr, port_off, old_port) =
        if inner_side == Rewrite::Source {
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
