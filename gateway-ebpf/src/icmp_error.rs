//! Answering a translated packet's original sender with the ICMP error the kernel would
//! send about it (time exceeded, destination unreachable, fragmentation needed), in place of
//! the packet: the kernel's own would quote the translated packet and go to its translated
//! source (see `gateway_common::icmp`).
//!
//! What the kernel's `icmp_send` refuses is refused here too: no error about an ICMP error or
//! a later fragment (neither is ever quoted), none to or about a packet to a non-unicast
//! address, none to a sender the gateway has no unicast route back to (which also rules out
//! its own addresses and directed broadcasts), and the kernel's rate limits (which do not
//! apply to what BPF sends) are applied per destination and overall, except to
//! fragmentation-needed, which the kernel never limits. A packet not answered is dropped, as
//! the kernel drops it, except one too big for the next link, which the stack gets as before.
//!
//! Rarely taken: the entry points are separate functions (`#[inline(never)]`), so that their
//! frames do not add to the translation's on the 512-byte stack; the message is built in the
//! per-CPU scratch room.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC, TC_ACT_OK,
        TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup as FibLookup, xdp_action,
    },
    helpers::{
        bpf_fib_lookup, bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail, bpf_skb_store_bytes,
        bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};
use network_types::eth::EthHdr;

use gateway_common::{
    Counter,
    icmp::{
        CODE_FRAG_NEEDED, ERROR_BUFFER_LEN, ERROR_HEADERS_LEN, ERROR_TRAILER_LEN,
        ICMP_TIME_EXCEEDED, IcmpError, TokenBucket, is_unicast, rate, write_error,
    },
};

use crate::{
    maps::{ICMP_RATE, ICMP_RATE_ALL, count},
    packet::{AF_INET, Packet, ptr_at},
    scratch::{Scratch, scratch},
};

/// Room inserted after the Ethernet header of a TC packet for the message: it then ends
/// exactly where the packet's transport header starts, whatever its IPv4 header's length
/// (the message is `ERROR_HEADERS_LEN` + that header + 8 bytes).
const TC_ROOM: i32 = (ERROR_HEADERS_LEN + 8 - EthHdr::LEN) as i32;

/// The counter of an error sent.
#[inline(always)]
fn sent(error: IcmpError) -> Counter {
    if error.kind == ICMP_TIME_EXCEEDED {
        Counter::TimeExceededSent
    } else if error.code == CODE_FRAG_NEEDED {
        Counter::FragNeededSent
    } else {
        Counter::UnreachableSent
    }
}

/// Whether to answer the packet being handled (arrived on `ingress`) with `error`: the checks
/// of the kernel's `icmp_send`, then its rate limits. Returns the address to answer from (as
/// it stands in a packet), or 0 (counted: why not; 0.0.0.0 is never one of the gateway's).
/// A plain integer, not an `Option`: LLVM leaves the payload of `None` undefined, and the
/// verifier refuses the read of an uninitialized register. Not inlined, like everything
/// here: the callers' frames are full.
#[inline(never)]
fn answerable(ctx: *mut c_void, ingress: u32, error: IcmpError) -> u32 {
    let Some(scratch) = scratch() else {
        return 0;
    };
    let quote = &scratch.quote;
    let sender = quote.source();
    if !quote.present() || !is_unicast(sender) || !is_unicast(quote.destination()) {
        count(Counter::IcmpErrorSuppressed);
        return 0;
    }
    let from = address_towards(ctx, &mut scratch.fib, ingress, sender);
    if from == 0 {
        count(Counter::IcmpErrorSuppressed);
        return 0;
    }
    if error.rate_limited() && !rate_allows(scratch, sender) {
        count(Counter::IcmpErrorRateLimited);
        return 0;
    }
    from
}

