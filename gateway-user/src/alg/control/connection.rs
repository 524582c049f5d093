//! One control connection: its translation, its FTP session (the `gateway-ftp` core), what it
//! holds in the fast path, and the packets it sends on. It is saved as it is (see `state`):
//! only its policy is not, which is the configuration's to give.

use std::{net::SocketAddrV4, sync::Arc};

use gateway_common::{Endpoint, ExpectationKey, control_ack::ControlAck};
use gateway_ftp::{
    policy::Policy,
    session::{self, Direction, TcpSegment, flags},
};

use super::{Outgoing, state};
use crate::alg::packet::TcpPacket;

/// One line of `gateway sessions --ftp` and of the session log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlInfo {
    pub client: SocketAddrV4,
    pub client_seen: SocketAddrV4,
    pub server: SocketAddrV4,
    pub server_seen: SocketAddrV4,
    /// Expectations installed and not expired; some may have been used since (the fast
    /// path removes them), which only the map can tell.
    pub expectations: Vec<ExpectationKey>,
    pub closed: bool,
    pub user: Option<String>,
    /// `login`, `password`, `logged-in`, `tls`, `reset`, `closed`.
    pub phase: &'static str,
    pub age_ns: u64,
    /// Which sides' pure ACKs the fast path forwards itself (client's, server's).
    pub fast_path_acks: [bool; 2],
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Connection {
    pub id: u64,
    pub client: SocketAddrV4,
    pub client_seen: SocketAddrV4,
    pub server: SocketAddrV4,
    pub server_seen: SocketAddrV4,
    /// Saved without its policy (the session does not serialize it).
    pub core: session::Session,
    /// Largest payload each receiver takes (from the MSS option of its SYN).
    pub mss_to_client: u16,
    pub mss_to_server: u16,
    pub fin_from_client: bool,
    pub fin_from_server: bool,
    pub established: bool,
    pub reset: bool,
    pub last_seen_ns: u64,
    pub created_ns: u64,
    /// Public endpoints this connection holds in the fast path: its own mapping (masquerade)
    /// and the data ports of its expectations, until those expire.
    #[serde(with = "state::held")]
    pub held: Vec<(Endpoint, u64)>,
    /// Expectations installed and maybe not used yet, with their expiry.
    #[serde(with = "state::expectations")]
    pub expectations: Vec<(ExpectationKey, u64)>,
    /// The last segment from each side (client, server), payload dropped: the template of
    /// what the gateway sends in that side's name (its replies, its RSTs), so their TCP
    /// options (timestamps) are that side's.
    pub last_from: [Option<TcpPacket>; 2],
    /// The policy the core follows, as the configuration gives it (not saved: a restore
    /// gives it again, see [`Connection::follow`]).
    #[serde(skip)]
    pub policy: Arc<Policy>,
    /// What this agent last wrote to `CONTROL_ACKS` for each side's pure ACKs (client's,
    /// server's); not saved: a restore writes them afresh (`adopt_control_acks`).
    #[serde(skip)]
    pub acks_written: [Option<ControlAck>; 2],
}

impl Connection {
    /// From now on the session follows `policy` (at a reload, and at a restore, where the
    /// saved session came without one).
    pub fn follow(&mut self, policy: Arc<Policy>) {
        self.core.set_policy(policy.clone());
        self.policy = policy;
    }

    pub fn closed(&self) -> bool {
        self.reset || (self.fin_from_client && self.fin_from_server)
    }

    pub fn info(&self, now_ns: u64) -> ControlInfo {
        ControlInfo {
            client: self.client,
            client_seen: self.client_seen,
            server: self.server,
            server_seen: self.server_seen,
            expectations: self
                .expectations
                .iter()
                .filter(|(_, expires)| *expires >= now_ns)
                .map(|(key, _)| *key)
                .collect(),
            closed: self.closed(),
            user: self.core.user().map(str::to_owned),
            phase: if self.closed() && !self.core.terminated() {
                "closed"
            } else {
                self.core.phase()
            },
            age_ns: now_ns.saturating_sub(self.created_ns),
            fast_path_acks: self.acks_written.map(|written| written.is_some()),
        }
    }
}

/// Builds the packets of one emitted segment: translated addresses, the segment's fields,
/// and its payload cut to the receiver's MSS.
pub(super) fn emit(
    connection: &Connection,
    original: &TcpPacket,
    direction: Direction,
    segment: TcpSegment,
    outgoing: &mut Vec<Outgoing>,
) {
    // A segment in the other side's name (a reply or RST of the gateway's) takes that side's
    // last segment as its template.
    let original = connection.last_from[side(direction)]
        .as_ref()
        .filter(|_| {
            let arrived = if original.src == *connection.client.ip()
                && original.src_port == connection.client.port()
            {
                Direction::ClientToServer
            } else {
                Direction::ServerToClient
            };
            arrived != direction
        })
        .unwrap_or(original);
    let (src, dst, mss) = match direction {
        Direction::ClientToServer => (
            connection.client_seen,
            connection.server,
            connection.mss_to_server,
        ),
        Direction::ServerToClient => (
            connection.server_seen,
            connection.client,
            connection.mss_to_client,
        ),
    };
    let mut template = TcpPacket {
        src: *src.ip(),
        dst: *dst.ip(),
        src_port: src.port(),
        dst_port: dst.port(),
        ttl: original.ttl - 1,
        seq: segment.seq,
        ack: segment.ack,
        flags: segment.flags,
        window: segment.window,
        payload: Vec::new(),
        ..original.clone()
    };
    if !original.sack().is_empty() || !segment.sack.is_empty() {
        template.set_sack(&segment.sack);
    }
    let room = usize::from(mss)
        .saturating_sub(template.options.len())
        .max(1);
    if segment.payload.len() <= room {
        template.payload = segment.payload;
        outgoing.push(Outgoing {
            dst: template.dst,
            bytes: template.build(),
        });
        return;
    }
    // A GSO/GRO super-packet, or a line that grew: one packet per MSS. Only the last keeps
    // PSH and FIN.
    let chunks: Vec<&[u8]> = segment.payload.chunks(room).collect();
    let last = chunks.len() - 1;
    let mut seq = segment.seq;
    for (index, chunk) in chunks.into_iter().enumerate() {
        let mut packet = template.clone();
        packet.seq = seq;
        packet.id = template.id.wrapping_add(index as u16);
        if index != last {
            packet.flags &= !(flags::FIN | flags::PSH);
        }
        packet.payload = chunk.to_vec();
        seq = seq.wrapping_add(chunk.len() as u32);
        outgoing.push(Outgoing {
            dst: packet.dst,
            bytes: packet.build(),
        });
    }
}

pub(super) fn side(direction: Direction) -> usize {
    match direction {
        Direction::ClientToServer => 0,
        Direction::ServerToClient => 1,
    }
}
