//! Putting a translated packet back as it arrived, for the stack: when the route lookup does
//! not forward its translated destination (the gateway itself, a broadcast, no route at all),
//! the stack gets the original. It then does with it what it does without the gateway: a
//! packet for one of its own sockets reaches it with the real sender's address (and its
//! answer goes straight back), and its ICMP errors (net unreachable for no route, port
//! unreachable for a closed port) go to the real sender, quoting what it sent. Translated,
//! the same packet would reach the gateway's sockets from the gateway itself, and the errors
//! would go nowhere.
//!
//! The addresses and ports come from the quote the translation took; the rewrites are the
//! translation's own, so the checksums stay right the same way. The sessions the translation
//! created stay: the connection's later packets take the same way.

use gateway_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use network_types::eth::EthHdr;

use crate::{
    packet::{L4Check, Packet, RewriteFailed, ptr_at},
    scratch::scratch,
};

const IP_SRC: usize = 12;
const IP_DST: usize = 16;
const IP_CHECK: usize = 10;
/// The ICMP echo identifier, which stands in for the ports.
const ICMP_ID: usize = 4;
const L4_SRC_PORT: usize = 0;
const L4_DST_PORT: usize = 2;

pub enum Restore {
    Restored,
    /// Nothing to restore from: an ICMP error or a fragment, which the stack gets translated.
    NotQuoted,
    /// A rewrite failed half-way: the packet must not go anywhere.
    Failed,
}

/// Rewrites the packet's addresses and ports back to those it arrived with.
#[inline(never)]
pub fn restore<P: Packet>(packet: &mut P) -> Restore {
    let Some(scratch) = scratch() else {
        return Restore::NotQuoted;
    };
    let quote = &scratch.quote;
    // A first fragment stays translated: its later fragments are, and the stack must
    // reassemble them.
    if !quote.present() || quote.first_fragment() {
        return Restore::NotQuoted;
    }
    let header_len = quote.header_len();
    let l4 = EthHdr::LEN + header_len;
    let check = match quote.bytes[9] {
        IPPROTO_TCP => L4Check::Tcp(l4 + 16),
        IPPROTO_UDP => L4Check::Udp(l4 + 6),
        IPPROTO_ICMP => L4Check::Icmp(l4 + 2),
        _ => return Restore::NotQuoted,
    };
    // Field by field, each reading what it needs afresh: few values live across the
    // rewrites, so little stack (the translation's frame is below this one).
    let restored = put_back_address(packet, IP_SRC, check)
        .and_then(|()| put_back_address(packet, IP_DST, check))
        .and_then(|()| {
            if let L4Check::Icmp(_) = check {
                // The echo identifier stands in for both ports.
                return put_back_port(packet, header_len, ICMP_ID, check);
            }
            put_back_port(packet, header_len, L4_SRC_PORT, check)
                .and_then(|()| put_back_port(packet, header_len, L4_DST_PORT, check))
        });
    match restored {
        Ok(()) => Restore::Restored,
        Err(RewriteFailed) => Restore::Failed,
    }
}

/// Puts back the IPv4 address at `offset` of the header (source or destination), if the
/// translation changed it.
#[inline(never)]
fn put_back_address<P: Packet>(
    packet: &mut P,
    offset: usize,
    check: L4Check,
) -> Result<(), RewriteFailed> {
    let Some(scratch) = scratch() else {
        return Err(RewriteFailed);
    };
    let original = match offset {
        IP_SRC => scratch.quote.source(),
        _ => scratch.quote.destination(),
    };
    let current: *const [u8; 4] = ptr_at(packet, EthHdr::LEN + offset).ok_or(RewriteFailed)?;
    // SAFETY: bounds-checked by ptr_at; copied out before the rewrite.
    let current = unsafe { *current };
    if current == original {
        return Ok(());
    }
    packet.rewrite_addr(
        EthHdr::LEN + offset,
        EthHdr::LEN + IP_CHECK,
        check,
        current,
        original,
    )
}

/// Puts back the 16-bit field at `offset` of the transport header (a port, the echo
/// identifier), if the translation changed it.
#[inline(never)]
fn put_back_port<P: Packet>(
    packet: &mut P,
    header_len: usize,
    offset: usize,
    check: L4Check,
) -> Result<(), RewriteFailed> {
    let Some(scratch) = scratch() else {
        return Err(RewriteFailed);
    };
    // `header_len + offset + 2` is within the quote: a header of at most 60 bytes, 8 more.
    let quoted = (header_len & 0x3c) + (offset & 0x6);
    let original = [scratch.quote.bytes[quoted], scratch.quote.bytes[quoted + 1]];
    let l4 = EthHdr::LEN + header_len;
    let current: *const [u8; 2] = ptr_at(packet, l4 + offset).ok_or(RewriteFailed)?;
    // SAFETY: bounds-checked by ptr_at; copied out before the rewrite.
    let current = unsafe { *current };
    if current == original {
        return Ok(());
    }
    packet.rewrite_port(l4 + offset, check, current, original)
}
