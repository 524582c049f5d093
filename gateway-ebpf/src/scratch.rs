//! The per-CPU scratch room (`SCRATCH`): what does not fit on the programs' 512-byte stack,
//! which is mostly the translation's. The translation writes the quote of the packet as it
//! arrived; forwarding reads it (`forward.rs`, `icmp_error.rs`, `untranslate.rs`).

use aya_ebpf::{bindings::bpf_fib_lookup as FibLookup, macros::map, maps::PerCpuArray};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use gateway_common::icmp::{ERROR_BUFFER_LEN, MAX_QUOTE_LEN, MIN_QUOTE_LEN, TokenBucket};

use crate::packet::{Packet, ptr_at};

/// Don't-fragment and more-fragments, in the first byte of the flags/fragment-offset field.
const IP_DF: u8 = 0x40;
const IP_MF: u8 = 0x20;
const IP_FLAGS: usize = 6;

/// Per-CPU room for the quote of the packet being handled and the ICMP message built from it
/// (element 0; see `Scratch`). Defined here, with its type, rather than in `maps.rs`, which
/// then depends on no module of the programs.
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

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
    pub fn dont_fragment(&self) -> bool {
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
