//! What the translation needs from a hook: bounds-checked access to the frame and field
//! rewrites that keep the IPv4 and transport checksums right.
//!
//! XDP sees frames as they came off the wire (full checksums), so it updates checksums itself
//! with RFC 1624 arithmetic. TC sees skbs, whose checksum may be partial (offloaded, only the
//! pseudo-header summed) or complete; only the kernel's csum helpers handle all those states.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_NETNS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, bpf_sock_tuple},
    helpers::{
        bpf_sk_lookup_udp, bpf_sk_release, bpf_skb_load_bytes, bpf_skc_lookup_tcp,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};
use gateway_common::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, checksum};

/// The address family of the programs' route lookups (`bpf_fib_lookup`, `bpf_redirect_neigh`).
pub const AF_INET: u8 = 2;

/// Where the transport checksum is, and which rules it follows.
#[derive(Clone, Copy)]
pub enum L4Check {
    /// TCP checksum field at this frame offset; always present.
    Tcp(usize),
    /// UDP checksum field at this frame offset; zero means "none" and stays zero.
    Udp(usize),
    /// ICMP checksum field at this frame offset: no pseudo-header, so addresses are not in it.
    Icmp(usize),
    /// No transport header in this packet (a later fragment): only the IPv4 header changes.
    Absent,
}

impl L4Check {
    #[inline(always)]
    pub fn offset(self) -> usize {
        match self {
            L4Check::Tcp(off) | L4Check::Udp(off) | L4Check::Icmp(off) => off,
            L4Check::Absent => 0,
        }
    }
}

/// The write failed (out of bounds or a helper error); the frame may be half-rewritten.
pub struct RewriteFailed;

pub trait Packet {
    fn start(&self) -> usize;
    fn end(&self) -> usize;

    /// Makes the first `len` bytes of the frame readable through [`ptr_at`] where that needs
    /// work (pulling a non-linear skb). Returns false when it cannot; `true` does not replace
    /// [`ptr_at`]'s bounds check.
    fn make_readable(&mut self, len: usize) -> bool;

    /// Replaces the IPv4 address at `addr_off`, fixing the IPv4 header checksum at
    /// `ip_check_off` and the transport checksum, which covers the address in its pseudo-header.
    fn rewrite_addr(
        &mut self,
        addr_off: usize,
        ip_check_off: usize,
        l4: L4Check,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Result<(), RewriteFailed>;

    /// The interface the packet arrived on.
    fn ingress_ifindex(&self) -> u32;

    /// Length of the whole frame, including what a non-linear skb keeps outside its head.
    fn total_len(&self) -> usize;

    /// Copies `len` bytes from frame offset `offset` to `dst`, wherever in the frame they are
    /// stored. The caller bounds `len` by the room at `dst`, in a way the verifier sees.
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> bool;

    /// Whether a socket of the gateway's own stack owns the connection `key` belongs to
    /// (`key` as the packet arrives: source = remote, destination = local).
    fn local_socket_exists(&self, key: &FlowKey) -> bool;

    /// Replaces an address of the IPv4 header embedded in an ICMP error, at `addr_off`,
    /// fixing that header's checksum at `inner_ip_check_off` and the ICMP checksum at
    /// `icmp_check_off`, which covers both. (The embedded transport checksum is left as it
    /// is: it cannot be verified from a truncated segment, and no stack checks it.)
    fn rewrite_embedded_addr(
        &mut self,
        addr_off: usize,
        inner_ip_check_off: usize,
        icmp_check_off: usize,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Result<(), RewriteFailed>;

    /// Replaces a port (or echo identifier) of the packet embedded in an ICMP error, fixing
    /// the ICMP checksum.
    fn rewrite_embedded_port(
        &mut self,
        port_off: usize,
        icmp_check_off: usize,
        old: [u8; 2],
        new: [u8; 2],
    ) -> Result<(), RewriteFailed>;

    /// Replaces the transport port at `port_off`, fixing the transport checksum.
    fn rewrite_port(
        &mut self,
        port_off: usize,
        l4: L4Check,
        old: [u8; 2],
        new: [u8; 2],
    ) -> Result<(), RewriteFailed>;

    /// Replaces a 32-bit TCP header field outside the pseudo-header (a sequence or ACK number,
    /// or the window with the urgent pointer's neighbour), fixing the TCP checksum at
    /// `check_off`. Through the load/store helpers: the field sits at the variable transport
    /// offset, as the embedded headers do.
    fn rewrite_tcp_word(
        &mut self,
        off: usize,
        check_off: usize,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Result<(), RewriteFailed>;
}

/// The furthest header byte the fast path ever reads: Ethernet, an IPv4 header with options,
/// an ICMP error header and the quoted IPv4 header with options and 8 bytes, rounded up to
/// a mask.
const MAX_HEADER_OFFSET: usize = 0x1ff;

/// A pointer to a `T` at `offset` into the frame, if the whole `T` lies inside it. The check
/// is the one the verifier needs to see before any direct packet access.
#[inline(always)]
pub fn ptr_at<P: Packet, T>(packet: &P, offset: usize) -> Option<*mut T> {
    if offset > MAX_HEADER_OFFSET {
        return None;
    }
    // The mask is a no-op after the check above, but it re-derives the offset's bounds in
    // the register that is added to the packet pointer: LLVM sometimes carries offsets
    // packed with other fields, and the verifier must see a bounded scalar at the addition.
    let offset = offset & MAX_HEADER_OFFSET;
    let start = packet.start();
    if start + offset + core::mem::size_of::<T>() > packet.end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

impl Packet for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    #[inline(always)]
    fn make_readable(&mut self, _len: usize) -> bool {
        // An XDP frame's head is all there is to read, and ptr_at checks every access. A
        // check here would be a duplicate that LLVM may merge into ptr_at's on another
        // register, leaving the verifier without the bound it needs.
        true
    }

    #[inline(always)]
    fn local_socket_exists(&self, key: &FlowKey) -> bool {
        socket_lookup(self.as_ptr(), key)
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }

    #[inline(always)]
    fn total_len(&self) -> usize {
        self.data_end() - self.data()
    }

    #[inline(always)]
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks the range against the frame; the caller guarantees the
        // room at `dst` (and the verifier checks it).
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, dst.cast(), len) == 0 }
    }

