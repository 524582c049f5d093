//! Forwarding a translated packet straight from the hook, past the gateway's own IP stack: a
//! FIB lookup for the translated destination, the TTL decrement the stack would have done, and
//! a redirect: `bpf_redirect_neigh` from TC (which also resolves the next hop's MAC address
//! when the neighbour table has none yet), a devmap redirect from XDP (which cannot: a missing
//! neighbour sends the packet through the stack, which resolves it).
//!
//! Anything the kernel must handle itself (TTL expiring, no route, local delivery, a packet
//! without DF larger than the egress MTU, which it fragments) continues into the stack. A
//! packet with DF too big for the next link is answered here with ICMP fragmentation-needed to
//! its original sender (see `gateway_common::icmp`): the stack would address its own message
//! to the translated source, usually the gateway itself.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup as FibLookup, bpf_redir_neigh,
        xdp_action,
    },
    helpers::{
        bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail, bpf_xdp_adjust_tail,
        bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use gateway_common::{
    Counter, IPPROTO_TCP, IPPROTO_UDP, checksum,
    icmp::{FRAG_NEEDED_BUFFER_LEN, FRAG_NEEDED_FRAME_LEN, QUOTE_LEN, write_frag_needed},
};

use crate::{
    maps::{NAT_CONFIG, REDIRECT_PORTS, SCRATCH, count},
    packet::{Packet, ptr_at},
};

const AF_INET: u8 = 2;
/// The IPv4 header's TTL and protocol, as one checksummed 16-bit word.
const IP_TTL: usize = 8;
const IP_CHECK: usize = 10;
/// Don't-fragment, in the first byte of the IPv4 flags/fragment-offset field.
const IP_DF: u8 = 0x40;
const IP_FLAGS: usize = 6;
/// TCP's data offset (header length in 32-bit words, high nibble).
const TCP_DATA_OFFSET: usize = 12;

/// The head of a translated packet as it arrived, kept by the translation for the
/// fragmentation-needed message: IPv4 header without options and 8 bytes of transport.
#[repr(C)]
pub struct Quote {
    pub bytes: [u8; QUOTE_LEN],
    /// False when the packet had IPv4 options or too little transport header to quote.
    pub present: bool,
}

/// Per-CPU room (`SCRATCH`) for what does not fit on the programs' 512-byte stack, which is
/// mostly the translation's: the quote, and the ICMP message built from it.
#[repr(C)]
pub struct Scratch {
    pub quote: Quote,
    pub frame: [u8; FRAG_NEEDED_BUFFER_LEN],
    /// The lookup of the route back to the sender (see [`address_towards`]).
    pub fib: FibLookup,
}

/// This CPU's scratch room. BPF programs are not preempted on their CPU: nothing else uses it
/// until the program is done with the packet.
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    let slot = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a valid map value, used by this program run alone (see above).
    Some(unsafe { &mut *slot })
}

/// The quote slot for the packet being handled, emptied: per-CPU memory outlives the packet
/// that filled it, and a packet that never reaches `Quote::take` must not find another's.
#[inline(always)]
pub fn fresh_quote() -> Option<&'static mut Quote> {
    let scratch = scratch()?;
    scratch.quote.present = false;
    Some(&mut scratch.quote)
}

impl Quote {
    /// Copies the head of the packet, if it has no IPv4 options (the message quotes a fixed
    /// 20-byte header; with options the stack's own message is sent, as before).
    #[inline(always)]
    pub fn take<P: Packet>(&mut self, packet: &P, ip_header_len: usize) {
        if ip_header_len != Ipv4Hdr::LEN {
            return;
        }
        if let Some(head) = ptr_at::<P, [u8; QUOTE_LEN]>(packet, EthHdr::LEN) {
            // SAFETY: bounds-checked by ptr_at.
            self.bytes = unsafe { *head };
            self.present = true;
        }
    }

    #[inline(always)]
    fn dont_fragment(&self) -> bool {
        self.present && self.bytes[IP_FLAGS] & IP_DF != 0
    }

