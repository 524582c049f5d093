//! Forwarding a translated packet straight from TC, past the gateway's own IP stack: a FIB
//! lookup for the translated destination, the TTL decrement the stack would have done, and
//! `bpf_redirect_neigh`, which also resolves the next hop's MAC address when the neighbour
//! table has none yet. Anything the kernel must handle itself (TTL expiring, a packet larger
//! than the egress MTU, no route, local delivery) continues into the stack instead.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK,
        bpf_fib_lookup as FibLookup, bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use gateway_common::{Counter, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    maps::{NAT_CONFIG, count},
    packet::ptr_at,
};

const AF_INET: u8 = 2;
/// The IPv4 header's TTL and protocol, as one checksummed 16-bit word.
const IP_TTL: usize = 8;
const IP_CHECK: usize = 10;
/// TCP's data offset (header length in 32-bit words, high nibble).
const TCP_DATA_OFFSET: usize = 12;

/// Returns the TC verdict for a packet the translation has rewritten.
#[inline(always)]
pub fn tc_redirect(ctx: &mut TcContext) -> i32 {
    match NAT_CONFIG.get(0) {
        Some(config) if config.bpf_forwarding != 0 => {}
        _ => return TC_ACT_OK,
    }
    let Some(ip) = ptr_at::<TcContext, Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return TC_ACT_OK;
    };
    // SAFETY: bounds-checked by ptr_at; copied out before any helper call.
    let (vihl, ttl, proto, tos, src, dst) = unsafe {
        (
            (*ip).vihl,
            (*ip).ttl,
            (*ip).proto,
            (*ip).tos,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    let ip_header_len = ((vihl & 0x0f) as u32) * 4;
    // The transport header each GSO segment repeats: TCP's data offset, UDP's 8 bytes.
    let l4_header_len = match proto {
        IPPROTO_TCP => match ptr_at::<TcContext, u8>(
            ctx,
            EthHdr::LEN + ip_header_len as usize + TCP_DATA_OFFSET,
        ) {
            // SAFETY: bounds-checked by ptr_at.
            Some(offset) => ((unsafe { *offset } >> 4) as u32) * 4,
            None => return TC_ACT_OK,
        },
        IPPROTO_UDP => 8,
        _ => 0,
    };
    if ttl <= 1 {
        // The stack sends the time-exceeded message.
        return TC_ACT_OK;
    }

    // SAFETY: all-zero is a valid bpf_fib_lookup; the fields the lookup reads are set below.
    let mut fib: FibLookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    // SAFETY: skb is the program's context.
    fib.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // tot_len stays 0: the MTU is checked below, knowing about GSO, which the lookup does not.
    // SAFETY: `fib` lives on this stack frame for the call.
    let result = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    if result != BPF_FIB_LKUP_RET_SUCCESS as i64 && result != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return TC_ACT_OK;
    }
    // SAFETY: the lookup filled the MTU of the egress device.
    let mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
    // SAFETY: skb is the program's context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    // The largest IP packet this skb becomes on the wire: itself, or each of its segments.
    let wire_len = if gso_size == 0 {
        ctx.len().saturating_sub(EthHdr::LEN as u32)
    } else {
        gso_size + ip_header_len + l4_header_len
    };
    if wire_len > mtu {
        // Too big for the next link: the stack fragments it or sends fragmentation-needed
        // (the egress device would drop it silently).
        return TC_ACT_OK;
    }

    // What ip_forward would have done: one hop less, header checksum kept right.
    let old = u16::from_ne_bytes([ttl, proto]) as u64;
    let new = u16::from_ne_bytes([ttl - 1, proto]) as u64;
    if ctx.store(EthHdr::LEN + IP_TTL, &(ttl - 1), 0).is_err()
        || ctx
            .l3_csum_replace(EthHdr::LEN + IP_CHECK, old, new, 2)
            .is_err()
    {
        return TC_ACT_OK;
    }
    let mut next_hop = bpf_redir_neigh {
        nh_family: AF_INET as u32,
        // SAFETY: the lookup wrote the next hop (the gateway of the route, or the destination).
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: unsafe { fib.__bindgen_anon_4.ipv4_dst },
        },
    };
    count(Counter::Redirected);
    // SAFETY: `next_hop` lives on this stack frame for the call.
    unsafe {
        bpf_redirect_neigh(
            fib.ifindex,
            &mut next_hop,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}
