//! Punt: packets of FTP control connections go to the agent, whole, and not on. The agent
//! translates them, rewrites their payload and sends them itself. Two transports:
//!
//! - The agent's tap, when it has published one in `PUNT_TAP`: the frame's Ethernet header is
//!   overwritten with the punt metadata (`gateway_common::punt_frame`) and the packet itself
//!   goes out of the tap, whose reader is the agent: TC redirects the skb (`tun_net_xmit`),
//!   XDP redirects the frame through the devmap (`tun_xdp_xmit`). No copy, and the reader is
//!   woken as any socket reader is (`sk_data_ready`).
//! - The `PUNT` ring buffer otherwise (no tap, or the redirect failed): a copy of the packet
//!   from its IP header on. Its wake-up (`bpf_ringbuf_submit` without
//!   `BPF_RB_NO_WAKEUP`) is an irq_work, raised with a self-IPI: in a VM a trapped APIC write
//!   per record, which cost more CPU than all of the ALG's own work (DEVELOPERS.md).
//!
//! Fail closed: a packet neither transport takes is dropped and counted, never forwarded
//! untranslated (its sender retransmits it). A ring record holds the IPv4 packet from its IP
//! header on; an MTU-sized packet takes a small record, a GSO/GRO super-packet a large one.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_xdp_store_bytes},
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    Counter, PUNT_HEADER_LEN, PUNT_LARGE_DATA, PUNT_SMALL_DATA, PuntHeader, PuntReason, punt_frame,
};

use crate::{
    maps::{PUNT, PUNT_TAP, PUNT_TAP_XDP, count},
    packet::Packet,
};

const ETH_LEN: usize = network_types::eth::EthHdr::LEN;

/// TC's punt: to the agent's tap if it has one, else (or if that fails) to the ring. Returns
/// the program's verdict; the packet never continues into the stack.
#[inline(always)]
pub fn punt_tc(ctx: &mut TcContext, reason: PuntReason) -> i32 {
    // The slot is empty when the agent has no tap (XDP-only agents, `punt = "ring"`, between
    // two agents of a pinned fast path): the kernel clears it when the tap is unregistered.
    if let Some(tap) = PUNT_TAP.get_ifindex(0) {
        let meta = punt_frame::Meta {
            // SAFETY: a helper without arguments.
            punted_ns_low: unsafe { bpf_ktime_get_ns() } as u32,
            ifindex: ctx.ingress_ifindex(),
            reason: reason as u8,
        }
        .encode();
        // At TC ingress the frame starts at its Ethernet header; the MAC addresses are of no
        // use to the agent, the EtherType stays.
        if ctx.store(0, &meta, 0).is_ok() {
            // SAFETY: plain helper call; flags 0 is egress of `tap` (its reader gets it).
            // It only fails (TC_ACT_SHOT) for invalid flags.
            if unsafe { bpf_redirect(tap, 0) } == TC_ACT_REDIRECT as i64 {
                count(Counter::Punted);
                return TC_ACT_REDIRECT;
            }
        }
    }
    count(punt(ctx, reason));
    TC_ACT_SHOT
}

/// XDP's punt: to the agent's tap through the `PUNT_TAP_XDP` devmap (`tun_xdp_xmit` queues the
/// frame for the tap's reader and wakes it as a socket reader), else to the ring. Returns the
/// program's verdict; the packet never continues into the stack. A frame the tap's queue
/// cannot take is dropped by the kernel after the program and counted in the tap's
/// `tx_dropped` (`alg_punt_tap_dropped`), then retransmitted by its sender.
#[inline(always)]
pub fn punt_xdp(ctx: &mut XdpContext, reason: PuntReason) -> u32 {
    if PUNT_TAP_XDP.get(0).is_some() {
        let meta = punt_frame::Meta {
            // SAFETY: a helper without arguments.
            punted_ns_low: unsafe { bpf_ktime_get_ns() } as u32,
            ifindex: Packet::ingress_ifindex(ctx),
            reason: reason as u8,
        }
        .encode();
        // SAFETY: the helper bounds-checks the range against the frame and reads only `meta`.
        let stored = unsafe {
            bpf_xdp_store_bytes(
                ctx.ctx,
                0,
                meta.as_ptr() as *mut _,
                punt_frame::META_LEN as u32,
            )
        };
        if stored == 0
            && let Ok(action) = PUNT_TAP_XDP.redirect(0, 0)
        {
            count(Counter::Punted);
            return action;
        }
    }
    count(punt(ctx, reason));
    xdp_action::XDP_DROP
}

/// The ring transport (XDP's and TC's fallback, `punt = "ring"`): Punted, or DropPuntFailed.
#[inline(always)]
pub fn punt<P: Packet>(packet: &P, reason: PuntReason) -> Counter {
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
fn punt_into<P: Packet, const RECORD: usize>(packet: &P, reason: PuntReason, len: usize) -> bool {
    if len == 0 || len > RECORD - PUNT_HEADER_LEN {
        return false;
    }
    let Some(mut record) = PUNT.reserve_bytes(RECORD, 0) else {
        return false;
    };
    let header = PuntHeader {
        ifindex: packet.ingress_ifindex(),
        len: len as u32,
        reason: reason as u8,
        _pad: [0; 3],
        // SAFETY: a helper without arguments.
        punted_ns_low: unsafe { bpf_ktime_get_ns() } as u32,
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