    #[inline(always)]
    fn source(&self) -> [u8; 4] {
        [
            self.bytes[12],
            self.bytes[13],
            self.bytes[14],
            self.bytes[15],
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

/// The address the gateway answers `sender` from: the preferred source of its route back to
/// the sender, as the kernel picks for its own ICMP errors (`BPF_FIB_LOOKUP_SRC`). The lookup
/// is made in `fib` (scratch room: the caller's stack is full).
#[inline(always)]
fn address_towards<C: EbpfContext>(
    ctx: &C,
    fib: &mut FibLookup,
    ifindex: u32,
    sender: [u8; 4],
) -> Option<[u8; 4]> {
    // SAFETY: all-zero is a valid bpf_fib_lookup; the fields the lookup reads are set below.
    *fib = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(sender);
    // SAFETY: `fib` is valid for the call.
    let result = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            fib,
            core::mem::size_of::<FibLookup>() as i32,
            BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if result != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    // SAFETY: a successful lookup with BPF_FIB_LOOKUP_SRC wrote the source address.
    let source = unsafe { fib.__bindgen_anon_3.ipv4_src }.to_ne_bytes();
    (source != [0; 4]).then_some(source)
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

/// The fragmentation-needed frame (and zeroed trailer) for the packet being handled, which
/// arrived with Ethernet addresses `eth`, answered from `from`, in this CPU's scratch room.
#[inline(always)]
fn reply_frame(
    scratch: &'static mut Scratch,
    eth: &[u8; 12],
    from: [u8; 4],
    mtu: u16,
) -> &'static [u8; FRAG_NEEDED_BUFFER_LEN] {
    write_frag_needed(&mut scratch.frame, eth, from, &scratch.quote.bytes, mtu);
    &scratch.frame
}

/// Returns the XDP verdict for a packet the translation has rewritten.
#[inline(always)]
pub fn xdp_forward(ctx: &mut XdpContext) -> u32 {
    if !bpf_forwarding() {
        return xdp_action::XDP_PASS;
    }
    let Some(ip) = ipv4_fields(ctx) else {
        return xdp_action::XDP_PASS;
    };
    if ip.ttl <= 1 {
        // The stack sends the time-exceeded message.
        return xdp_action::XDP_PASS;
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let (result, fib) = fib_lookup(ctx, ingress, &ip, ip.tot_len);
    if result == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        if !dont_fragment() {
            // The stack fragments it.
            return xdp_action::XDP_PASS;
        }
        // SAFETY: a FRAG_NEEDED lookup wrote the MTU over tot_len.
        let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
        return xdp_frag_needed(ctx, ingress, mtu);
    }
    // No neighbour yet (the stack resolves it), no route, local delivery, blackhole: the
    // stack's business.
    if result != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return xdp_action::XDP_PASS;
    }
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

/// Replaces the frame with the fragmentation-needed message and sends it back out of the
/// interface it came in on. Not inlined: its stack frame must not add to the translation's.
#[inline(never)]
fn xdp_frag_needed(ctx: &mut XdpContext, ingress: u32, mtu: u16) -> u32 {
    let Some(scratch) = scratch() else {
        return xdp_action::XDP_PASS;
    };
    let sender = scratch.quote.source();
    let Some(from) = address_towards(ctx, &mut scratch.fib, ingress, sender) else {
        return xdp_action::XDP_PASS;
    };
    let Some(eth) = ptr_at::<XdpContext, [u8; 12]>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by ptr_at.
    let frame = reply_frame(scratch, unsafe { &*eth }, from, mtu);
    // The frame is larger than an MTU, so this only shrinks it.
    let delta = FRAG_NEEDED_FRAME_LEN as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: the helper checks the new length against the frame.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the helper bounds-checks the range against the (now FRAG_NEEDED_FRAME_LEN) frame.
    let stored = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            0,
            frame.as_ptr() as *mut _,
            FRAG_NEEDED_FRAME_LEN as u32,
        )
    };
    if stored != 0 {
        // Cut short and not rewritten: it must not go anywhere.
        count(Counter::DropRewriteFailed);
        return xdp_action::XDP_DROP;
    }
    count(Counter::FragNeededSent);
    xdp_action::XDP_TX
}

/// Returns the TC verdict for a packet the translation has rewritten.
#[inline(always)]
pub fn tc_redirect(ctx: &mut TcContext) -> i32 {
    if !bpf_forwarding() {
        return TC_ACT_OK;
    }
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
    if ip.ttl <= 1 {
        // The stack sends the time-exceeded message.
        return TC_ACT_OK;
    }
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
    if result == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        if !dont_fragment() {
            // The stack fragments it (the egress device would drop it silently).
            return TC_ACT_OK;
        }
        // SAFETY: a FRAG_NEEDED lookup wrote the MTU over tot_len.
        let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
        return tc_frag_needed(ctx, ingress, mtu);
    }
    if result != BPF_FIB_LKUP_RET_SUCCESS as i64 && result != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return TC_ACT_OK;
    }

    // What ip_forward would have done: one hop less, header checksum kept right.
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

/// Replaces the skb's content with the fragmentation-needed message and sends it back out of
/// the interface it came in on.
///
/// A packet from a local sender on a virtual device may still carry a partial transport
/// checksum (CHECKSUM_PARTIAL): the kernel finishes it at transmission, summing from the
/// transport header's position in the skb and writing 6 (UDP) or 16 (TCP) bytes further on,
/// wherever the message is. So the message is built in room inserted after the Ethernet
/// header, which moves it in front of that position, and the packet keeps
/// `FRAG_NEEDED_TRAILER_LEN` bytes after the message (up to TCP's checksum field) for the
/// kernel to write into. The IPv4 total
/// length excludes them, so receivers trim them off; for other packets they are padding.
#[inline(always)]
fn tc_frag_needed(ctx: &mut TcContext, ingress: u32, mtu: u16) -> i32 {
    let Some(scratch) = scratch() else {
        return TC_ACT_OK;
    };
    let sender = scratch.quote.source();
    let Some(from) = address_towards(ctx, &mut scratch.fib, ingress, sender) else {
        return TC_ACT_OK;
    };
    let Ok(eth) = ctx.load::<[u8; 12]>(0) else {
        return TC_ACT_OK;
    };
    let frame = reply_frame(scratch, &eth, from, mtu);
    // The message ends where the transport header started: the quote holds that far.
    let room = (FRAG_NEEDED_FRAME_LEN - EthHdr::LEN - Ipv4Hdr::LEN) as i32;
    if ctx.adjust_room(room, BPF_ADJ_ROOM_MAC, 0).is_err() {
        return TC_ACT_OK;
    }
    // From here on the packet is no longer the translated one: it is answered or dropped.
    // SAFETY: skb is the program's context; the helper checks the length.
    let trimmed =
        unsafe { bpf_skb_change_tail(ctx.skb.skb, FRAG_NEEDED_BUFFER_LEN as u32, 0) } == 0;
    // The buffer's trailer is zeros: the kernel's sum over it is then the partial checksum's
    // seed alone, never anything of the original packet.
    if !trimmed || ctx.store(0, frame, 0).is_err() {
        count(Counter::DropRewriteFailed);
        return TC_ACT_SHOT;
    }
    count(Counter::FragNeededSent);
    // SAFETY: plain helper call; egress of the ingress interface.
    unsafe { bpf_redirect(ingress, 0) as i32 }
}
