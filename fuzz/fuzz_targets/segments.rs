//! The segment records both session targets read: one byte for direction, flags and SACK, the
//! sequence and ACK offsets, a length, the payload.

use std::net::{Ipv4Addr, SocketAddrV4};

use gateway_ftp::session::{Direction, PortAllocator, Session, TcpSegment, flags};

pub struct Ports(pub u16);

impl PortAllocator for Ports {
    fn allocate(&mut self, _public: Ipv4Addr, private: SocketAddrV4) -> Option<u16> {
        let preferred = private.port();
        self.0 = self.0.wrapping_add(1);
        (self.0 % 7 != 0).then_some(preferred ^ self.0)
    }
}

/// Starts both directions, then feeds every record of `data` to `session`; with `timer`, the
/// shell's resend timer runs where a record asks for it (bit 0x40 of its first byte).
pub fn drive(session: &mut Session, data: &[u8], timer: bool) {
    let mut ports = Ports(0);
    let syn = |seq| TcpSegment { seq, ack: 0, flags: flags::SYN, window: 1000, window_scale: None, sack: Vec::new(), payload: Vec::new() };
    let _ = session.on_segment(Direction::ClientToServer, syn(1000), &mut ports);
    let _ = session.on_segment(Direction::ServerToClient, syn(u32::MAX - 40), &mut ports);
    // Each record: direction+flags byte, seq offset (2), ack offset (2), length (1), payload.
    let mut rest = data;
    while rest.len() >= 6 {
        let head = &rest[..6];
        let len = (head[5] as usize).min(rest.len() - 6);
        let payload = rest[6..6 + len].to_vec();
        rest = &rest[6 + len..];
        let direction = if head[0] & 0x80 == 0 { Direction::ClientToServer } else { Direction::ServerToClient };
        let base = match direction {
            Direction::ClientToServer => 1001u32,
            Direction::ServerToClient => u32::MAX - 39,
        };
        let other = match direction {
            Direction::ClientToServer => u32::MAX - 39,
            Direction::ServerToClient => 1001u32,
        };
        let seq = base.wrapping_add(u16::from_be_bytes([head[1], head[2]]) as u32);
        let ack = other.wrapping_add(u16::from_be_bytes([head[3], head[4]]) as u32);
        let sack = if head[0] & 0x20 != 0 { vec![(ack.wrapping_sub(10), ack.wrapping_add(30))] } else { Vec::new() };
        let segment = TcpSegment { seq, ack, flags: (head[0] & 0x1f) | flags::ACK, window: 1000, window_scale: None, sack, payload };
        let _ = session.on_segment(direction, segment, &mut ports);
        if timer && head[0] & 0x40 != 0 {
            let _ = session.resend_owed(direction);
        }
    }
}