/// The address the gateway answers `sender` from: the preferred source of its route back to
/// the sender, as the kernel picks for its own ICMP errors (`BPF_FIB_LOOKUP_SRC`), as it
/// stands in a packet. 0 when that route is not a unicast one (the sender is the gateway
/// itself, a broadcast, or unroutable). The lookup is made in `fib` (scratch room).
#[inline(always)]
fn address_towards(ctx: *mut c_void, fib: &mut FibLookup, ifindex: u32, sender: [u8; 4]) -> u32 {
    // SAFETY: all-zero is a valid bpf_fib_lookup; the fields the lookup reads are set below.
    *fib = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(sender);
    // SAFETY: `ctx` is the program's context; `fib` is valid for the call.
    let result = unsafe {
        bpf_fib_lookup(
            ctx,
            fib,
            core::mem::size_of::<FibLookup>() as i32,
            BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if result != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return 0;
    }
    // SAFETY: a successful lookup with BPF_FIB_LOOKUP_SRC wrote the source address.
    unsafe { fib.__bindgen_anon_3.ipv4_src }
}

/// The kernel's two ICMP rate limits: per destination host, then over all destinations.
/// The buckets are shared by all CPUs without locking: two CPUs racing for the last credit
/// may both send, which blurs the limit by a message, never more.
// The key and value are borrowed from the scratch room on purpose: the map helpers then get
// pointers into it, where copies would take the stack the callers do not have.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn rate_allows(scratch: &mut Scratch, destination: [u8; 4]) -> bool {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let (interval, burst) = (
        rate::PER_DESTINATION_INTERVAL_NS,
        rate::PER_DESTINATION_BURST,
    );
    scratch.destination = destination;
    let allowed = match ICMP_RATE.get_ptr_mut(&scratch.destination) {
        // SAFETY: a live map value.
        Some(bucket) => unsafe { (*bucket).take(now, interval, burst) },
        None => {
            // A destination not seen (or forgotten): a full bucket, as the kernel's new peer.
            scratch.bucket = TokenBucket::full(now, interval, burst);
            let allowed = scratch.bucket.take(now, interval, burst);
            let _ = ICMP_RATE.insert(&scratch.destination, &scratch.bucket, 0);
            allowed
        }
    };
    if !allowed {
        return false;
    }
    match ICMP_RATE_ALL.get_ptr_mut(0) {
        // SAFETY: a live map value. Zeroed at load: the first message finds it full.
        Some(bucket) => unsafe {
            (*bucket).take(now, rate::GLOBAL_INTERVAL_NS, rate::GLOBAL_BURST)
        },
        None => true,
    }
}

/// Writes the message into the scratch room (for the packet whose Ethernet addresses are in
/// `scratch.eth`); returns its length, 0 if there is no scratch room.
#[inline(never)]
fn build(from: u32, error: IcmpError) -> usize {
    let Some(scratch) = scratch() else {
        return 0;
    };
    let quote_len = scratch.quote.len as usize;
    write_error(
        &mut scratch.frame,
        &scratch.eth,
        from.to_ne_bytes(),
        &scratch.quote.bytes,
        quote_len,
        error,
    )
}

/// A variable length the verifier sees within [1, ERROR_BUFFER_LEN] (a power of two): the
/// room of the scratch buffer the helpers copy from. A no-op for the lengths that occur.
#[inline(always)]
fn bounded(len: usize) -> u32 {
    ((len as u32).wrapping_sub(1) & (ERROR_BUFFER_LEN as u32 - 1)) + 1
}

