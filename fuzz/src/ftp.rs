//! The FTP core's targets: line framing and parsers, and whole control sessions.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use gateway_ftp::{
    line::LineAssembler,
    parse,
    policy::{NotFtpAction, Policy, TlsPolicy, ViolationAction},
    rewrite,
    session::{Direction, Endpoints, PortAllocator, Session, TcpSegment, flags},
};

/// Every parser and the rewriter on arbitrary bytes: nothing may panic, and whatever parses
/// must rewrite to a line that parses back to the endpoint written into it.
pub fn lines(data: &[u8]) {
    let mut lines = LineAssembler::new(512);
    let Ok(lines) = lines.push(data) else { return };
    let public: SocketAddrV4 = "203.0.113.1:40000".parse().expect("constant");
    for line in lines {
        let content = line.content();
        let _ = line.has_nul_or_bare_cr();
        let _ = parse::reply_line(content);
        if let Ok(announced) = parse::passive_reply(content) {
            let out = rewrite::splice(
                &line.bytes,
                announced.span,
                rewrite::host_port_text(public).as_bytes(),
            );
            let back = parse::passive_reply(&out[..out.len() - (line.bytes.len() - content.len())]);
            assert_eq!(back.map(|a| a.endpoint), Ok(public));
        }
        let _ = parse::extended_passive_reply(content);
        if let Some(command) = parse::command_line(content) {
            let _ = parse::port_argument(&command);
            let _ = parse::eprt_argument(&command);
        }
    }
}

/// A control session under the permissive policy (translation, hardly any refusal) fed
/// arbitrary segments in both directions (any sequence numbers, overlaps, reordering, flags,
/// ACKs and SACK blocks): nothing may panic.
pub fn session(data: &[u8]) {
    let endpoints = Endpoints {
        client_real: Ipv4Addr::new(203, 0, 113, 2),
        client_seen: Ipv4Addr::new(203, 0, 113, 2),
        server_real: Ipv4Addr::new(10, 0, 0, 2),
        server_seen: Ipv4Addr::new(203, 0, 113, 1),
    };
    let policy = Policy {
        max_line: 256,
        ..Policy::permissive()
    };
    let mut session = Session::new(endpoints, Arc::new(policy));
    drive(&mut session, data, false);
}

/// A control session as production builds it, with a policy, fed arbitrary segments in both
/// directions and the resend timer: every check and action, the not-FTP rule, held and
/// released pipelined lines, the gateway's own replies and RSTs. Nothing may panic. The first
/// byte picks the [`policy`] and (0x40) the side behind the gateway (published server or
/// masqueraded client).
pub fn session_policy(data: &[u8]) {
    let Some((&choice, data)) = data.split_first() else {
        return;
    };
    let endpoints = if choice & 0x40 == 0 {
        Endpoints {
            client_real: Ipv4Addr::new(203, 0, 113, 2),
            client_seen: Ipv4Addr::new(203, 0, 113, 2),
            server_real: Ipv4Addr::new(10, 0, 0, 2),
            server_seen: Ipv4Addr::new(203, 0, 113, 1),
        }
    } else {
        Endpoints {
            client_real: Ipv4Addr::new(10, 0, 0, 2),
            client_seen: Ipv4Addr::new(203, 0, 113, 1),
            server_real: Ipv4Addr::new(198, 51, 100, 7),
            server_seen: Ipv4Addr::new(198, 51, 100, 7),
        }
    };
    let mut session = Session::new(endpoints, Arc::new(policy(choice)));
    drive(&mut session, data, true);
}

/// The policy a byte of the input picks: its bits choose the violation action (0x03),
/// pipelining (0x04), not-FTP pass (0x08), TLS pass (0x10) and the pending expectations
/// allowed (0x60); `SITE` and the user `bob` are denied.
pub fn policy(choice: u8) -> Policy {
    Policy {
        max_line: 256,
        on_violation: match choice & 0x03 {
            0 => ViolationAction::Drop,
            1 => ViolationAction::Reset,
            _ => ViolationAction::Reject,
        },
        pipelining: choice & 0x04 != 0,
        not_ftp: if choice & 0x08 != 0 {
            NotFtpAction::Pass
        } else {
            NotFtpAction::Reset
        },
        tls: if choice & 0x10 != 0 {
            TlsPolicy::Pass
        } else {
            TlsPolicy::Deny
        },
        max_pending_expectations: 1 + usize::from(choice >> 5 & 0x03),
        max_sessions_per_client: 3,
        deny_commands: vec!["SITE".into()],
        deny_users: vec!["bob".into()],
        ..Policy::default()
    }
}

/// The segment records both session targets read ([`drive`]): one byte for direction, flags and SACK, the
/// sequence and ACK offsets, a length, the payload.
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
    let syn = |seq| TcpSegment {
        seq,
        ack: 0,
        flags: flags::SYN,
        window: 1000,
        window_scale: None,
        sack: Vec::new(),
        payload: Vec::new(),
    };
    let _ = session.on_segment(Direction::ClientToServer, syn(1000), &mut ports);
    let _ = session.on_segment(Direction::ServerToClient, syn(u32::MAX - 40), &mut ports);
    // Each record: direction+flags byte, seq offset (2), ack offset (2), length (1), payload.
    let mut rest = data;
    while rest.len() >= 6 {
        let head = &rest[..6];
        let len = (head[5] as usize).min(rest.len() - 6);
        let payload = rest[6..6 + len].to_vec();
        rest = &rest[6 + len..];
        let direction = if head[0] & 0x80 == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
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
        let sack = if head[0] & 0x20 != 0 {
            vec![(ack.wrapping_sub(10), ack.wrapping_add(30))]
        } else {
            Vec::new()
        };
        let segment = TcpSegment {
            seq,
            ack,
            flags: (head[0] & 0x1f) | flags::ACK,
            window: 1000,
            window_scale: None,
            sack,
            payload,
        };
        let _ = session.on_segment(direction, segment, &mut ports);
        if timer && head[0] & 0x40 != 0 {
            let _ = session.resend_owed(direction);
        }
    }
}
