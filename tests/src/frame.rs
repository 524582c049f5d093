//! Crafted Ethernet/IPv4 frames with correct checksums, for feeding BPF programs directly. The
//! checksums come from the `oracle`, not from the checksum code under test.

use std::net::SocketAddrV4;

use gateway_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::oracle;

/// An Ethernet + IPv4 (+ options) + TCP/UDP frame with correct checksums.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub ip_options: Vec<u8>,
    /// IPv4 flags/fragment-offset field.
    pub frags: u16,
    /// IPv4 time to live (64 unless set).
    pub ttl: u8,
    /// For UDP: send a zero ("no checksum") checksum.
    pub udp_no_checksum: bool,
    pub payload: Vec<u8>,
    /// For ICMP: 8 (echo request, identifier = `src`'s port) or 0 (echo reply, identifier =
    /// `dst`'s port).
    pub icmp_type: u8,
    /// For an ICMP error: its code, and the quoted datagram (IPv4 header onwards).
    pub icmp_code: u8,
    /// TCP flags byte (PSH|ACK unless set).
    pub tcp_flags: u8,
    pub icmp_quote: Option<Vec<u8>>,
}

impl FrameSpec {
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4) -> FrameSpec {
        FrameSpec {
            src,
            dst,
            proto: IPPROTO_TCP,
            ip_options: Vec::new(),
            frags: 0x4000, // DF
            ttl: 64,
            udp_no_checksum: false,
            payload: b"USER anonymous\r\n".to_vec(),
            icmp_type: 0,
            icmp_code: 0,
            tcp_flags: 0x18,
            icmp_quote: None,
        }
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> FrameSpec {
        FrameSpec {
            proto: IPPROTO_UDP,
            payload: b"\x12\x34 query".to_vec(),
            ..FrameSpec::tcp(src, dst)
        }
    }

    /// An ICMP echo request (identifier = `src`'s port) or reply (identifier = `dst`'s port);
    /// the other endpoint's port must be 0.
    pub fn icmp_echo(src: SocketAddrV4, dst: SocketAddrV4, request: bool) -> FrameSpec {
        FrameSpec {
            proto: IPPROTO_ICMP,
            icmp_type: if request { 8 } else { 0 },
            payload: b"ping".to_vec(),
            ..FrameSpec::tcp(src, dst)
        }
    }

    /// An ICMP error from `src` to `dst` quoting `quoted`'s IPv4 header and the first 8 bytes
    /// of its payload (RFC 792's minimum).
    pub fn icmp_error(
        src: std::net::Ipv4Addr,
        dst: std::net::Ipv4Addr,
        icmp_type: u8,
        code: u8,
        quoted: &FrameSpec,
    ) -> FrameSpec {
        let frame = quoted.build();
        let ip = &frame[14..];
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        FrameSpec {
            proto: IPPROTO_ICMP,
            icmp_type,
            icmp_code: code,
            icmp_quote: Some(ip[..ihl + 8].to_vec()),
            payload: Vec::new(),
            ..FrameSpec::tcp(SocketAddrV4::new(src, 0), SocketAddrV4::new(dst, 0))
        }
    }

    pub fn build(&self) -> Vec<u8> {
        assert!(self.ip_options.len().is_multiple_of(4) && self.ip_options.len() <= 40);
        let mut segment = Vec::new();
        segment.extend_from_slice(&self.src.port().to_be_bytes());
        segment.extend_from_slice(&self.dst.port().to_be_bytes());
        let check_offset = if self.proto == IPPROTO_ICMP {
            // Echo: type, code, checksum, then the identifier in the source port's place.
            segment.clear();
            segment.extend_from_slice(&[self.icmp_type, self.icmp_code, 0, 0]);
            if let Some(quote) = &self.icmp_quote {
                segment.extend_from_slice(&[0, 0, 0, 0]);
                segment.extend_from_slice(quote);
            } else {
                segment.extend_from_slice(&self.src.port().max(self.dst.port()).to_be_bytes());
                segment.extend_from_slice(&[0, 1]);
            }
            2
        } else if self.proto == IPPROTO_TCP {
            segment.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // seq
            segment.extend_from_slice(&0x9abc_def0u32.to_be_bytes()); // ack
            segment.extend_from_slice(&[0x50, self.tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
            16
        } else {
            segment.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            segment.extend_from_slice(&[0, 0]);
            6
        };
        segment.extend_from_slice(&self.payload);
        let (src, dst) = (self.src.ip().octets(), self.dst.ip().octets());
        if !(self.proto == IPPROTO_UDP && self.udp_no_checksum) {
            let check = oracle::transport(src, dst, self.proto, &segment)
                .unwrap_or_else(|err| panic!("cannot checksum the frame spec's segment: {err}"));
            segment[check_offset..check_offset + 2].copy_from_slice(&check.to_be_bytes());
        }

        let ihl = 20 + self.ip_options.len();
        let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
        ip.extend_from_slice(&((ihl + segment.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0xbe, 0xef]);
        ip.extend_from_slice(&self.frags.to_be_bytes());
        ip.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&self.ip_options);
        let check = oracle::ipv4_header(&ip)
            .unwrap_or_else(|err| panic!("cannot checksum the frame spec's header: {err}"));
        ip[10..12].copy_from_slice(&check.to_be_bytes());

        let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&segment);
        frame
    }
}
