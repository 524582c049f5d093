//! Control connections refused at their SYN (a client beyond `max_sessions_per_client`): the
//! client gets an RST at once, in the name of the server it called, so its `connect()` fails
//! with "connection refused" instead of waiting out its SYN retransmissions; nothing reaches
//! the server. The refusals are counted, and logged at a rate a flood of them cannot raise.

use gateway_ftp::session::flags;

use super::{control::Outgoing, packet::TcpPacket};

/// The reset a closed port answers a SYN with (RFC 9293 3.10.7.1): from the address and port
/// the client connected to, sequence number 0, acknowledging the SYN and any data with it.
pub fn reset_for_syn(syn: &TcpPacket) -> Outgoing {
    // SEG.LEN counts the SYN itself.
    let length = 1u32.wrapping_add(syn.payload.len() as u32);
    let reset = TcpPacket {
        src: syn.dst,
        dst: syn.src,
        tos: 0,
        id: 0,
        ttl: DEFAULT_TTL,
        dont_fragment: true,
        src_port: syn.dst_port,
        dst_port: syn.src_port,
        seq: 0,
        ack: syn.seq.wrapping_add(length),
        flags: flags::RST | flags::ACK,
        window: 0,
        urgent: 0,
        options: Vec::new(),
        payload: Vec::new(),
    };
    Outgoing {
        dst: reset.dst,
        bytes: reset.build(),
    }
}

/// Linux's default TTL for what it originates (`net.ipv4.ip_default_ttl`).
const DEFAULT_TTL: u8 = 64;

/// Lines logged per window; beyond them refusals are only counted until the next window,
/// whose first line says how many went unlogged.
const LINES_PER_WINDOW: u32 = 5;
const WINDOW_NS: u64 = 10_000_000_000;

/// How often refusals are logged.
#[derive(Debug, Default)]
pub struct LogLimit {
    window_start_ns: u64,
    logged: u32,
    unlogged: u64,
}

impl LogLimit {
    /// Whether the refusal at `now_ns` gets a line; if so, how many since the last line did
    /// not.
    pub fn admit(&mut self, now_ns: u64) -> Option<u64> {
        if self.logged == 0 || now_ns.saturating_sub(self.window_start_ns) >= WINDOW_NS {
            self.window_start_ns = now_ns;
            self.logged = 0;
        }
        if self.logged >= LINES_PER_WINDOW {
            self.unlogged += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use gateway_common::checksum;

    use super::*;

    fn syn(payload: &[u8]) -> TcpPacket {
        TcpPacket {
            src: Ipv4Addr::new(203, 0, 113, 4),
            dst: Ipv4Addr::new(203, 0, 113, 1),
            tos: 0x10,
            id: 77,
            ttl: 64,
            dont_fragment: true,
            src_port: 40123,
            dst_port: 21,
            seq: 0xffff_fffe,
            ack: 0,
            flags: flags::SYN,
            window: 64240,
            urgent: 0,
            options: vec![2, 4, 0x05, 0xb4, 1, 3, 3, 7],
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn the_reset_comes_from_the_called_endpoint_and_acknowledges_the_syn() {
        let out = reset_for_syn(&syn(b""));
        assert_eq!(out.dst, Ipv4Addr::new(203, 0, 113, 4));
        // Parsing verifies both checksums.
        let reset = TcpPacket::parse(&out.bytes).expect("valid checksums");
        assert_eq!(
            (reset.src, reset.src_port, reset.dst, reset.dst_port),
            (
                Ipv4Addr::new(203, 0, 113, 1),
                21,
                Ipv4Addr::new(203, 0, 113, 4),
                40123
            )
        );
        assert_eq!(reset.flags, flags::RST | flags::ACK);
        assert_eq!(reset.seq, 0);
        // The SYN's sequence number plus one, across the 32-bit wrap.
        assert_eq!(reset.ack, 0xffff_ffff);
        assert_eq!((reset.window, reset.urgent), (0, 0));
        assert!(reset.options.is_empty() && reset.payload.is_empty());
        assert_eq!(out.bytes.len(), 40);
        assert_eq!(reset.ttl, 64);
        // The checksums as computed from scratch, independently of the parser.
        let bytes = &out.bytes;
        assert!(checksum::same(
            checksum::ipv4_header(&bytes[..20]),
            u16::from_be_bytes([bytes[10], bytes[11]])
        ));
        assert!(checksum::same(
            checksum::ipv4_transport(
                reset.src.octets(),
                reset.dst.octets(),
                gateway_common::IPPROTO_TCP,
                &bytes[20..],
                16
            ),
            u16::from_be_bytes([bytes[36], bytes[37]])
        ));

        // Data with the SYN is acknowledged too (SEG.LEN).
        let reset = TcpPacket::parse(&reset_for_syn(&syn(b"USER x\r\n")).bytes).unwrap();
        assert_eq!(reset.ack, 0xffff_fffe_u32.wrapping_add(9));
    }

    #[test]
    fn a_flood_of_refusals_is_logged_a_few_lines_at_a_time() {
        let second = 1_000_000_000;
        let mut limit = LogLimit::default();
        let logged: Vec<Option<u64>> = (0..8).map(|i| limit.admit(100 + i)).collect();
        assert_eq!(
            logged,
            vec![
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None
            ]
        );
        // The next window's first line says how many went unlogged.
        assert_eq!(limit.admit(100 + 10 * second), Some(3));
        assert_eq!(limit.admit(101 + 10 * second), Some(0));
    }
}
