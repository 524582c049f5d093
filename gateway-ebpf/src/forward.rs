//! What becomes of a translated packet: a FIB lookup for its translated destination (with
//! either `[dataplane] forwarding`: the lookup also decides which ICMP errors its original
//! sender gets), then, with BPF forwarding, the TTL decrement the stack would have done and a
//! redirect: `bpf_redirect_neigh` from TC (which also resolves the next hop's MAC address when
//! the neighbour table has none yet), a devmap redirect from XDP (which cannot: a missing
//! neighbour sends the packet through the stack, which resolves it). With kernel forwarding a
//! packet the route forwards goes to the stack translated.
//!
//! The stack's own ICMP errors about a translated packet would quote the translated packet
//! and go to its translated source, usually the gateway itself: the real sender would never
//! match them. So whatever the kernel would answer with an error is answered here, to the
//! original sender, quoting what it sent (`icmp_error.rs`): TTL expiry, `unreachable` and
//! `prohibit` routes, a next hop that never resolves (`neighbour.rs`), and a packet with DF
//! too big for the next link. A packet the route does not forward at all (for the gateway
//! itself, a broadcast, no route) is handed to the stack as it arrived (`untranslate.rs`):
//! the stack then delivers it to the right socket, or answers the real sender itself.
//! A `blackhole` route drops it silently, as the kernel does. Anything else the kernel
//! handles (a packet without DF to fragment, forwarding disabled, tunnels) goes to it
//! translated.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NO_SRC_ADDR, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        BPF_FIB_LKUP_RET_UNSUPP_LWT, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup as FibLookup,
        bpf_redir_neigh, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use gateway_common::{
    Counter, IPPROTO_TCP, IPPROTO_UDP, checksum,
    icmp::{IcmpError, NextHop},
};

use crate::{
    icmp_error,
    maps::{NAT_CONFIG, REDIRECT_PORTS, count},
    neighbour,
    packet::{AF_INET, Packet, ptr_at},
    scratch::scratch,
    untranslate,
};

/// The IPv4 header's TTL and protocol, as one checksummed 16-bit word.
const IP_TTL: usize = 8;
const IP_CHECK: usize = 10;
/// TCP's data offset (header length in 32-bit words, high nibble).
const TCP_DATA_OFFSET: usize = 12;

/// The IPv4 fields forwarding needs, read from the translated packet.
struct Ipv4Fields {
    ttl: u8,
    proto: u8,
    tos: u8,
    src: [u8; 4],
    dst: [u8; 4],
    tot_len: u16,
    header_len: u32,
}

#[inline(always)]
fn bpf_forwarding() -> bool {
    matches!(NAT_CONFIG.get(0), Some(config) if config.bpf_forwarding != 0)
}

#[inline(always)]
fn ipv4_fields<P: Packet>(packet: &P) -> Option<Ipv4Fields> {
    let ip = ptr_at::<P, Ipv4Hdr>(packet, EthHdr::LEN)?;
    // SAFETY: bounds-checked by ptr_at; copied out before any helper call.
    unsafe {
        Some(Ipv4Fields {
            ttl: (*ip).ttl,
            proto: (*ip).proto,
            tos: (*ip).tos,
            src: (*ip).src_addr,
            dst: (*ip).dst_addr,
            tot_len: u16::from_be_bytes((*ip).tot_len),
            header_len: (((*ip).vihl & 0x0f) as u32) * 4,
        })
    }
}

/// `bpf_fib_lookup` for the translated destination, as a packet arriving on `ifindex`. With
/// `tot_len` non-zero the kernel checks it against the route's MTU and answers
/// `BPF_FIB_LKUP_RET_FRAG_NEEDED` with the MTU in `mtu_result`.
#[inline(always)]
fn fib_lookup<C: EbpfContext>(
    ctx: &C,
    ifindex: u32,
    ip: &Ipv4Fields,
    tot_len: u16,
) -> (i64, FibLookup) {
    // SAFETY: all-zero is a valid bpf_fib_lookup; the fields the lookup reads are set below.
    let mut fib: FibLookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_1.tot_len = tot_len;
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    // SAFETY: `fib` lives on this stack frame for the call.
    let result = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    (result, fib)
}

/// The counter of a lookup result other than success.
#[inline(always)]
fn refusal(result: i64) -> Option<Counter> {
    const FWD_DISABLED: i64 = BPF_FIB_LKUP_RET_FWD_DISABLED as i64;
    const BLACKHOLE: i64 = BPF_FIB_LKUP_RET_BLACKHOLE as i64;
    const UNREACHABLE: i64 = BPF_FIB_LKUP_RET_UNREACHABLE as i64;
    const PROHIBIT: i64 = BPF_FIB_LKUP_RET_PROHIBIT as i64;
    const NOT_FWDED: i64 = BPF_FIB_LKUP_RET_NOT_FWDED as i64;
    const NO_NEIGH: i64 = BPF_FIB_LKUP_RET_NO_NEIGH as i64;
    const FRAG_NEEDED: i64 = BPF_FIB_LKUP_RET_FRAG_NEEDED as i64;
    const UNSUPP_LWT: i64 = BPF_FIB_LKUP_RET_UNSUPP_LWT as i64;
    const NO_SRC_ADDR: i64 = BPF_FIB_LKUP_RET_NO_SRC_ADDR as i64;
    Some(match result {
        0 => return None,
        FWD_DISABLED => Counter::FibForwardingDisabled,
        BLACKHOLE => Counter::FibBlackhole,
        UNREACHABLE => Counter::FibUnreachable,
        PROHIBIT => Counter::FibProhibit,
        NOT_FWDED => Counter::FibNotForwarded,
        NO_NEIGH => Counter::FibNoNeighbour,
        FRAG_NEEDED => Counter::FibFragNeeded,
        UNSUPP_LWT => Counter::FibUnsupportedLwt,
        NO_SRC_ADDR => Counter::FibNoSourceAddress,
        _ => Counter::FibError,
    })
}

