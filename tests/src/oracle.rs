//! Checksums as the tests' independent oracle: computed by `etherparse`, never by
//! `gateway_common::checksum`, which is the code the fast path uses and the tests judge (a
//! fault shared by builder, translator and checker would otherwise go unseen).

use etherparse::{Ipv4HeaderSlice, TcpHeaderSlice, UdpHeaderSlice, checksum::Sum16BitWords};
use gateway_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// The checksum an IPv4 header (`ip`: the header, options included) should carry.
pub fn ipv4_header(ip: &[u8]) -> Result<u16, String> {
    let header = Ipv4HeaderSlice::from_slice(ip).map_err(|err| format!("IPv4 header: {err}"))?;
    Ok(header.to_header().calc_header_checksum())
}

/// The checksum a TCP, UDP or ICMP message (`segment`: header and payload) between `src` and
/// `dst` should carry; its own checksum field is left out of the sum.
pub fn transport(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> Result<u16, String> {
    match proto {
        IPPROTO_TCP => {
            let header =
                TcpHeaderSlice::from_slice(segment).map_err(|err| format!("TCP header: {err}"))?;
            let payload = &segment[header.slice().len()..];
            header
                .calc_checksum_ipv4_raw(src, dst, payload)
                .map_err(|err| format!("TCP segment: {err}"))
        }
        IPPROTO_UDP => {
            let header =
                UdpHeaderSlice::from_slice(segment).map_err(|err| format!("UDP header: {err}"))?;
            header
                .to_header()
                .calc_checksum_ipv4_raw(src, dst, &segment[header.slice().len()..])
                .map_err(|err| format!("UDP datagram: {err}"))
        }
        IPPROTO_ICMP => {
            let (head, rest) = (segment.get(..2), segment.get(4..));
            let (Some(head), Some(rest)) = (head, rest) else {
                return Err(format!("ICMP message of {} bytes", segment.len()));
            };
            // No pseudo header: the message's words, the checksum field skipped. The sum is
            // in this machine's byte order; the field is big-endian.
            Ok(Sum16BitWords::new()
                .add_slice(head)
                .add_slice(rest)
                .ones_complement()
                .to_be())
        }
        _ => Err(format!("no checksum oracle for protocol {proto}")),
    }
}

/// Whether two checksums are the same, taking 0x0000 and 0xffff (one's complement's two
/// zeros) as equal: a from-scratch computation gives one, the kernel may have written the
/// other (CSUM_MANGLED_0 for UDP; a software TCP checksum).
pub fn same(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ipv4_header_checksum() {
        // The classic example header (checksum 0xb861).
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&header), Ok(0xb861));
    }

    #[test]
    fn icmp_echo_checksum_and_short_messages() {
        // Echo request, id 1, seq 1, no data: 0x0800 + 0x0001 + 0x0001, complemented.
        let echo = [8, 0, 0xaa, 0xbb, 0, 1, 0, 1];
        assert_eq!(transport([0; 4], [0; 4], IPPROTO_ICMP, &echo), Ok(!0x0802));
        assert!(transport([0; 4], [0; 4], IPPROTO_ICMP, &[8, 0, 0]).is_err());
        assert!(transport([0; 4], [0; 4], IPPROTO_TCP, &[0; 10]).is_err());
    }

    #[test]
    fn zeros_are_the_same() {
        assert!(same(0, 0xffff) && same(0xffff, 0) && same(0x1234, 0x1234));
        assert!(!same(0x1234, 0x1235) && !same(0, 0xfffe));
    }
}
