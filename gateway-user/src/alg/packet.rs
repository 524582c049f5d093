//! IPv4/TCP packets of FTP control connections, as the punt ring delivers them and as the
//! agent sends them on: parsing (with checksum verification), and building with fresh
//! checksums. IP options are not kept (a router may drop them; nothing in FTP uses them);
//! TCP options are kept byte for byte, except SACK blocks, which the sequence map rewrites.

use std::net::Ipv4Addr;

use gateway_common::{IPPROTO_TCP, checksum};

const IPV4_HEADER: usize = 20;
const TCP_HEADER: usize = 20;
const IP_DONT_FRAGMENT: u16 = 0x4000;
const IP_MORE_FRAGMENTS: u16 = 0x2000;
const IP_FRAGMENT_OFFSET: u16 = 0x1fff;
const TCP_OPTION_END: u8 = 0;
const TCP_OPTION_NOP: u8 = 1;
const TCP_OPTION_MSS: u8 = 2;
const TCP_OPTION_WINDOW_SCALE: u8 = 3;
const TCP_OPTION_SACK: u8 = 5;
const TCP_OPTION_TIMESTAMPS: u8 = 8;
/// Bytes of TCP options a header holds (a data offset of 15 words).
const MAX_OPTIONS: usize = 40;
/// Bytes of one SACK block (left and right edge).
const SACK_BLOCK: usize = 8;
/// The MSS a TCP sender may assume when the receiver's SYN named none (RFC 9293 3.7.1).
pub const DEFAULT_MSS: u16 = 536;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("truncated packet ({0} bytes)")]
    Truncated(usize),
    #[error("not an IPv4 packet")]
    NotIpv4,
    #[error("not a TCP segment (protocol {0})")]
    NotTcp(u8),
    #[error("an IPv4 fragment")]
    Fragment,
    #[error("IPv4 header checksum is wrong")]
    BadIpChecksum,
    #[error("TCP checksum is wrong")]
    BadTcpChecksum,
    #[error("malformed TCP options")]
    BadOptions,
}

