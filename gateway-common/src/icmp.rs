//! The ICMP errors the fast path sends itself, about a packet it translated, in place of the
//! ones the kernel would send: time exceeded, destination unreachable (host unreachable,
//! administratively prohibited) and fragmentation needed (RFC 1191 path-MTU discovery).
//!
//! The kernel sends these too, but about the *translated* packet and to its translated
//! source, which for a masqueraded connection or a published server's reply is the gateway
//! itself, and for a published server's client quotes the private address the client never
//! sent to: the real sender's socket never matches it. The fast path therefore answers the
//! original sender, from the gateway's address on its side, quoting the original
//! (untranslated) IPv4 header and 8 bytes. The frame is built here, as plain bytes, so that
//! both hooks send exactly the same thing and the host can test it; when to send one (rate
//! limits, who may get one) is decided here too, for the same reason.

use crate::{IPPROTO_ICMP, checksum};

/// What a message quotes: the IPv4 header as it arrived (with its options, up to 60 bytes)
/// and the first 8 bytes of the transport header (RFC 792's minimum: ports, ICMP identifier
/// and sequence, TCP sequence number: what the sender's stack matches the error by).
pub const MAX_QUOTE_LEN: usize = 60 + 8;
/// The quote of a packet without IPv4 options.
pub const MIN_QUOTE_LEN: usize = 20 + 8;

const ETH: usize = 14;
const IP: usize = ETH;
const ICMP: usize = IP + 20;
/// Ethernet, IPv4 header (no options), ICMP header: what comes before the quote.
pub const ERROR_HEADERS_LEN: usize = ICMP + 8;
/// The longest message: a quote of a header with 40 bytes of options.
pub const MAX_ERROR_FRAME_LEN: usize = ERROR_HEADERS_LEN + MAX_QUOTE_LEN;
/// Bytes after the message that the buffer keeps zeroed, for the TC program: a reply built in
/// place of a packet whose transport checksum the kernel has yet to finish must leave room up
/// to (and including) TCP's checksum field, which the kernel writes at transmission.
pub const ERROR_TRAILER_LEN: usize = 18;
/// The buffer [`write_error`] fills: the longest message and its trailer, rounded up to a
/// power of two so that the BPF programs can bound a variable length by masking.
pub const ERROR_BUFFER_LEN: usize = 128;
const _: () = assert!(MAX_ERROR_FRAME_LEN + ERROR_TRAILER_LEN <= ERROR_BUFFER_LEN);

pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// Destination-unreachable codes (RFC 792, RFC 1812).
pub const CODE_NET_UNREACHABLE: u8 = 0;
pub const CODE_HOST_UNREACHABLE: u8 = 1;
pub const CODE_FRAG_NEEDED: u8 = 4;
/// "Communication administratively prohibited": what the kernel sends for a `prohibit` route.
pub const CODE_ADMIN_PROHIBITED: u8 = 13;
/// Time-exceeded code: TTL exceeded in transit.
pub const CODE_TTL_EXCEEDED: u8 = 0;

/// IPTOS_PREC_INTERNETCONTROL, as the kernel sends its own ICMP errors with.
const TOS_INTERNET_CONTROL: u8 = 0xc0;
const TTL: u8 = 64;

/// One ICMP error: type, code, and for fragmentation-needed the next-hop MTU (else zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    pub kind: u8,
    pub code: u8,
    pub next_hop_mtu: u16,
}

impl IcmpError {
    pub const TIME_EXCEEDED: IcmpError = IcmpError {
        kind: ICMP_TIME_EXCEEDED,
        code: CODE_TTL_EXCEEDED,
        next_hop_mtu: 0,
    };
    pub const HOST_UNREACHABLE: IcmpError = IcmpError::unreachable(CODE_HOST_UNREACHABLE);
    pub const ADMIN_PROHIBITED: IcmpError = IcmpError::unreachable(CODE_ADMIN_PROHIBITED);

    pub const fn unreachable(code: u8) -> IcmpError {
        IcmpError {
            kind: ICMP_DEST_UNREACHABLE,
            code,
            next_hop_mtu: 0,
        }
    }

    pub const fn frag_needed(next_hop_mtu: u16) -> IcmpError {
        IcmpError {
            kind: ICMP_DEST_UNREACHABLE,
            code: CODE_FRAG_NEEDED,
            next_hop_mtu,
        }
    }

    /// Whether the kernel's rate limits apply: every error but fragmentation-needed, which
    /// Linux never limits (`icmpv4_mask_allow`: "Don't limit PMTU discovery").
    pub const fn rate_limited(&self) -> bool {
        !(self.kind == ICMP_DEST_UNREACHABLE && self.code == CODE_FRAG_NEEDED)
    }
}

