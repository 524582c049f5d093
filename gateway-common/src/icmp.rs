//! The ICMP "fragmentation needed" message the fast path sends in place of a translated packet
//! that is too big for the next link (RFC 1191 path-MTU discovery across the gateway).
//!
//! The kernel would send one too, but about the *translated* packet and to its translated
//! source, which for a masqueraded or published connection is the gateway itself: the real
//! sender would never learn the path MTU. The fast path therefore answers the original sender
//! with the original (untranslated) header quoted. The frame is built here, as plain bytes,
//! so that both hooks send exactly the same thing and the host can test it.

use crate::{IPPROTO_ICMP, checksum};

/// What the message quotes: the IPv4 header (without options) and the first 8 bytes of the
/// transport header, exactly as they arrived (RFC 792's minimum).
pub const QUOTE_LEN: usize = 20 + 8;
/// Ethernet, IPv4 header, ICMP header, quote.
pub const FRAG_NEEDED_FRAME_LEN: usize = 14 + 20 + 8 + QUOTE_LEN;

const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// IPTOS_PREC_INTERNETCONTROL, as the kernel sends its own ICMP errors with.
const TOS_INTERNET_CONTROL: u8 = 0xc0;
const TTL: u8 = 64;

/// Bytes after the message that the BPF side keeps zeroed in the same buffer (see the TC
/// program's `CHECKSUM_TRAILER`).
pub const FRAG_NEEDED_TRAILER_LEN: usize = 18;
/// The buffer [`write_frag_needed`] fills: the frame, then the zeroed trailer.
pub const FRAG_NEEDED_BUFFER_LEN: usize = FRAG_NEEDED_FRAME_LEN + FRAG_NEEDED_TRAILER_LEN;

const IP: usize = 14;
const ICMP: usize = IP + 20;

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

/// Writes into `buffer` the frame that tells `quote`'s sender that the next hop takes at most
/// `mtu` bytes, followed by a zeroed trailer. Built in place, with no copy on the stack: the
/// BPF programs pass a per-CPU map value (their stack is 512 bytes, mostly the translation's).
///
/// `eth`: the Ethernet destination and source of the packet as it arrived; the frame goes
/// back to that neighbour from the interface it came in on, so they are swapped. `from`: an
/// address of the gateway on the sender's side (the kernel uses the source address of its
/// route back to the sender).
#[inline(always)]
pub fn write_frag_needed(
    buffer: &mut [u8; FRAG_NEEDED_BUFFER_LEN],
    eth: &[u8; 12],
    from: [u8; 4],
    quote: &[u8; QUOTE_LEN],
    mtu: u16,
) {
    let mut index = 0;
    while index < 6 {
        buffer[index] = eth[6 + index];
        buffer[6 + index] = eth[index];
        index += 1;
    }
    buffer[12] = 0x08; // IPv4
    buffer[13] = 0x00;

    // Written field by field: temporary arrays would take BPF stack.
    let total = ((FRAG_NEEDED_FRAME_LEN - IP) as u16).to_be_bytes();
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

    let mtu = mtu.to_be_bytes();
    buffer[ICMP] = ICMP_DEST_UNREACHABLE;
    buffer[ICMP + 1] = ICMP_FRAG_NEEDED;
    // RFC 1191: bytes 4-5 unused (zero), 6-7 the next-hop MTU.
    let mut index = ICMP + 2;
    while index < ICMP + 6 {
        buffer[index] = 0;
        index += 1;
    }
    buffer[ICMP + 6] = mtu[0];
    buffer[ICMP + 7] = mtu[1];
    let mut index = 0;
    while index < QUOTE_LEN {
        buffer[ICMP + 8 + index] = quote[index];
        index += 1;
    }
    let check = (!checksum::fold(sum_words(buffer, ICMP, FRAG_NEEDED_FRAME_LEN))).to_be_bytes();
    buffer[ICMP + 2] = check[0];
    buffer[ICMP + 3] = check[1];
    let mut index = FRAG_NEEDED_FRAME_LEN;
    while index < FRAG_NEEDED_BUFFER_LEN {
        buffer[index] = 0;
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP packet's head as a sender puts it on the wire: 10.0.0.2:6000 > 203.0.113.2:7000,
    /// 1472 bytes of payload, DF.
    fn quote() -> [u8; QUOTE_LEN] {
        let mut ip = [
            0x45, 0, 0x05, 0xdc, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 203, 0, 113, 2,
        ];
        let check = checksum::ipv4_header(&ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        let mut quote = [0u8; QUOTE_LEN];
        quote[..20].copy_from_slice(&ip);
        quote[20..].copy_from_slice(&[0x17, 0x70, 0x1b, 0x58, 0x05, 0xc8, 0xab, 0xcd]);
        quote
    }

    #[test]
    fn the_frame_is_a_valid_frag_needed_to_the_quoted_sender() {
        let quote = quote();
        // As arrived: to the gateway's MAC (4s) from the sender's (2s).
        let mut eth = [4u8; 12];
        eth[6..].copy_from_slice(&[2; 6]);
        let mut frame = [0xeeu8; FRAG_NEEDED_BUFFER_LEN];
        write_frag_needed(&mut frame, &eth, [10, 0, 0, 1], &quote, 1400);
        assert_eq!(
            &frame[FRAG_NEEDED_FRAME_LEN..],
            &[0; FRAG_NEEDED_TRAILER_LEN]
        );
        let frame = &frame[..FRAG_NEEDED_FRAME_LEN];
        assert_eq!(&frame[..6], &[2; 6]);
        assert_eq!(&frame[6..12], &[4; 6]);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        let ip = &frame[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 56);
        assert_eq!(ip[9], IPPROTO_ICMP);
        assert_eq!(&ip[12..16], &[10, 0, 0, 1]);
        assert_eq!(&ip[16..20], &[10, 0, 0, 2], "to the quoted packet's source");
        assert_eq!(
            checksum::ipv4_header(ip),
            u16::from_be_bytes([ip[10], ip[11]])
        );
        let icmp = &frame[34..FRAG_NEEDED_FRAME_LEN];
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1400);
        assert_eq!(&icmp[4..6], &[0, 0]);
        assert_eq!(
            &icmp[8..],
            &quote[..],
            "the original header and 8 bytes, unchanged"
        );
        // A correct checksum sums (with itself) to all ones.
        assert_eq!(checksum::fold(checksum::sum_bytes(icmp)), 0xffff);
    }

    #[test]
    fn sum_words_matches_the_from_scratch_sum() {
        let quote = quote();
        assert_eq!(
            checksum::fold(sum_words(&quote, 0, QUOTE_LEN)),
            checksum::fold(checksum::sum_bytes(&quote))
        );
    }
}