/// A parsed IPv4 TCP segment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpPacket {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub id: u16,
    pub ttl: u8,
    pub dont_fragment: bool,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    /// The TCP options as they came, padding included.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl TcpPacket {
    /// Parses `bytes` (from the IPv4 header on) and verifies its checksums. A TCP checksum
    /// left partial by a local sender's offload (only the pseudo-header summed, as veth
    /// delivers them) is accepted: there is nothing else to check it against.
    pub fn parse(bytes: &[u8]) -> Result<TcpPacket, PacketError> {
        if bytes.len() < IPV4_HEADER {
            return Err(PacketError::Truncated(bytes.len()));
        }
        if bytes[0] >> 4 != 4 {
            return Err(PacketError::NotIpv4);
        }
        let ihl = usize::from(bytes[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if ihl < IPV4_HEADER || total < ihl + TCP_HEADER || total > bytes.len() {
            return Err(PacketError::Truncated(bytes.len()));
        }
        let bytes = &bytes[..total];
        let frags = u16::from_be_bytes([bytes[6], bytes[7]]);
        if frags & (IP_MORE_FRAGMENTS | IP_FRAGMENT_OFFSET) != 0 {
            return Err(PacketError::Fragment);
        }
        if bytes[9] != IPPROTO_TCP {
            return Err(PacketError::NotTcp(bytes[9]));
        }
        let header = &bytes[..ihl];
        if !checksum::same(
            checksum::ipv4_header(header),
            u16::from_be_bytes([header[10], header[11]]),
        ) {
            return Err(PacketError::BadIpChecksum);
        }
        let src = Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]);
        let dst = Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]);
        let segment = &bytes[ihl..];
        let data_offset = usize::from(segment[12] >> 4) * 4;
        if data_offset < TCP_HEADER || data_offset > segment.len() {
            return Err(PacketError::Truncated(bytes.len()));
        }
        let stored = u16::from_be_bytes([segment[16], segment[17]]);
        let computed =
            checksum::ipv4_transport(src.octets(), dst.octets(), IPPROTO_TCP, segment, 16);
        if !checksum::same(stored, computed)
            && !checksum::same(stored, partial_checksum(src, dst, segment.len()))
        {
            return Err(PacketError::BadTcpChecksum);
        }
        let word = |at: usize| u16::from_be_bytes([segment[at], segment[at + 1]]);
        let long = |at: usize| {
            u32::from_be_bytes([
                segment[at],
                segment[at + 1],
                segment[at + 2],
                segment[at + 3],
            ])
        };
        let packet = TcpPacket {
            src,
            dst,
            tos: bytes[1],
            id: u16::from_be_bytes([bytes[4], bytes[5]]),
            ttl: bytes[8],
            dont_fragment: frags & IP_DONT_FRAGMENT != 0,
            src_port: word(0),
            dst_port: word(2),
            seq: long(4),
            ack: long(8),
            flags: segment[13],
            window: word(14),
            urgent: word(18),
            options: segment[TCP_HEADER..data_offset].to_vec(),
            payload: segment[data_offset..].to_vec(),
        };
        // Walk the options once so that a malformed list is refused here, not half-copied later.
        options(&packet.options).collect::<Result<Vec<_>, _>>()?;
        Ok(packet)
    }

    /// The MSS option's value, if the segment has one.
    pub fn mss(&self) -> Option<u16> {
        options(&self.options)
            .flatten()
            .find(|(kind, data)| *kind == TCP_OPTION_MSS && data.len() == 2)
            .map(|(_, data)| u16::from_be_bytes([data[0], data[1]]))
    }

    /// The window-scale option's shift, if the segment has one.
    pub fn window_scale(&self) -> Option<u8> {
        options(&self.options)
            .flatten()
            .find(|(kind, data)| *kind == TCP_OPTION_WINDOW_SCALE && data.len() == 1)
            .map(|(_, data)| data[0])
    }

    /// The timestamps option's TSval, if the segment has one.
    pub fn tsval(&self) -> Option<u32> {
        options(&self.options)
            .flatten()
            .find(|(kind, data)| *kind == TCP_OPTION_TIMESTAMPS && data.len() == 8)
            .map(|(_, data)| u32::from_be_bytes([data[0], data[1], data[2], data[3]]))
    }

    /// Raises the timestamps option's TSval to `tsval` when that is later (modulo 2^32, as
    /// RFC 7323 compares them); a segment without the option is left as it is.
    pub fn raise_tsval(&mut self, tsval: u32) {
        let mut at = 0;
        while let Some(&kind) = self.options.get(at) {
            match kind {
                TCP_OPTION_END => return,
                TCP_OPTION_NOP => at += 1,
                _ => {
                    let len = usize::from(self.options.get(at + 1).copied().unwrap_or(0));
                    if len < 2 {
                        return;
                    }
                    if kind == TCP_OPTION_TIMESTAMPS
                        && len == 10
                        && let Some(field) = self.options.get_mut(at + 2..at + 6)
                    {
                        let current = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                        if tsval.wrapping_sub(current) as i32 > 0 {
                            field.copy_from_slice(&tsval.to_be_bytes());
                        }
                        return;
                    }
                    at += len;
                }
            }
        }
    }

    /// The SACK blocks, as (left, right) edges.
    pub fn sack(&self) -> Vec<(u32, u32)> {
        options(&self.options)
            .flatten()
            .filter(|(kind, _)| *kind == TCP_OPTION_SACK)
            .flat_map(|(_, data)| {
                data.chunks_exact(SACK_BLOCK).map(|block| {
                    (
                        u32::from_be_bytes([block[0], block[1], block[2], block[3]]),
                        u32::from_be_bytes([block[4], block[5], block[6], block[7]]),
                    )
                })
            })
            .collect()
    }

    /// The options with the SACK blocks replaced by `sack` (dropped when empty), padded to a
    /// multiple of four bytes. The blocks go in one option, where the first SACK option was,
    /// and only as many as fit in a TCP header beside the other options: the first ones, the
    /// most recent (RFC 2018 4). More would overflow the header's data offset.
    pub fn set_sack(&mut self, sack: &[(u32, u32)]) {
        let others: usize = options(&self.options)
            .flatten()
            .map(|(kind, data)| match kind {
                TCP_OPTION_SACK => 0,
                TCP_OPTION_NOP => 1,
                _ => data.len() + 2,
            })
            .sum();
        let fit = MAX_OPTIONS.saturating_sub(others + 2) / SACK_BLOCK;
        let sack = &sack[..sack.len().min(fit)];
        let mut rebuilt = Vec::with_capacity(self.options.len());
        let mut sack_written = false;
        for (kind, data) in options(&self.options).flatten() {
            match kind {
                TCP_OPTION_NOP => rebuilt.push(TCP_OPTION_NOP),
                TCP_OPTION_SACK => {
                    if !sack_written && !sack.is_empty() {
                        rebuilt.push(TCP_OPTION_SACK);
                        rebuilt.push((2 + SACK_BLOCK * sack.len()) as u8);
                        for (left, right) in sack {
                            rebuilt.extend_from_slice(&left.to_be_bytes());
                            rebuilt.extend_from_slice(&right.to_be_bytes());
                        }
                    }
                    sack_written = true;
                }
                _ => {
                    rebuilt.push(kind);
                    rebuilt.push((data.len() + 2) as u8);
                    rebuilt.extend_from_slice(data);
                }
            }
        }
        while rebuilt.len() % 4 != 0 {
            rebuilt.push(TCP_OPTION_END);
        }
        self.options = rebuilt;
    }

    /// The packet as bytes, with both checksums computed from scratch.
    pub fn build(&self) -> Vec<u8> {
        let tcp_len = TCP_HEADER + self.options.len();
        let total = IPV4_HEADER + tcp_len + self.payload.len();
        let mut bytes = Vec::with_capacity(total);
        bytes.push(0x45);
        bytes.push(self.tos);
        bytes.extend_from_slice(&(total as u16).to_be_bytes());
        bytes.extend_from_slice(&self.id.to_be_bytes());
        let frags = if self.dont_fragment {
            IP_DONT_FRAGMENT
        } else {
            0
        };
        bytes.extend_from_slice(&frags.to_be_bytes());
        bytes.push(self.ttl);
        bytes.push(IPPROTO_TCP);
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&self.src.octets());
        bytes.extend_from_slice(&self.dst.octets());
        let ip_check = checksum::ipv4_header(&bytes);
        bytes[10..12].copy_from_slice(&ip_check.to_be_bytes());

        bytes.extend_from_slice(&self.src_port.to_be_bytes());
        bytes.extend_from_slice(&self.dst_port.to_be_bytes());
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        bytes.extend_from_slice(&self.ack.to_be_bytes());
        bytes.push(((tcp_len / 4) as u8) << 4);
        bytes.push(self.flags);
        bytes.extend_from_slice(&self.window.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&self.urgent.to_be_bytes());
        bytes.extend_from_slice(&self.options);
        bytes.extend_from_slice(&self.payload);
        let tcp_check = checksum::ipv4_transport(
            self.src.octets(),
            self.dst.octets(),
            IPPROTO_TCP,
            &bytes[IPV4_HEADER..],
            16,
        );
        bytes[IPV4_HEADER + 16..IPV4_HEADER + 18].copy_from_slice(&tcp_check.to_be_bytes());
        bytes
    }
}