/// Replaces the frame with the error for its original sender and sends it back out of the
/// interface it came in on (`XDP_TX`).
#[inline(never)]
pub fn answer_xdp(ctx: &mut XdpContext, ingress: u32, error: IcmpError) -> u32 {
    let unanswered = if error.rate_limited() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    };
    let from = answerable(ctx.as_ptr(), ingress, error);
    if from == 0 {
        return unanswered;
    }
    let (Some(room), Some(eth)) = (scratch(), ptr_at::<XdpContext, [u8; 12]>(ctx, 0)) else {
        return unanswered;
    };
    // SAFETY: bounds-checked by ptr_at.
    room.eth = unsafe { *eth };
    let len = build(from, error);
    let current = (ctx.data_end() - ctx.data()) as i32;
    // Through memory: LLVM would otherwise fold `len - (end - start)` into arithmetic on
    // the packet-end pointer, which the verifier refuses.
    // SAFETY: a local's address.
    let current = unsafe { core::ptr::read_volatile(&current) };
    // A short packet (a small datagram) grows at its head: XDP keeps headroom for that
    // (XDP_PACKET_HEADROOM), while the tailroom of a frame a driver built from an skb may be
    // too small for the message.
    let delta = len as i32 - current;
    // SAFETY: the helpers check the new length against the frame's room.
    let resized = unsafe {
        if delta > 0 {
            bpf_xdp_adjust_head(ctx.ctx, -delta)
        } else {
            bpf_xdp_adjust_tail(ctx.ctx, delta)
        }
    };
    if len == 0 || resized != 0 {
        count(Counter::IcmpErrorSuppressed);
        return unanswered;
    }
    let Some(room) = scratch() else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: the helper bounds-checks the range against the (now `len`-byte) frame; the
    // source is the scratch buffer, at least as long.
    let stored =
        unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, room.frame.as_mut_ptr().cast(), bounded(len)) };
    if stored != 0 {
        // Resized and not rewritten: it must not go anywhere.
        count(Counter::DropRewriteFailed);
        return xdp_action::XDP_DROP;
    }
    count(sent(error));
    xdp_action::XDP_TX
}

/// Replaces the skb's content with the error for its original sender and sends it back out
/// of the interface it came in on.
///
/// A packet from a local sender on a virtual device may still carry a partial transport
/// checksum (CHECKSUM_PARTIAL): the kernel finishes it at transmission, summing from the
/// transport header's position in the skb and writing 6 (UDP) or 16 (TCP) bytes further on,
/// wherever the message is. So the message is built in room inserted after the Ethernet
/// header (`TC_ROOM`), which moves it in front of that position, and the packet keeps
/// `ERROR_TRAILER_LEN` zeroed bytes after the message (up to TCP's checksum field) for the
/// kernel to write into. The IPv4 total length excludes them, so receivers trim them off; for
/// other packets they are padding.
#[inline(never)]
pub fn answer_tc(ctx: &mut TcContext, ingress: u32, error: IcmpError) -> i32 {
    let unanswered = if error.rate_limited() {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    };
    let from = answerable(ctx.as_ptr(), ingress, error);
    if from == 0 {
        return unanswered;
    }
    let Some(room) = scratch() else {
        return unanswered;
    };
    // (The helper itself: aya's `load_bytes` takes the length from the skb, which the
    // verifier cannot see is non-zero.)
    if !Packet::load_bytes(ctx, 0, room.eth.as_mut_ptr(), room.eth.len() as u32) {
        return unanswered;
    }
    let len = build(from, error);
    if len == 0 || ctx.adjust_room(TC_ROOM, BPF_ADJ_ROOM_MAC, 0).is_err() {
        count(Counter::IcmpErrorSuppressed);
        return unanswered;
    }
    // From here on the packet is no longer the translated one: it is answered or dropped.
    let with_trailer = bounded(len + ERROR_TRAILER_LEN);
    // SAFETY: skb is the program's context; the helper checks the length.
    let resized = unsafe { bpf_skb_change_tail(ctx.skb.skb, with_trailer, 0) } == 0;
    // The trailer is zeros: the kernel's sum over it is then the partial checksum's seed
    // alone, never anything of the original packet.
    let stored = resized
        && scratch().is_some_and(|room| {
            // SAFETY: the helper bounds-checks the range against the skb; the source is the
            // scratch buffer, at least as long.
            unsafe {
                bpf_skb_store_bytes(
                    ctx.skb.skb.cast(),
                    0,
                    room.frame.as_ptr().cast(),
                    with_trailer,
                    0,
                ) == 0
            }
        });
    if !stored {
        count(Counter::DropRewriteFailed);
        return TC_ACT_SHOT;
    }
    count(sent(error));
    // SAFETY: plain helper call; egress of the ingress interface.
    unsafe { bpf_redirect(ingress, 0) as i32 }
}
