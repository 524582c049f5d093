//! Internet checksum arithmetic (RFC 1071) and its incremental update (RFC 1624).
//!
//! The BPF programs use the incremental forms on the XDP path, where no kernel helper exists;
//! tests and the agent use the from-scratch forms to check them. All values are the checksum
//! field as read big-endian from the packet.

/// Adds 16-bit words with end-around carry, without the final complement.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` for one 16-bit word `m` replaced by `m'`.
#[inline(always)]
pub const fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// Incremental update for a 32-bit field (an IPv4 address), as two 16-bit words.
#[inline(always)]
pub const fn replace_u32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let old_hi = u16::from_be_bytes([old[0], old[1]]) as u32;
    let old_lo = u16::from_be_bytes([old[2], old[3]]) as u32;
    let new_hi = u16::from_be_bytes([new[0], new[1]]) as u32;
    let new_lo = u16::from_be_bytes([new[2], new[3]]) as u32;
    !fold((!check) as u32 + (!old_hi & 0xffff) + (!old_lo & 0xffff) + new_hi + new_lo)
}

/// A UDP checksum of zero means "no checksum" (RFC 768) and must stay zero; a computed zero is
/// sent as 0xffff.
#[inline(always)]
pub const fn udp_replace_u32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace_u32(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// See [`udp_replace_u32`].
#[inline(always)]
pub const fn udp_replace_u16(check: u16, old: u16, new: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace_u16(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// Sum of `bytes` as big-endian 16-bit words (an odd tail is padded with zero), not folded.
pub fn sum_bytes(bytes: &[u8]) -> u32 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum = sum.wrapping_add(u16::from_be_bytes([pair[0], pair[1]]) as u32);
        // Fold early so arbitrarily long inputs cannot overflow.
        if sum > 0xffff_0000 {
            sum = fold(sum) as u32;
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add((*last as u32) << 8);
    }
    sum
}

/// From-scratch IPv4 header checksum: the value the `check` field must hold.
/// `header` is the whole header, options included, with any value in its `check` field.
pub fn ipv4_header(header: &[u8]) -> u16 {
    let mut sum = sum_bytes(header);
    if header.len() >= 12 {
        // Take the stored checksum back out so the result does not depend on it.
        sum += (!u16::from_be_bytes([header[10], header[11]])) as u32;
    }
    !fold(sum)
}

/// From-scratch TCP or UDP checksum over the IPv4 pseudo-header and `segment` (header with any
/// value in its checksum field, plus payload). `check_offset` is 16 for TCP, 6 for UDP.
pub fn ipv4_transport(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    segment: &[u8],
    check_offset: usize,
) -> u16 {
    let mut sum = sum_bytes(&src) + sum_bytes(&dst) + proto as u32 + segment.len() as u32;
    sum = fold(sum) as u32 + fold(sum_bytes(segment)) as u32;
    if segment.len() >= check_offset + 2 {
        sum += (!u16::from_be_bytes([segment[check_offset], segment[check_offset + 1]])) as u32;
    }
    let check = !fold(sum);
    if proto == crate::IPPROTO_UDP && check == 0 {
        0xffff
    } else {
        check
    }
}

/// Whether two checksums are the same one's-complement number: 0x0000 and 0xffff are both
/// zero. A from-scratch computation gives one; the kernel may have written the other
/// (`skb_checksum_help` writes 0xffff, CSUM_MANGLED_0, for any transport, where a checksum
/// computes to 0x0000; a sender's software TCP checksum may be 0x0000).
pub fn same(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_zeros_are_the_same_checksum() {
        assert!(same(0x0000, 0xffff) && same(0xffff, 0x0000) && same(0x1234, 0x1234));
        assert!(!same(0x0000, 0xfffe) && !same(0xff00, 0x00ff) && !same(0x0001, 0x0000));
    }

    // RFC 1071 section 3 example words, and a real IPv4 header.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn ipv4_header_checksum_matches_a_known_header() {
        assert_eq!(ipv4_header(&HEADER), 0xb861);
        let mut zeroed = HEADER;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(ipv4_header(&zeroed), 0xb861);
    }

    #[test]
    fn incremental_address_update_equals_recomputation() {
        let mut header = HEADER;
        let old = [header[16], header[17], header[18], header[19]];
        let new = [10, 0, 0, 2];
        let check = u16::from_be_bytes([header[10], header[11]]);
        header[16..20].copy_from_slice(&new);
        let incremental = replace_u32(check, old, new);
        assert_eq!(incremental, ipv4_header(&header));
    }

    #[test]
    fn incremental_update_survives_every_16_bit_word_pair() {
        // Exhaustive over a slice of the space that includes the ones'-complement edge cases
        // (0x0000 and 0xffff both mean zero).
        for old in (0u32..=0xffff).step_by(257).chain([0, 0xffff]) {
            for new in (0u32..=0xffff).step_by(263).chain([0, 0xffff]) {
                let mut words = [0x4500u16, old as u16, 0x1234];
                let bytes = |w: &[u16; 3]| {
                    let mut b = [0u8; 6];
                    for (i, x) in w.iter().enumerate() {
                        b[2 * i..2 * i + 2].copy_from_slice(&x.to_be_bytes());
                    }
                    b
                };
                let check = !fold(sum_bytes(&bytes(&words)));
                words[1] = new as u16;
                let expect = !fold(sum_bytes(&bytes(&words)));
                let got = replace_u16(check, old as u16, new as u16);
                // 0x0000 and 0xffff are the same number in ones' complement.
                assert!(
                    got == expect || (got | expect) == 0xffff && (got & expect) == 0,
                    "{old:#x}->{new:#x}: {got:#x} vs {expect:#x}"
                );
            }
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(udp_replace_u32(0, [1, 2, 3, 4], [5, 6, 7, 8]), 0);
        assert_eq!(udp_replace_u16(0, 1, 2), 0);
    }

    #[test]
    fn transport_checksum_ignores_the_stored_value() {
        let segment = [
            0x1f, 0x55, 0x23, 0x28, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0xab, 0xcd, 0,
            0, b'h', b'i', b'!',
        ];
        let a = ipv4_transport(
            [203, 0, 113, 2],
            [203, 0, 113, 1],
            crate::IPPROTO_TCP,
            &segment,
            16,
        );
        let mut zeroed = segment;
        zeroed[16] = 0;
        zeroed[17] = 0;
        let b = ipv4_transport(
            [203, 0, 113, 2],
            [203, 0, 113, 1],
            crate::IPPROTO_TCP,
            &zeroed,
            16,
        );
        assert_eq!(a, b);
        // Writing the result makes the whole sum verify to zero.
        zeroed[16..18].copy_from_slice(&a.to_be_bytes());
        let mut sum = sum_bytes(&[203, 0, 113, 2, 203, 0, 113, 1]) + 6 + zeroed.len() as u32;
        sum += sum_bytes(&zeroed);
        assert_eq!(fold(sum), 0xffff);
    }
}
