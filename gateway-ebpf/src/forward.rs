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
    icmp::{ERROR_BUFFER_LEN, IcmpError, MAX_QUOTE_LEN, MIN_QUOTE_LEN, NextHop, TokenBucket},
};

use crate::{
    icmp_error,
    maps::NAT_CONFIG,
    maps::REDIRECT_PORTS,
    maps::SCRATCH,
    maps::count,
    neighbour,
    packet::{Packet, ptr_at},
    untranslate,
};

pub const AF_INET: u8 = 2;
/// The IPv4 header's TTL and protocol, as one checksummed 16-bit word.
const IP_TTL: usize = 8;
const IP_CHECK: usize = 10;
/// Don't-fragment and more-fragments, in the first byte of the flags/fragment-offset field.
const IP_DF: u8 = 0x40;
const IP_MF: u8 = 0x20;
const IP_FLAGS: usize = 6;
/// TCP's data offset (header length in 32-bit words, high nibble).
const TCP_DATA_OFFSET: usize = 12;

/// The head of a translated packet as it arrived, kept by the translation for the ICMP
/// errors forwarding may have to send instead of it, and for handing it to the stack as it
/// arrived: the IPv4 header with its options and 8 bytes of transport.
#[repr(C)]
pub struct Quote {
    pub bytes: [u8; MAX_QUOTE_LEN],
    /// How many of `bytes` are the quote; 0: none (an ICMP error, or too short to quote).
    pub len: u8,
}

/// Per-CPU room (`SCRATCH`) for what does not fit on the programs' 512-byte stack, which is
/// mostly the translation's: the quote, and the ICMP message built from it.
#[repr(C)]
pub struct Scratch {
    pub quote: Quote,
    /// The Ethernet addresses of the packet answered, for the message's.
    pub eth: [u8; 12],
    pub frame: [u8; ERROR_BUFFER_LEN],
    /// The lookup of the route back to the sender (see `icmp_error::address_towards`).
    pub fib: FibLookup,
    /// A new rate-limit entry, and its key, for the map update (`icmp_error::rate_allows`).
    pub bucket: TokenBucket,
    pub destination: [u8; 4],
}

/// This CPU's scratch room. BPF programs are not preempted on their CPU: nothing else uses it
/// until the program is done with the packet.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    let slot = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a valid map value, used by this program run alone (see above).
    Some(unsafe { &mut *slot })
}

/// The quote slot for the packet being handled, emptied: per-CPU memory outlives the packet
/// that filled it, and a packet that never reaches `Quote::take` must not find another's.
#[inline(always)]
pub fn fresh_quote() -> Option<&'static mut Quote> {
    let scratch = scratch()?;
    scratch.quote.len = 0;
    Some(&mut scratch.quote)
}

impl Quote {
    /// Copies the head of the packet: its IPv4 header (`ip_header_len` bytes) and 8 bytes,
    /// and clears the rest of the room (`write_error` sends and sums it: it must not hold an
    /// earlier packet's bytes).
    #[inline(always)]
    pub fn take<P: Packet>(&mut self, packet: &P, ip_header_len: usize) {
        if ip_header_len != Ipv4Hdr::LEN {
            self.take_with_options(packet, ip_header_len);
            return;
        }
        if let Some(head) = ptr_at::<P, [u8; MIN_QUOTE_LEN]>(packet, EthHdr::LEN) {
            // SAFETY: bounds-checked by ptr_at; `bytes` is longer than the copy and the rest.
            unsafe {
                let bytes = self.bytes.as_mut_ptr();
                *(bytes as *mut [u8; MIN_QUOTE_LEN]) = *head;
                *(bytes.add(MIN_QUOTE_LEN) as *mut [u8; MAX_QUOTE_LEN - MIN_QUOTE_LEN]) =
                    [0; MAX_QUOTE_LEN - MIN_QUOTE_LEN];
            }
            self.len = MIN_QUOTE_LEN as u8;
        }
    }

    /// The rare header with options: its length varies, so the helper copies it (and checks
    /// the bounds). Not inlined: it stays out of every packet's path.
    #[inline(never)]
    fn take_with_options<P: Packet>(&mut self, packet: &P, ip_header_len: usize) {
        self.bytes = [0; MAX_QUOTE_LEN];
        // In [8, MAX_QUOTE_LEN] by construction, which is what the verifier must see.
        let len = (ip_header_len as u32 & 0x3c) + 8;
        if packet.load_bytes(EthHdr::LEN as u32, self.bytes.as_mut_ptr(), len) {
            self.len = len as u8;
        }
    }

    #[inline(always)]
    pub fn present(&self) -> bool {
        self.len != 0
    }

    /// The quoted IPv4 header's length (IHL).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.bytes[0] & 0x0f) as usize) * 4
    }

    #[inline(always)]
    fn dont_fragment(&self) -> bool {
        self.present() && self.bytes[IP_FLAGS] & IP_DF != 0
    }

    /// The first fragment of a fragmented datagram (later ones are never quoted).
    #[inline(always)]
    pub fn first_fragment(&self) -> bool {
        self.bytes[IP_FLAGS] & IP_MF != 0
    }

    #[inline(always)]
    pub fn source(&self) -> [u8; 4] {
        [
            self.bytes[12],
            self.bytes[13],
            self.bytes[14],
            self.bytes[15],
        ]
    }

    #[inline(always)]
    pub fn destination(&self) -> [u8; 4] {
        [
            self.bytes[16],
            self.bytes[17],
            self.bytes[18],
            self.bytes[19],
        ]
    }
}

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
