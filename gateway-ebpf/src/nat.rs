//! The translation itself, shared by the XDP and TC entry points.
//!
//! Published servers: traffic to a public endpoint is DNATed to its private server, and the
//! server's replies are SNATed back to the public endpoint. Everything this code does not
//! translate goes to the kernel untouched; nothing is dropped except a frame whose rewrite
//! failed half-way, which would otherwise leave inconsistent.

use gateway_common::{Counter, Endpoint, IPPROTO_TCP, IPPROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    maps::{PUBLISH_DNAT, PUBLISH_SNAT, count},
    packet::{L4Check, Packet, ptr_at},
};

pub enum Verdict {
    /// Continue into the kernel's stack (translated or not).
    Pass,
    Drop,
}

const ETH_LEN: usize = EthHdr::LEN;
const ETHERTYPE_IPV4: u16 = 0x0800;
/// Offsets inside the IPv4 header.
const IP_CHECK: usize = 10;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;
/// More-fragments flag and fragment offset, in the host-order `frags` field.
const IP_FRAGMENT_MASK: u16 = 0x3fff;
/// Offsets inside the TCP/UDP header.
const L4_SRC_PORT: usize = 0;
const L4_DST_PORT: usize = 2;
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;

#[inline(always)]
pub fn translate<P: Packet>(packet: &mut P) -> Verdict {
    let counter = match try_translate(packet) {
        Ok(counter) | Err(counter) => counter,
    };
    count(counter);
    match counter {
        Counter::DropRewriteFailed => Verdict::Drop,
        _ => Verdict::Pass,
    }
}

/// Returns the counter that describes what happened to the packet.
#[inline(always)]
fn try_translate<P: Packet>(packet: &mut P) -> Result<Counter, Counter> {
    if !packet.make_readable(ETH_LEN) {
        return Err(Counter::PassMalformed);
    }
    let eth: *const EthHdr = ptr_at(packet, 0).ok_or(Counter::PassMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETHERTYPE_IPV4 {
        return Err(Counter::PassNotIpv4);
    }

    if !packet.make_readable(ETH_LEN + Ipv4Hdr::LEN) {
        return Err(Counter::PassMalformed);
    }
    let ip: *const Ipv4Hdr = ptr_at(packet, ETH_LEN).ok_or(Counter::PassMalformed)?;
    // SAFETY: bounds-checked by ptr_at; the values are copied out before any rewrite.
    let (vihl, frags, proto, src, dst) = unsafe {
        (
            (*ip).vihl,
            (*ip).frags,
            (*ip).proto,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    // IHL counts 32-bit words; options make it up to 60 bytes.
    let ip_len = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ip_len < Ipv4Hdr::LEN {
        return Err(Counter::PassMalformed);
    }
    if u16::from_be_bytes(frags) & IP_FRAGMENT_MASK != 0 {
        return Err(Counter::PassFragment);
    }

    let l4 = ETH_LEN + ip_len;
    let l4_check = match proto {
        IPPROTO_TCP => L4Check::Tcp(l4 + TCP_CHECK),
        IPPROTO_UDP => L4Check::Udp(l4 + UDP_CHECK),
        _ => return Err(Counter::PassUnmatched),
    };
    // Both ports and the checksum field must be readable (TCP's is the furthest, at 16..18).
    if !packet.make_readable(l4_check.offset() + 2) {
        return Err(Counter::PassMalformed);
    }
    let ports: *const [u8; 4] = ptr_at(packet, l4).ok_or(Counter::PassMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let ports = unsafe { *ports };
    let src_port = [ports[0], ports[1]];
    let dst_port = [ports[2], ports[3]];

    let ip_check = ETH_LEN + IP_CHECK;
    // SAFETY: map values are plain data and only read here.
    if let Some(private) = unsafe { PUBLISH_DNAT.get(Endpoint::new(dst, dst_port, proto)) } {
        let private = *private;
        packet
            .rewrite_addr(ETH_LEN + IP_DST, ip_check, l4_check, dst, private.addr)
            .map_err(|_| Counter::DropRewriteFailed)?;
        packet
            .rewrite_port(l4 + L4_DST_PORT, l4_check, dst_port, private.port)
            .map_err(|_| Counter::DropRewriteFailed)?;
        return Ok(Counter::DnatPublished);
    }
    // SAFETY: as above.
    if let Some(public) = unsafe { PUBLISH_SNAT.get(Endpoint::new(src, src_port, proto)) } {
        let public = *public;
        packet
            .rewrite_addr(ETH_LEN + IP_SRC, ip_check, l4_check, src, public.addr)
            .map_err(|_| Counter::DropRewriteFailed)?;
        packet
            .rewrite_port(l4 + L4_SRC_PORT, l4_check, src_port, public.port)
            .map_err(|_| Counter::DropRewriteFailed)?;
        return Ok(Counter::SnatPublished);
    }
    Err(Counter::PassUnmatched)
}