/// Whether `addr` may be the source or destination of a packet the gateway answers with an
/// error: a unicast address. Never to (or about packets to) "this network" (0/8), loopback
/// (127/8), multicast (224/4) or the reserved and limited-broadcast block (240/4), as the
/// kernel's `icmp_send` refuses (RFC 1812 4.3.2.7). Directed broadcasts and the gateway's own
/// addresses are refused by the route lookups instead, which answer "not forwarded" for them.
#[inline(always)]
pub const fn is_unicast(addr: [u8; 4]) -> bool {
    addr[0] != 0 && addr[0] != 127 && addr[0] < 224
}

/// Sum of the 16-bit words of `bytes[start..end]` (`end - start` even), not folded.
#[inline(always)]
fn sum_words<const N: usize>(bytes: &[u8; N], start: usize, end: usize) -> u32 {
    let mut sum: u32 = 0;
    let mut index = start;
    while index + 1 < end && index + 1 < N {
        sum += u16::from_be_bytes([bytes[index], bytes[index + 1]]) as u32;
        index += 2;
    }
    sum
}

/// Writes into `buffer` the frame that tells the sender of `quote` about `error`, followed
/// by zeros to the end of the buffer; returns the frame's length (without the zeros). Built
/// in place, with no copy on the stack: the BPF programs pass a per-CPU map value (their
/// stack is 512 bytes, mostly the translation's).
///
/// `quote_len`: how many bytes of `quote` are the quote (its IPv4 header length plus 8,
/// at most [`MAX_QUOTE_LEN`]); the bytes after it must be zeros (they are sent as padding
/// and summed into the checksum; [`quote_tail_is_clear`] checks). `eth`: the Ethernet destination and source of the packet as it
/// arrived; the frame goes back to that neighbour from the interface it came in on, so they
/// are swapped. `from`: an address of the gateway on the sender's side (the kernel uses the
/// source address of its route back to the sender).
#[inline(always)]
pub fn write_error(
    buffer: &mut [u8; ERROR_BUFFER_LEN],
    eth: &[u8; 12],
    from: [u8; 4],
    quote: &[u8; MAX_QUOTE_LEN],
    quote_len: usize,
    error: IcmpError,
) -> usize {
    let quote_len = if quote_len > MAX_QUOTE_LEN {
        MAX_QUOTE_LEN
    } else {
        quote_len
    };
    let mut index = 0;
    while index < 6 {
        buffer[index] = eth[6 + index];
        buffer[6 + index] = eth[index];
        index += 1;
    }
    buffer[12] = 0x08; // IPv4
    buffer[13] = 0x00;

    // Written field by field: temporary arrays would take BPF stack.
    let total = ((20 + 8 + quote_len) as u16).to_be_bytes();
    buffer[IP] = 0x45;
    buffer[IP + 1] = TOS_INTERNET_CONTROL;
    buffer[IP + 2] = total[0];
    buffer[IP + 3] = total[1];
    let mut index = IP + 4;
    while index < IP + 12 {
        buffer[index] = 0;
        index += 1;
    }
    buffer[IP + 8] = TTL;
    buffer[IP + 9] = IPPROTO_ICMP;
    let mut index = 0;
    while index < 4 {
        buffer[IP + 12 + index] = from[index];
        // To the quoted packet's source.
        buffer[IP + 16 + index] = quote[12 + index];
        index += 1;
    }
    let check = (!checksum::fold(sum_words(buffer, IP, ICMP))).to_be_bytes();
    buffer[IP + 10] = check[0];
    buffer[IP + 11] = check[1];

    let mtu = error.next_hop_mtu.to_be_bytes();
    buffer[ICMP] = error.kind;
    buffer[ICMP + 1] = error.code;
    // Bytes 4-7 unused (zero), except fragmentation-needed's next-hop MTU in 6-7 (RFC 1191).
    let mut index = ICMP + 2;
    while index < ICMP + 6 {
        buffer[index] = 0;
        index += 1;
    }
    buffer[ICMP + 6] = mtu[0];
    buffer[ICMP + 7] = mtu[1];
    // The quote (zeros past its length), then zeros to the end: the ICMP checksum below sums
    // a fixed range, to which the zeros add nothing, and the TC program sends them as its
    // trailer. Fixed bounds, no test of `quote_len` per byte: the BPF verifier would follow
    // each outcome of such a test separately, byte after byte.
    let mut index = 0;
    while index < MAX_QUOTE_LEN {
        buffer[ERROR_HEADERS_LEN + index] = quote[index];
        index += 1;
    }
    let mut index = MAX_ERROR_FRAME_LEN;
    while index < ERROR_BUFFER_LEN {
        buffer[index] = 0;
        index += 1;
    }
    let check = (!checksum::fold(sum_words(buffer, ICMP, MAX_ERROR_FRAME_LEN))).to_be_bytes();
    buffer[ICMP + 2] = check[0];
    buffer[ICMP + 3] = check[1];
    ERROR_HEADERS_LEN + quote_len
}

