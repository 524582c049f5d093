//! Punt: packets of FTP control connections go to the agent, whole, through a BPF ring buffer,
//! and not on. The agent translates them, rewrites their payload and sends them itself.
//!
//! Fail closed: a packet the ring has no room for is dropped and counted, never forwarded
//! untranslated (its sender retransmits it). A record holds the IPv4 packet from its IP
//! header on; an MTU-sized packet takes a small record, a GSO/GRO super-packet a large one.

use gateway_common::{Counter, PUNT_HEADER_LEN, PUNT_LARGE_DATA, PUNT_SMALL_DATA, PuntHeader};

use crate::{maps::PUNT, packet::Packet};

const ETH_LEN: usize = network_types::eth::EthHdr::LEN;

#[inline(always)]
pub fn punt<P: Packet>(packet: &P, reason: u8) -> Counter {
    let len = packet.total_len().saturating_sub(ETH_LEN);
    let sent = if len <= PUNT_SMALL_DATA {
        punt_into::<P, { PUNT_HEADER_LEN + PUNT_SMALL_DATA }>(packet, reason, len)
    } else {
        punt_into::<P, { PUNT_HEADER_LEN + PUNT_LARGE_DATA }>(packet, reason, len)
    };
    if sent {
        Counter::Punted
    } else {
        Counter::DropPuntFailed
    }
}

/// Copies the packet into a record of `RECORD` bytes; false when the ring is full or the
/// packet does not fit.
#[inline(always)]
fn punt_into<P: Packet, const RECORD: usize>(packet: &P, reason: u8, len: usize) -> bool {
    if len == 0 || len > RECORD - PUNT_HEADER_LEN {
        return false;
    }
    let Some(mut record) = PUNT.reserve_bytes(RECORD, 0) else {
        return false;
    };
    let header = PuntHeader {
        ifindex: packet.ingress_ifindex(),
        len: len as u32,
        reason,
        _pad: [0; 3],
        // SAFETY: a helper without arguments.
        punted_ns_low: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() } as u32,
    };
    let base = record.as_mut_ptr();
    // SAFETY: the record is RECORD bytes, at least PUNT_HEADER_LEN; reserved records are
    // 8-aligned, and the header is written unaligned anyway.
    unsafe { base.cast::<PuntHeader>().write_unaligned(header) };
    // Re-derive the length where it meets the helper, so the verifier sees it within
    // [1, data area] (both data areas are powers of two). A no-op after the check above.
    let len = ((len - 1) & (RECORD - PUNT_HEADER_LEN - 1)) + 1;
    // SAFETY: `len` bytes fit after the header, checked above.
    let data = unsafe { base.add(PUNT_HEADER_LEN) };
    if packet.load_bytes(ETH_LEN as u32, data, len as u32) {
        record.submit(0);
        true
    } else {
        record.discard(0);
        false
    }
}