/// What a checksum-offloading sender leaves in the field: the folded pseudo-header sum.
fn partial_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment_len: usize) -> u16 {
    let sum = checksum::sum_bytes(&src.octets())
        + checksum::sum_bytes(&dst.octets())
        + u32::from(IPPROTO_TCP)
        + segment_len as u32;
    checksum::fold(sum)
}

/// The (kind, data) pairs of a TCP option list; NOP comes as (1, []), and the list ends at
/// END or its last byte.
fn options(bytes: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), PacketError>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let kind = *bytes.get(at)?;
        match kind {
            TCP_OPTION_END => None,
            TCP_OPTION_NOP => {
                at += 1;
                Some(Ok((TCP_OPTION_NOP, &bytes[0..0])))
            }
            _ => {
                let len = usize::from(*bytes.get(at + 1).unwrap_or(&0));
                if len < 2 || at + len > bytes.len() {
                    at = bytes.len();
                    return Some(Err(PacketError::BadOptions));
                }
                let data = &bytes[at + 2..at + len];
                at += len;
                Some(Ok((kind, data)))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TcpPacket {
        let mut options = vec![
            TCP_OPTION_MSS,
            4,
            0x05,
            0xb4,
            TCP_OPTION_NOP,
            TCP_OPTION_NOP,
        ];
        options.extend_from_slice(&[TCP_OPTION_SACK, 18]);
        for edge in [100u32, 200, 300, 400] {
            options.extend_from_slice(&edge.to_be_bytes());
        }
        TcpPacket {
            src: Ipv4Addr::new(203, 0, 113, 2),
            dst: Ipv4Addr::new(203, 0, 113, 1),
            tos: 0x10,
            id: 7,
            ttl: 64,
            dont_fragment: true,
            src_port: 40000,
            dst_port: 21,
            seq: 1000,
            ack: 2000,
            flags: 0x18,
            window: 512,
            urgent: 0,
            options,
            payload: b"PASV\r\n".to_vec(),
        }
    }

    #[test]
    fn build_then_parse_round_trips_with_valid_checksums() {
        let packet = sample();
        let bytes = packet.build();
        assert_eq!(TcpPacket::parse(&bytes).unwrap(), packet);
        assert_eq!(packet.mss(), Some(1460));
        assert_eq!(packet.sack(), vec![(100, 200), (300, 400)]);
    }

    #[test]
    fn corrupted_segments_are_refused() {
        let mut bytes = sample().build();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        assert_eq!(TcpPacket::parse(&bytes), Err(PacketError::BadTcpChecksum));
        let mut bytes = sample().build();
        bytes[8] = 1;
        assert_eq!(TcpPacket::parse(&bytes), Err(PacketError::BadIpChecksum));
        assert_eq!(
            TcpPacket::parse(&sample().build()[..30]),
            Err(PacketError::Truncated(30))
        );
    }

    #[test]
    fn a_partial_checksum_from_an_offloading_sender_is_accepted() {
        let packet = sample();
        let mut bytes = packet.build();
        let partial = partial_checksum(packet.src, packet.dst, bytes.len() - IPV4_HEADER);
        bytes[IPV4_HEADER + 16..IPV4_HEADER + 18].copy_from_slice(&partial.to_be_bytes());
        assert_eq!(TcpPacket::parse(&bytes).unwrap(), packet_with_same(&packet));
    }

    /// A segment whose checksum computes to 0x0000 arrives with 0xffff when the kernel
    /// finished it (`skb_checksum_help` writes CSUM_MANGLED_0): the same number.
    #[test]
    fn a_zero_checksum_written_as_all_ones_is_accepted() {
        let mut packet = sample();
        packet.payload = b"PASV\r\n\0\0".to_vec();
        let bytes = packet.build();
        let check = u16::from_be_bytes([bytes[IPV4_HEADER + 16], bytes[IPV4_HEADER + 17]]);
        // Two payload bytes equal to the checksum bring the sum to all ones: checksum 0.
        let last = packet.payload.len() - 2;
        packet.payload[last..].copy_from_slice(&check.to_be_bytes());
        let mut bytes = packet.build();
        let field = IPV4_HEADER + 16..IPV4_HEADER + 18;
        assert_eq!(
            bytes[field.clone()],
            [0, 0],
            "the checksum computes to zero"
        );
        bytes[field.clone()].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(TcpPacket::parse(&bytes).unwrap(), packet);
        // Any other value is still wrong.
        bytes[field].copy_from_slice(&[0xff, 0xfe]);
        assert_eq!(TcpPacket::parse(&bytes), Err(PacketError::BadTcpChecksum));
    }

    fn packet_with_same(packet: &TcpPacket) -> TcpPacket {
        packet.clone()
    }

    #[test]
    fn sack_blocks_are_replaced_or_dropped_and_other_options_kept() {
        let mut packet = sample();
        packet.set_sack(&[(150, 250)]);
        assert_eq!(packet.sack(), vec![(150, 250)]);
        assert_eq!(packet.mss(), Some(1460));
        assert_eq!(packet.options.len() % 4, 0);
        packet.set_sack(&[]);
        assert!(packet.sack().is_empty());
        assert_eq!(packet.mss(), Some(1460));
        let bytes = packet.build();
        assert_eq!(TcpPacket::parse(&bytes).unwrap().mss(), Some(1460));
    }

    /// Timestamps (10 bytes, 2 NOPs) leave room for three blocks; two SACK options (as a
    /// punted packet may carry) become one.
    #[test]
    fn only_the_sack_blocks_that_fit_in_the_header_are_written() {
        let mut packet = sample();
        packet.options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        packet
            .options
            .extend_from_slice(&[5, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        packet
            .options
            .extend_from_slice(&[5, 10, 0, 0, 0, 3, 0, 0, 0, 4]);
        packet.options.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let blocks = [(10, 20), (30, 40), (50, 60), (70, 80), (90, 100)];
        packet.set_sack(&blocks);
        assert_eq!(packet.sack(), blocks[..3]);
        assert!(packet.options.len() <= 40, "{:?}", packet.options);
        let parsed = TcpPacket::parse(&packet.build()).unwrap();
        assert_eq!(parsed, packet);
    }

    #[test]
    fn malformed_options_are_refused() {
        let mut packet = sample();
        packet.options = vec![TCP_OPTION_MSS, 9, 0, 0];
        assert_eq!(
            TcpPacket::parse(&packet.build()),
            Err(PacketError::BadOptions)
        );
    }
}