/// Whether `quote` is zeros after its first `quote_len` bytes, as [`write_error`] needs.
pub fn quote_tail_is_clear(quote: &[u8; MAX_QUOTE_LEN], quote_len: usize) -> bool {
    quote.iter().skip(quote_len).all(|&byte| byte == 0)
}

/// The kernel's ICMP rate limits, which do not apply to what BPF sends, mimicked with its
/// defaults: per destination host, one message per `icmp_ratelimit` (1000 ms) with a burst
/// of 6 (`inet_peer_xrlim_allow`, `XRLIM_BURST_FACTOR`); over all destinations,
/// `icmp_msgs_per_sec` (1000) with a burst of `icmp_msgs_burst` (50). Time is counted in
/// nanoseconds of `bpf_ktime_get_ns`; a bucket holds at most `burst` messages' worth.
pub mod rate {
    pub const PER_DESTINATION_INTERVAL_NS: u64 = 1_000_000_000;
    pub const PER_DESTINATION_BURST: u64 = 6;
    pub const GLOBAL_INTERVAL_NS: u64 = 1_000_000;
    pub const GLOBAL_BURST: u64 = 50;
    /// Destinations whose bucket is remembered (LRU: a forgotten one starts full again).
    pub const MAX_DESTINATIONS: u32 = 4096;
}

/// A token bucket in time units: the value of the rate-limit maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenBucket {
    /// Nanoseconds of credit; one message costs an interval.
    pub credit_ns: u64,
    /// When the credit was last brought up to date.
    pub updated_ns: u64,
}

impl TokenBucket {
    /// A bucket for a destination seen the first time: full.
    pub const fn full(now_ns: u64, interval_ns: u64, burst: u64) -> TokenBucket {
        TokenBucket {
            credit_ns: interval_ns * burst,
            updated_ns: now_ns,
        }
    }

    /// Takes one message's credit if there is enough, after adding the time since the last
    /// update (capped at `burst` messages). Returns whether the message may be sent.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, interval_ns: u64, burst: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.updated_ns);
        self.updated_ns = now_ns;
        let cap = interval_ns * burst;
        let credit = self.credit_ns.saturating_add(elapsed);
        let credit = if credit > cap { cap } else { credit };
        if credit >= interval_ns {
            self.credit_ns = credit - interval_ns;
            true
        } else {
            self.credit_ns = credit;
            false
        }
    }
}

/// Next hops whose link-layer address does not resolve. The kernel answers a packet for a
/// neighbour that never replies with host-unreachable when its resolution gives up (3
/// probes, one second apart, by default), but about the translated packet and to its
/// translated source, after the packet has left the fast path: that message never passes
/// the programs (it goes to the gateway itself over loopback, or out of an interface). The
/// programs therefore remember when a next hop was first found unresolved; packets for it are
/// handed to the kernel (which resolves) for [`FAILED_AFTER_NS`](neighbour::FAILED_AFTER_NS),
/// then answered with host-unreachable at once until
/// [`RETRY_AFTER_NS`](neighbour::RETRY_AFTER_NS), when the next packet starts a new round of
/// resolution. A next hop found resolved is forgotten, so that one flushed from the neighbour
/// table and resolved again at once starts afresh.
pub mod neighbour {
    /// Half a second before the kernel's own verdict: a TCP SYN retransmitted at 3 s (1 s,
    /// then 2 s later) then always finds the next hop failed.
    pub const FAILED_AFTER_NS: u64 = 2_500_000_000;
    pub const RETRY_AFTER_NS: u64 = 10_000_000_000;
    /// Slots of the `UNRESOLVED` table, a power of two: each next hop has one (by a hash of
    /// it), so forgetting a resolved one costs a look at one slot, not a hash-map operation,
    /// on every forwarded packet. Two unresolved next hops sharing a slot restart each
    /// other's round: neither is answered early, the kernel's behaviour.
    pub const SLOTS: u32 = 256;