    #[inline(always)]
    fn rewrite_addr(
        &mut self,
        addr_off: usize,
        ip_check_off: usize,
        l4: L4Check,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Result<(), RewriteFailed> {
        let addr: *mut [u8; 4] = ptr_at(self, addr_off).ok_or(RewriteFailed)?;
        let ip_check: *mut [u8; 2] = ptr_at(self, ip_check_off).ok_or(RewriteFailed)?;
        // TCP and UDP checksums cover the address through their pseudo-header; ICMP's does
        // not, and a later fragment has no transport header.
        let l4_check: Option<*mut [u8; 2]> = match l4 {
            L4Check::Tcp(off) | L4Check::Udp(off) => Some(ptr_at(self, off).ok_or(RewriteFailed)?),
            L4Check::Icmp(_) | L4Check::Absent => None,
        };
        // SAFETY: every pointer was bounds-checked against the frame just above.
        unsafe {
            *addr = new;
            *ip_check =
                checksum::replace_u32(u16::from_be_bytes(*ip_check), old, new).to_be_bytes();
            if let Some(l4_check) = l4_check {
                let check = u16::from_be_bytes(*l4_check);
                // A direct match, not a function pointer: BPF has no indirect calls.
                let check = match l4 {
                    L4Check::Udp(_) => checksum::udp_replace_u32(check, old, new),
                    _ => checksum::replace_u32(check, old, new),
                };
                *l4_check = check.to_be_bytes();
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn rewrite_port(
        &mut self,
        port_off: usize,
        l4: L4Check,
        old: [u8; 2],
        new: [u8; 2],
    ) -> Result<(), RewriteFailed> {
        let port: *mut [u8; 2] = ptr_at(self, port_off).ok_or(RewriteFailed)?;
        let l4_check: *mut [u8; 2] = ptr_at(self, l4.offset()).ok_or(RewriteFailed)?;
        let (old, new) = (u16::from_be_bytes(old), u16::from_be_bytes(new));
        // SAFETY: both pointers were bounds-checked against the frame just above.
        unsafe {
            *port = new.to_be_bytes();
            let check = u16::from_be_bytes(*l4_check);
            let check = match l4 {
                L4Check::Tcp(_) | L4Check::Icmp(_) | L4Check::Absent => {
                    checksum::replace_u16(check, old, new)
                }
                L4Check::Udp(_) => checksum::udp_replace_u16(check, old, new),
            };
            *l4_check = check.to_be_bytes();
        }
        Ok(())
    }

    // The embedded headers sit at two variable offsets (outer and inner IHL), which the
    // verifier cannot track through direct packet pointers once LLVM merges the bounds checks;
    // the load/store helpers check bounds themselves. ICMP errors are rare: the cost is fine.
    #[inline(always)]
    fn rewrite_embedded_addr(
        &mut self,
        addr_off: usize,
        inner_ip_check_off: usize,
        icmp_check_off: usize,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Result<(), RewriteFailed> {
        let old_inner = u16::from_be_bytes(xdp_load::<2>(self, inner_ip_check_off)?);
        let new_inner = checksum::replace_u32(old_inner, old, new);
        let icmp = u16::from_be_bytes(xdp_load::<2>(self, icmp_check_off)?);
        let icmp =
            checksum::replace_u16(checksum::replace_u32(icmp, old, new), old_inner, new_inner);
        xdp_store(self, addr_off, &new)?;
        xdp_store(self, inner_ip_check_off, &new_inner.to_be_bytes())?;
        xdp_store(self, icmp_check_off, &icmp.to_be_bytes())
    }

    #[inline(always)]
    fn rewrite_embedded_port(
        &mut self,
        port_off: usize,
        icmp_check_off: usize,
        old: [u8; 2],
        new: [u8; 2],
    ) -> Result<(), RewriteFailed> {
        let icmp = u16::from_be_bytes(xdp_load::<2>(self, icmp_check_off)?);
        let icmp = checksum::replace_u16(icmp, u16::from_be_bytes(old), u16::from_be_bytes(new));
        xdp_store(self, port_off, &new)?;
        xdp_store(self, icmp_check_off, &icmp.to_be_bytes())
    }

    #[inline(always)]
    fn rewrite_tcp_word(
        &mut self,
        off: usize,
        check_off: usize,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Result<(), RewriteFailed> {
        let check = u16::from_be_bytes(xdp_load::<2>(self, check_off)?);
        let check = checksum::replace_u32(check, old, new);
        xdp_store(self, off, &new)?;
        xdp_store(self, check_off, &check.to_be_bytes())
    }
}

#[inline(always)]
fn xdp_load<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], RewriteFailed> {
    let mut bytes = [0u8; N];
    // SAFETY: the helper bounds-checks `offset + N` against the frame and writes only `bytes`.
    let result =
        unsafe { bpf_xdp_load_bytes(ctx.ctx, offset as u32, bytes.as_mut_ptr().cast(), N as u32) };
    if result == 0 {
        Ok(bytes)
    } else {
        Err(RewriteFailed)
    }
}

#[inline(always)]
fn xdp_store<const N: usize>(
    ctx: &XdpContext,
    offset: usize,
    bytes: &[u8; N],
) -> Result<(), RewriteFailed> {
    // SAFETY: the helper bounds-checks `offset + N` against the frame and reads only `bytes`.
    let result =
        unsafe { bpf_xdp_store_bytes(ctx.ctx, offset as u32, bytes.as_ptr() as *mut _, N as u32) };
    if result == 0 {
        Ok(())
    } else {
        Err(RewriteFailed)
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    #[inline(always)]
    fn make_readable(&mut self, len: usize) -> bool {
        if len > MAX_HEADER_OFFSET {
            return false;
        }
        // As in ptr_at: re-bound the length in the register that meets the packet pointer.
        let len = len & MAX_HEADER_OFFSET;
        if self.data() + len <= self.data_end() {
            return true;
        }
        // Headers of a non-linear skb may sit in its fragments: pull them into the head.
        self.pull_data(len as u32).is_ok() && self.data() + len <= self.data_end()
    }

    #[inline(always)]
    fn local_socket_exists(&self, key: &FlowKey) -> bool {
        socket_lookup(self.as_ptr(), key)
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: skb is the program's context.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }

    #[inline(always)]
    fn total_len(&self) -> usize {
        self.len() as usize
    }

    #[inline(always)]
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: as for XDP: the helper checks the frame, the caller the room at `dst`.
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), offset, dst.cast(), len) == 0 }
    }

    #[inline(always)]
    fn rewrite_addr(
        &mut self,
        addr_off: usize,
        ip_check_off: usize,
        l4: L4Check,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Result<(), RewriteFailed> {
        let (l4_off, l4_flags) = l4_helper_args(l4);
        // The helpers take the old and new values as the raw (network-order) words.
        let from = u32::from_ne_bytes(old) as u64;
        let to = u32::from_ne_bytes(new) as u64;
        self.store(addr_off, &new, 0).map_err(|_| RewriteFailed)?;
        self.l3_csum_replace(ip_check_off, from, to, 4)
            .map_err(|_| RewriteFailed)?;
        if let L4Check::Icmp(_) | L4Check::Absent = l4 {
            // ICMP's checksum has no pseudo-header, and a later fragment has no transport
            // header: an address change leaves them alone.
            return Ok(());
        }
        self.l4_csum_replace(l4_off, from, to, l4_flags | BPF_F_PSEUDO_HDR as u64 | 4)
            .map_err(|_| RewriteFailed)
    }

    #[inline(always)]
    fn rewrite_port(
        &mut self,
        port_off: usize,
        l4: L4Check,
        old: [u8; 2],
        new: [u8; 2],
    ) -> Result<(), RewriteFailed> {
        let (l4_off, l4_flags) = l4_helper_args(l4);
        let from = u16::from_ne_bytes(old) as u64;
        let to = u16::from_ne_bytes(new) as u64;
        self.store(port_off, &new, 0).map_err(|_| RewriteFailed)?;
        self.l4_csum_replace(l4_off, from, to, l4_flags | 2)
            .map_err(|_| RewriteFailed)
    }

    #[inline(always)]
    fn rewrite_embedded_addr(
        &mut self,
        addr_off: usize,
        inner_ip_check_off: usize,
        icmp_check_off: usize,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Result<(), RewriteFailed> {
        let old_inner: [u8; 2] = self.load(inner_ip_check_off).map_err(|_| RewriteFailed)?;
        let new_inner =
            checksum::replace_u32(u16::from_be_bytes(old_inner), old, new).to_be_bytes();
        // ICMP has no pseudo-header: plain replacements in its checksum, for the quoted
        // address and for the quoted header's checksum that changes with it.
        tc_store_outside_pseudo_header(self, addr_off, icmp_check_off, old, new)?;
        tc_store_outside_pseudo_header(
            self,
            inner_ip_check_off,
            icmp_check_off,
            old_inner,
            new_inner,
        )
    }

    #[inline(always)]
    fn rewrite_embedded_port(
        &mut self,
        port_off: usize,
        icmp_check_off: usize,
        old: [u8; 2],
        new: [u8; 2],
    ) -> Result<(), RewriteFailed> {
        tc_store_outside_pseudo_header(self, port_off, icmp_check_off, old, new)
    }

    #[inline(always)]
    fn rewrite_tcp_word(
        &mut self,
        off: usize,
        check_off: usize,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Result<(), RewriteFailed> {
        tc_store_outside_pseudo_header(self, off, check_off, old, new)
    }
}

/// Stores `N` (2 or 4) bytes that no pseudo-header covers and replaces them in the checksum at
/// `check_off`: a partial checksum (a local sender's offload) is left alone by the helper, a
/// full one updated.
#[inline(always)]
fn tc_store_outside_pseudo_header<const N: usize>(
    ctx: &mut TcContext,
    off: usize,
    check_off: usize,
    old: [u8; N],
    new: [u8; N],
) -> Result<(), RewriteFailed> {
    ctx.store(off, &new, 0).map_err(|_| RewriteFailed)?;
    // The helper takes the old and new values as they lie in memory, widened.
    let widen = |bytes: [u8; N]| {
        let mut wide = [0u8; 8];
        wide[..N].copy_from_slice(&bytes);
        u64::from_ne_bytes(wide)
    };
    ctx.l4_csum_replace(check_off, widen(old), widen(new), N as u64)
        .map_err(|_| RewriteFailed)
}

#[inline(always)]
fn l4_helper_args(l4: L4Check) -> (usize, u64) {
    match l4 {
        L4Check::Tcp(off) | L4Check::Icmp(off) => (off, 0),
        L4Check::Absent => (0, 0),
        // Leave a zero UDP checksum alone, and never produce one.
        L4Check::Udp(off) => (off, BPF_F_MARK_MANGLED_0 as u64),
    }
}

/// `bpf_skc_lookup_tcp` / `bpf_sk_lookup_udp` in the current network namespace; the
/// reference the helper takes is released before returning, as the verifier requires.
#[inline(always)]
fn socket_lookup(ctx: *mut core::ffi::c_void, key: &FlowKey) -> bool {
    // SAFETY: all-zero is a valid bpf_sock_tuple; the IPv4 member is filled below.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes(key.src);
    tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes(key.dst);
    tuple.__bindgen_anon_1.ipv4.sport = u16::from_ne_bytes(key.src_port);
    tuple.__bindgen_anon_1.ipv4.dport = u16::from_ne_bytes(key.dst_port);
    let size = core::mem::size_of::<[u32; 3]>() as u32; // sizeof(tuple.ipv4)
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: ctx is the program's context; tuple lives on this stack frame.
    let socket = unsafe {
        match key.proto {
            IPPROTO_TCP => bpf_skc_lookup_tcp(ctx, &mut tuple, size, netns, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(ctx, &mut tuple, size, netns, 0),
            _ => return false,
        }
    };
    if socket.is_null() {
        return false;
    }
    // SAFETY: a non-null socket returned by a lookup helper must be released exactly once.
    unsafe { bpf_sk_release(socket.cast()) };
    true
}