/// What the route says about a translated packet.
enum Route {
    /// Forward it: from the program with BPF forwarding, else through the stack. `resolved`:
    /// the lookup found the next hop's MAC address.
    Forward { resolved: bool },
    /// The stack gets it translated and decides (fragments it, drops it).
    Stack,
    /// The route does not forward it: the stack gets it as it arrived.
    Untranslated,
    /// Its original sender gets this error instead, as from the kernel.
    Answer(IcmpError),
    /// Dropped silently, as the kernel does.
    Drop,
}

/// Decides, in the kernel's order: the route first (`ip_route_input`: unreachable and
/// prohibited routes answer, blackholes drop, local and unroutable destinations never reach
/// `ip_forward`), then TTL, then the MTU, then the neighbour.
#[inline(always)]
fn route(result: i64, fib: &FibLookup, ttl: u8) -> Route {
    if let Some(counter) = refusal(result) {
        count(counter);
    }
    let frag_needed = result == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64;
    let no_neigh = result == BPF_FIB_LKUP_RET_NO_NEIGH as i64;
    if result == BPF_FIB_LKUP_RET_SUCCESS as i64 || frag_needed || no_neigh {
        if ttl <= 1 {
            return Route::Answer(IcmpError::TIME_EXCEEDED);
        }
        if frag_needed {
            if !dont_fragment() {
                // The stack fragments it (the egress device would drop it silently).
                return Route::Stack;
            }
            // SAFETY: a FRAG_NEEDED lookup wrote the MTU over tot_len.
            let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
            return Route::Answer(IcmpError::frag_needed(mtu));
        }
        let next_hop = NextHop {
            ifindex: fib.ifindex,
            // SAFETY: the lookup wrote the next hop (the route's gateway, or the destination)
            // before looking for its neighbour entry.
            addr: unsafe { fib.__bindgen_anon_4.ipv4_dst }.to_ne_bytes(),
        };
        if !no_neigh {
            neighbour::resolved(next_hop);
        } else if neighbour::failed(next_hop) {
            return Route::Answer(IcmpError::HOST_UNREACHABLE);
        }
        return Route::Forward {
            resolved: !no_neigh,
        };
    }
    if result == BPF_FIB_LKUP_RET_BLACKHOLE as i64 {
        Route::Drop
    } else if result == BPF_FIB_LKUP_RET_UNREACHABLE as i64 {
        Route::Answer(IcmpError::HOST_UNREACHABLE)
    } else if result == BPF_FIB_LKUP_RET_PROHIBIT as i64 {
        Route::Answer(IcmpError::ADMIN_PROHIBITED)
    } else if result == BPF_FIB_LKUP_RET_NOT_FWDED as i64 {
        Route::Untranslated
    } else {
        // Forwarding disabled on the ingress interface (the stack drops it), a tunnel route,
        // no source address, a failed lookup.
        Route::Stack
    }
}

/// The TTL/protocol word before and after the hop, as they stand in the packet.
#[inline(always)]
fn ttl_words(ttl: u8, proto: u8) -> ([u8; 2], [u8; 2]) {
    ([ttl, proto], [ttl - 1, proto])
}

/// Whether the packet being handled was sent with DF (and could be quoted).
#[inline(always)]
fn dont_fragment() -> bool {
    scratch().is_some_and(|scratch| scratch.quote.dont_fragment())
}

/// The verdict for a packet whose route does not forward it: as it arrived, to the stack.
#[inline(always)]
fn untranslated<P: Packet>(packet: &mut P) -> Result<(), ()> {
    match untranslate::restore(packet) {
        untranslate::Restore::Restored => {
            count(Counter::PassedUntranslated);
            Ok(())
        }
        // An ICMP error, a fragment: the stack gets it translated, as before.
        untranslate::Restore::NotQuoted => Ok(()),
        untranslate::Restore::Failed => {
            count(Counter::DropRewriteFailed);
            Err(())
        }
    }
}