    /// What to do with a packet for a next hop first found unresolved at `since_ns`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Phase {
        /// The kernel is still resolving: hand it the packet.
        Resolving,
        /// The kernel has given up: answer host-unreachable.
        Failed,
        /// Long enough ago: start resolving again, from now.
        Retry,
    }

    #[inline(always)]
    pub const fn phase(since_ns: u64, now_ns: u64) -> Phase {
        let age = now_ns.saturating_sub(since_ns);
        if age < FAILED_AFTER_NS {
            Phase::Resolving
        } else if age < RETRY_AFTER_NS {
            Phase::Failed
        } else {
            Phase::Retry
        }
    }

    /// The slot of `next_hop` (Fibonacci hashing of its address and interface).
    #[inline(always)]
    pub const fn slot(next_hop: &super::NextHop) -> u32 {
        let mixed =
            (u32::from_ne_bytes(next_hop.addr) ^ next_hop.ifindex).wrapping_mul(0x9e37_79b1);
        mixed >> (32 - SLOTS.trailing_zeros())
    }
}

/// A next hop the FIB named.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NextHop {
    pub ifindex: u32,
    pub addr: [u8; 4],
}

/// One slot of `UNRESOLVED`: a next hop (interface 0: none) and when it was first found
/// unresolved (`bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Unresolved {
    pub next_hop: NextHop,
    pub since_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP packet's head as a sender puts it on the wire: 10.0.0.2:6000 > 203.0.113.2:7000,
    /// 1472 bytes of payload, DF; with `options` after the fixed header.
    fn quote(options: &[u8]) -> ([u8; MAX_QUOTE_LEN], usize) {
        let header_len = 20 + options.len();
        let mut ip = [0u8; 60];
        ip[..20].copy_from_slice(&[
            0x45, 0, 0x05, 0xdc, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 203, 0, 113, 2,
        ]);
        ip[0] = 0x40 | (header_len / 4) as u8;
        ip[20..header_len].copy_from_slice(options);
        let check = checksum::ipv4_header(&ip[..header_len]);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        let mut quote = [0u8; MAX_QUOTE_LEN];
        quote[..header_len].copy_from_slice(&ip[..header_len]);
        quote[header_len..header_len + 8]
            .copy_from_slice(&[0x17, 0x70, 0x1b, 0x58, 0x05, 0xc8, 0xab, 0xcd]);
        (quote, header_len + 8)
    }

    /// Checks the frame is a valid ICMP error from 10.0.0.1 to the quoted sender, quoting it
    /// whole; returns the ICMP message.
    fn checked<'a>(frame: &'a [u8; ERROR_BUFFER_LEN], len: usize, quote: &[u8]) -> &'a [u8] {
        assert!(frame[len..].iter().all(|&byte| byte == 0), "zeros after");
        let frame = &frame[..len];
        assert_eq!(&frame[..6], &[2; 6]);
        assert_eq!(&frame[6..12], &[4; 6]);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        let ip = &frame[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, len - 14);
        assert_eq!(ip[9], IPPROTO_ICMP);
        assert_eq!(&ip[12..16], &[10, 0, 0, 1]);
        assert_eq!(&ip[16..20], &[10, 0, 0, 2], "to the quoted packet's source");
        assert_eq!(
            checksum::ipv4_header(ip),
            u16::from_be_bytes([ip[10], ip[11]])
        );
        let icmp = &frame[34..];
        assert_eq!(
            &icmp[8..],
            quote,
            "the original header and 8 bytes, unchanged"
        );
        // A correct checksum sums (with itself) to all ones.
        assert_eq!(checksum::fold(checksum::sum_bytes(icmp)), 0xffff);
        icmp
    }

    /// As arrived: to the gateway's MAC (4s) from the sender's (2s).
    fn eth() -> [u8; 12] {
        let mut eth = [4u8; 12];
        eth[6..].copy_from_slice(&[2; 6]);
        eth
    }

    #[test]
    fn frag_needed_carries_the_next_hop_mtu() {
        let (quote, quote_len) = quote(&[]);
        let mut frame = [0xeeu8; ERROR_BUFFER_LEN];
        let len = write_error(
            &mut frame,
            &eth(),
            [10, 0, 0, 1],
            &quote,
            quote_len,
            IcmpError::frag_needed(1400),
        );
        assert_eq!(len, 70);
        let icmp = checked(&frame, len, &quote[..quote_len]);
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(&icmp[4..6], &[0, 0]);
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1400);
    }

    #[test]
    fn time_exceeded_quotes_a_header_with_options_whole() {
        // Record route with room for 9 addresses: the longest header.
        let mut options = [0u8; 40];
        options[..3].copy_from_slice(&[7, 39, 4]);
        for (what, options) in [("no options", &options[..0]), ("40 bytes", &options[..])] {
            let (quote, quote_len) = quote(options);
            let mut frame = [0xeeu8; ERROR_BUFFER_LEN];
            let len = write_error(
                &mut frame,
                &eth(),
                [10, 0, 0, 1],
                &quote,
                quote_len,
                IcmpError::TIME_EXCEEDED,
            );
            assert_eq!(len, ERROR_HEADERS_LEN + 28 + options.len(), "{what}");
            let icmp = checked(&frame, len, &quote[..quote_len]);
            assert_eq!((icmp[0], icmp[1]), (11, 0), "{what}");
            assert_eq!(&icmp[4..8], &[0; 4], "{what}");
        }
    }

    #[test]
    fn the_test_quotes_have_clear_tails() {
        let (quote, quote_len) = quote(&[1, 1, 1, 0]);
        assert!(quote_tail_is_clear(&quote, quote_len));
        let mut stale = quote;
        stale[MAX_QUOTE_LEN - 1] = 0xee;
        assert!(!quote_tail_is_clear(&stale, quote_len));
    }

    #[test]
    fn unreachable_codes_and_which_errors_are_rate_limited() {
        let (quote, quote_len) = quote(&[]);
        for (error, code) in [
            (IcmpError::HOST_UNREACHABLE, 1),
            (IcmpError::ADMIN_PROHIBITED, 13),
        ] {
            let mut frame = [0u8; ERROR_BUFFER_LEN];
            let len = write_error(&mut frame, &eth(), [10, 0, 0, 1], &quote, quote_len, error);
            let icmp = checked(&frame, len, &quote[..quote_len]);
            assert_eq!((icmp[0], icmp[1]), (3, code));
            assert!(error.rate_limited());
        }
        assert!(IcmpError::TIME_EXCEEDED.rate_limited());
        assert!(!IcmpError::frag_needed(1400).rate_limited());
    }

    #[test]
    fn only_unicast_addresses_get_errors() {
        for addr in [[10, 0, 0, 2], [203, 0, 113, 2], [223, 255, 255, 254]] {
            assert!(is_unicast(addr), "{addr:?}");
        }
        for addr in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 1],
            [239, 255, 255, 250],
            [240, 0, 0, 1],
            [255, 255, 255, 255],
        ] {
            assert!(!is_unicast(addr), "{addr:?}");
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_one_per_interval() {
        let (interval, burst) = (
            rate::PER_DESTINATION_INTERVAL_NS,
            rate::PER_DESTINATION_BURST,
        );
        let start = 5_000_000_000;
        let mut bucket = TokenBucket::full(start, interval, burst);
        let allowed = (0..20)
            .filter(|_| bucket.take(start, interval, burst))
            .count();
        assert_eq!(
            allowed as u64, burst,
            "the burst, then nothing at the same instant"
        );
        assert!(!bucket.take(start + interval / 2, interval, burst));
        assert!(
            bucket.take(start + interval, interval, burst),
            "one interval later"
        );
        assert!(!bucket.take(start + interval, interval, burst));
        // A long silence refills it to the burst, never beyond.
        let later = start + 100 * interval;
        let allowed = (0..20)
            .filter(|_| bucket.take(later, interval, burst))
            .count();
        assert_eq!(allowed as u64, burst);
    }

    #[test]
    fn next_hops_spread_over_the_slots() {
        let mut used = [false; neighbour::SLOTS as usize];
        for last in 1..=254u8 {
            let slot = neighbour::slot(&NextHop {
                ifindex: 3,
                addr: [10, 0, 0, last],
            });
            used[slot as usize] = true;
        }
        // A whole /24 behind one interface: most get a slot of their own.
        let distinct = used.iter().filter(|&&used| used).count();
        assert!(distinct > 140, "{distinct} slots");
    }

    #[test]
    fn an_unresolved_next_hop_fails_then_is_retried() {
        use neighbour::{FAILED_AFTER_NS, Phase, RETRY_AFTER_NS, phase};
        let since = 1_000_000_000;
        assert_eq!(phase(since, since), Phase::Resolving);
        assert_eq!(phase(since, since + FAILED_AFTER_NS - 1), Phase::Resolving);
        assert_eq!(phase(since, since + FAILED_AFTER_NS), Phase::Failed);
        assert_eq!(phase(since, since + RETRY_AFTER_NS - 1), Phase::Failed);
        assert_eq!(phase(since, since + RETRY_AFTER_NS), Phase::Retry);
        // A clock that went backwards (another CPU's older stamp) is still resolving.
        assert_eq!(phase(since, since - 1), Phase::Resolving);
    }
}