/// Returns the XDP verdict for a packet the translation has rewritten.
#[inline(always)]
pub fn xdp_forward(ctx: &mut XdpContext) -> u32 {
    let Some(ip) = ipv4_fields(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let ingress = ctx.ingress_ifindex() as u32;
    let (result, fib) = fib_lookup(ctx, ingress, &ip, ip.tot_len);
    match route(result, &fib, ip.ttl) {
        Route::Forward { resolved: true } if bpf_forwarding() => xdp_redirect(ctx, &ip, &fib),
        // Not yet resolved: the stack resolves it.
        Route::Forward { .. } | Route::Stack => xdp_action::XDP_PASS,
        Route::Untranslated => match untranslated(ctx) {
            Ok(()) => xdp_action::XDP_PASS,
            Err(()) => xdp_action::XDP_DROP,
        },
        Route::Answer(error) => icmp_error::answer_xdp(ctx, ingress, error),
        Route::Drop => xdp_action::XDP_DROP,
    }
}

/// Forwards a packet from XDP: one hop less, the lookup's MAC addresses, a devmap redirect.
#[inline(always)]
fn xdp_redirect(ctx: &mut XdpContext, ip: &Ipv4Fields, fib: &FibLookup) -> u32 {
    // Only to interfaces the agent put in the devmap; checked before anything is rewritten, so
    // that a packet the stack gets after all still has its TTL.
    if REDIRECT_PORTS.get(fib.ifindex).is_none() {
        return xdp_action::XDP_PASS;
    }
    let (Some(eth), Some(ttl_word), Some(check)) = (
        ptr_at::<XdpContext, [u8; 12]>(ctx, 0),
        ptr_at::<XdpContext, [u8; 2]>(ctx, EthHdr::LEN + IP_TTL),
        ptr_at::<XdpContext, [u8; 2]>(ctx, EthHdr::LEN + IP_CHECK),
    ) else {
        return xdp_action::XDP_PASS;
    };
    let (old, new) = ttl_words(ip.ttl, ip.proto);
    // SAFETY: every pointer was bounds-checked against the frame just above.
    unsafe {
        *ttl_word = new;
        *check = checksum::replace_u16(
            u16::from_be_bytes(*check),
            u16::from_be_bytes(old),
            u16::from_be_bytes(new),
        )
        .to_be_bytes();
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&fib.dmac);
        macs[6..].copy_from_slice(&fib.smac);
        *eth = macs;
    }
    count(Counter::Redirected);
    // The lower bits of the flags are the verdict if the entry vanished since the check.
    match REDIRECT_PORTS.redirect(fib.ifindex, xdp_action::XDP_PASS as u64) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// Returns the TC verdict for a packet the translation has rewritten.
#[inline(always)]
pub fn tc_forward(ctx: &mut TcContext) -> i32 {
    let Some(ip) = ipv4_fields(ctx) else {
        return TC_ACT_OK;
    };
    // The transport header each GSO segment repeats: TCP's data offset, UDP's 8 bytes.
    let l4_header_len = match ip.proto {
        IPPROTO_TCP => match ptr_at::<TcContext, u8>(
            ctx,
            EthHdr::LEN + ip.header_len as usize + TCP_DATA_OFFSET,
        ) {
            // SAFETY: bounds-checked by ptr_at.
            Some(offset) => ((unsafe { *offset } >> 4) as u32) * 4,
            None => return TC_ACT_OK,
        },
        IPPROTO_UDP => 8,
        _ => 0,
    };
    // SAFETY: skb is the program's context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    // The largest IP packet this skb becomes on the wire: itself, or each of its segments.
    // The lookup checks it against the route's MTU (it cannot know about GSO itself).
    let wire_len = if gso_size == 0 {
        ctx.len().saturating_sub(EthHdr::LEN as u32)
    } else {
        gso_size + ip.header_len + l4_header_len
    };
    let Ok(wire_len) = u16::try_from(wire_len) else {
        return TC_ACT_OK;
    };
    let ingress = ctx.ingress_ifindex();
    let (result, fib) = fib_lookup(ctx, ingress, &ip, wire_len);
    match route(result, &fib, ip.ttl) {
        // Resolved or not: `bpf_redirect_neigh` resolves it.
        Route::Forward { .. } if bpf_forwarding() => tc_redirect(ctx, &ip, &fib),
        Route::Forward { .. } | Route::Stack => TC_ACT_OK,
        Route::Untranslated => match untranslated(ctx) {
            Ok(()) => TC_ACT_OK,
            Err(()) => TC_ACT_SHOT,
        },
        Route::Answer(error) => icmp_error::answer_tc(ctx, ingress, error),
        Route::Drop => TC_ACT_SHOT,
    }
}

/// Forwards a packet from TC: what ip_forward would have done (one hop less, header checksum
/// kept right), then `bpf_redirect_neigh` to the next hop.
#[inline(always)]
fn tc_redirect(ctx: &mut TcContext, ip: &Ipv4Fields, fib: &FibLookup) -> i32 {
    let (old, new) = ttl_words(ip.ttl, ip.proto);
    if ctx.store(EthHdr::LEN + IP_TTL, &new[0], 0).is_err()
        || ctx
            .l3_csum_replace(
                EthHdr::LEN + IP_CHECK,
                u16::from_ne_bytes(old) as u64,
                u16::from_ne_bytes(new) as u64,
                2,
            )
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
