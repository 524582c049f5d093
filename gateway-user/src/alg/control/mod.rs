//! The FTP control connections the agent owns: their NAT, their FTP sessions (the sans-IO
//! core in `gateway-ftp`), the map entries they need, and the packets they send on.
//!
//! Everything here is driven by calls (a punted packet, a clock tick) and touches the fast
//! path only through [`AlgMaps`], so it runs in unit tests without BPF or sockets.
//!
//! A control connection is known by the two keys its packets arrive with: client to the
//! server's seen address, and server to the client's seen address. Whatever the kind, the
//! translation is the same: a segment from the client leaves as `client_seen -> server`, one
//! from the server as `server_seen -> client`. For a published server `server_seen` is its
//! public endpoint; for a masqueraded client `client_seen` is its public mapping.
//!
//! - this module: the table of connections and its entry points (a punted packet, the
//!   timers, a reload, a flush);
//! - `connection`: one connection, and the packets it sends;
//! - `segment`: a segment of a known connection through its FTP session, and the actions
//!   that come out;
//! - `ports`: public ports claimed for mappings and announced data connections;
//! - `acks`: the pure ACKs the fast path forwards itself, kept in step with the session;
//! - `expect`: the fast path's expectation for an announced data connection;
//! - `memory`: the maps held in memory, for tests and fuzzing;
//! - `settings`, `stats`: the configuration as the ALG sees it, and its counters;
//! - `state`: the table as saved for the next agent (see `alg::store`), and its changes for
//!   each of their takers (the store, the HA sync);
//! - `held`: the sessions a standby holds for its active node, taken over on promotion.

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use gateway_common::{
    Endpoint, ExpectationEntry, ExpectationKey, FlowKey, IPPROTO_TCP, PuntReason,
    control_ack::ControlAck, tcp,
};
use gateway_ftp::{
    policy::Check,
    session::{self, Direction, Endpoints},
};

pub use self::{
    connection::ControlInfo,
    held::HeldTable,
    memory::MemoryMaps,
    settings::{AlgSettings, MasqueradeSettings},
    state::{ChangeLog, SavedChanges, SavedTable},
    stats::AlgStats,
};
use self::{
    connection::{Connection, emit, side},
    state::Changes,
    stats::check_index,
};
use super::{
    packet::{DEFAULT_MSS, TcpPacket},
    refusal::{self, LogLimit},
};

/// What the control connections need from the fast path's maps.
pub trait AlgMaps {
    /// The public endpoint a private one is already mapped to (endpoint-independent
    /// mapping), if that mapping is live.
    fn mapping(&mut self, private: Endpoint) -> Option<Endpoint>;
    /// Claims `public` for `owner` unless someone holds it (`BPF_NOEXIST`); false when taken.
    fn claim(&mut self, public: Endpoint, owner: Endpoint) -> bool;
    /// Records that `private` is mapped to `public` (after a successful claim).
    fn record_mapping(&mut self, private: Endpoint, public: Endpoint);
    fn expect(&mut self, key: ExpectationKey, entry: ExpectationEntry) -> bool;
    fn unexpect(&mut self, key: ExpectationKey);
    /// Whether an expectation is still waiting for its data connection (not used, not gone).
    fn expectation_pending(&mut self, key: ExpectationKey) -> bool;
    /// Lets the fast path forward one direction's pure ACKs (`key`: as they arrive); false
    /// when the map refuses (full).
    fn set_control_ack(&mut self, key: FlowKey, entry: ControlAck) -> bool;
    fn remove_control_ack(&mut self, key: FlowKey);
    /// The timestamp of the last ACK the fast path forwarded for `key`, if it has forwarded one.
    fn control_ack_tsval(&mut self, key: FlowKey) -> Option<u32>;
    /// Every direction the map has an entry for.
    fn control_ack_keys(&mut self) -> Vec<FlowKey>;
}

/// How long a closed control connection is remembered, for retransmitted FINs and ACKs.
const CLOSED_LINGER_NS: u64 = 10_000_000_000;

/// Malformed punted packets logged at warning level (the rest are counted).
const MALFORMED_LOGGED: u64 = 10;

/// The first 64 bytes of a packet in hex: its IPv4 and TCP headers, for a log line.
fn hex_head(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(64)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A packet to send, already translated, with its checksums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub dst: Ipv4Addr,
    pub bytes: Vec<u8>,
}

pub struct ControlTable {
    settings: AlgSettings,
    connections: HashMap<u64, Connection>,
    flows: HashMap<FlowKey, (u64, Direction)>,
    /// Control sessions not yet closed, per client address: the per-client limit is checked
    /// on every SYN, which must not cost a walk over every connection (closed ones linger).
    live_per_client: HashMap<Ipv4Addr, usize>,
    next_id: u64,
    rng: u64,
    stats: AlgStats,
    /// Refusals at the per-client limit get a log line only a few at a time.
    refusals_logged: LogLimit,
    /// What a save after a batch must write (a save of everything would cost O(sessions)
    /// per batch), kept only once a store asks for it.
    changes: Changes,
}

impl ControlTable {
    pub fn new(settings: AlgSettings, seed: u64) -> ControlTable {
        ControlTable {
            settings,
            connections: HashMap::new(),
            flows: HashMap::new(),
            live_per_client: HashMap::new(),
            next_id: 1,
            rng: seed | 1,
            stats: AlgStats::default(),
            refusals_logged: LogLimit::default(),
            changes: Changes::default(),
        }
    }

    pub fn stats(&self) -> AlgStats {
        self.stats
    }

    /// New settings (a reload): new sessions follow them; running sessions keep their
    /// translation and get the policy that now applies to their server for what comes next.
    pub fn set_settings(&mut self, settings: AlgSettings) {
        for connection in self.connections.values_mut() {
            connection.follow(settings.policy_for(connection.server_seen));
        }
        self.settings = settings;
    }

    /// What the control sessions owe (bytes the gateway acknowledged for a receiver that has
    /// not acknowledged them yet), to send again: called on a timer. A session that finds it
    /// owes nothing any more clears its flag unsaved (a journal line per session per tick
    /// otherwise): a restored one may say it owes, and finds the same at its first tick.
    pub fn resend_owed(&mut self) -> Vec<Outgoing> {
        let mut outgoing = Vec::new();
        for (id, connection) in self.connections.iter_mut() {
            if connection.closed() {
                continue;
            }
            for direction in Direction::BOTH {
                let Some(segment) = connection.core.resend_owed(direction) else {
                    continue;
                };
                self.changes.changed(*id);
                let Some(template) = connection.last_from[side(direction)].clone() else {
                    continue;
                };
                emit(connection, &template, direction, segment, &mut outgoing);
            }
        }
        self.stats.resent += outgoing.len() as u64;
        outgoing
    }

    /// Forgets every control session and removes their expectations (`gateway flush --ftp`):
    /// their later segments are dropped as unknown. Returns how many went.
    pub fn flush(&mut self, maps: &mut dyn AlgMaps) -> usize {
        let ids: Vec<u64> = self.connections.keys().copied().collect();
        for id in &ids {
            self.remove(*id, maps);
        }
        ids.len()
    }

    pub fn connections(&self, now_ns: u64) -> Vec<ControlInfo> {
        self.connections
            .values()
            .map(|connection| connection.info(now_ns))
            .collect()
    }

    /// Forgets the expectations the fast path has used (or that are gone), and the data ports
    /// held for them: a used port is held from then on by its data connection's sessions, and
    /// holding it longer would starve the port range under many transfers.
    pub fn forget_used(&mut self, maps: &mut dyn AlgMaps) {
        for (id, connection) in self.connections.iter_mut() {
            let used: Vec<Endpoint> = connection
                .expectations
                .iter()
                .filter(|(key, _)| !maps.expectation_pending(*key))
                .map(|(key, _)| key.endpoint)
                .collect();
            if used.is_empty() {
                continue;
            }
            self.changes.changed(*id);
            connection
                .expectations
                .retain(|(key, _)| !used.contains(&key.endpoint));
            connection
                .held
                .retain(|(endpoint, _)| !used.contains(endpoint));
        }
    }

    /// Public endpoints the control connections hold (their mappings, and data ports of
    /// expectations not yet expired): the sweep must leave them.
    pub fn held_endpoints(&self, now_ns: u64) -> HashSet<Endpoint> {
        self.connections
            .values()
            .flat_map(|connection| connection.held.iter())
            .filter(|(_, until)| *until >= now_ns)
            .map(|(endpoint, _)| *endpoint)
            .collect()
    }

    /// Handles one punted packet; returns what to send, in order.
    pub fn on_packet(
        &mut self,
        reason: u8,
        bytes: &[u8],
        now_ns: u64,
        maps: &mut dyn AlgMaps,
    ) -> Vec<Outgoing> {
        self.stats.packets += 1;
        let packet = match TcpPacket::parse(bytes) {
            Ok(packet) => packet,
            Err(err) => {
                self.stats.drop_malformed += 1;
                // The first few in full (why, and from whom), then only counted: a flood of
                // them must not flood the log.
                if self.stats.drop_malformed <= MALFORMED_LOGGED {
                    tracing::warn!(
                        bytes = bytes.len(),
                        head = %hex_head(bytes),
                        "punted packet refused: {err}"
                    );
                } else {
                    tracing::debug!("punted packet refused: {err}");
                }
                return Vec::new();
            }
        };
        let key = flow_key(&packet);
        let syn_only = tcp::opens_connection(packet.flags);
        let existing = self.flows.get(&key).copied();
        let (id, direction) = match existing {
            // A new connection reusing the ports of one that closed.
            Some((id, Direction::ClientToServer))
                if syn_only && self.connections.get(&id).is_some_and(|c| c.closed()) =>
            {
                self.remove(id, maps);
                match self.open(reason, &packet, now_ns, maps) {
                    Ok(id) => (id, Direction::ClientToServer),
                    Err(answer) => return answer,
                }
            }
            Some(found) => found,
            None if syn_only => match self.open(reason, &packet, now_ns, maps) {
                Ok(id) => (id, Direction::ClientToServer),
                Err(answer) => return answer,
            },
            None => {
                // Not a connection the agent saw open (or one it forgot): fail closed.
                self.stats.drop_no_session += 1;
                return Vec::new();
            }
        };
        let was_live = self.connections.get(&id).is_some_and(|c| !c.closed());
        let outgoing = self.on_segment(id, direction, packet, now_ns, maps);
        if let Some(connection) = self.connections.get_mut(&id) {
            // Before anything this segment caused is sent (a rewritten line moves the numbers).
            connection.sync_control_acks(self.settings.forward_pure_acks, maps);
            self.changes.changed(id);
        }
        if let Some(connection) = self.connections.get(&id)
            && was_live
            && connection.closed()
        {
            let client = *connection.client.ip();
            self.client_session_ended(client);
        }
        outgoing
    }

    fn client_session_ended(&mut self, client: Ipv4Addr) {
        if let Some(count) = self.live_per_client.get_mut(&client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.live_per_client.remove(&client);
            }
        }
    }

    /// Forgets connections idle past their timeout, and closed ones after a linger; removes
    /// their unused expectations. Returns how many went.
    pub fn expire(&mut self, now_ns: u64, maps: &mut dyn AlgMaps) -> usize {
        let settings = &self.settings;
        let gone: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, connection)| {
                // A closed connection lingers instead; a half-closed one is not closing for
                // the timeout (its other direction may still carry commands).
                let limit = if connection.closed() {
                    CLOSED_LINGER_NS
                } else {
                    tcp::idle_timeout_ns(
                        connection.established,
                        false,
                        settings.established_timeout_ns,
                        settings.transitory_timeout_ns,
                    )
                };
                now_ns.saturating_sub(connection.last_seen_ns) > limit
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.remove(*id, maps);
        }
        for (id, connection) in self.connections.iter_mut() {
            let before = (connection.held.len(), connection.expectations.len());
            connection.held.retain(|(_, until)| *until >= now_ns);
            connection
                .expectations
                .retain(|(_, expires)| *expires >= now_ns);
            if (connection.held.len(), connection.expectations.len()) != before {
                self.changes.changed(*id);
            }
        }
        gone.len()
    }

    fn remove(&mut self, id: u64, maps: &mut dyn AlgMaps) {
        let Some(mut connection) = self.connections.remove(&id) else {
            return;
        };
        connection.drop_control_acks(maps);
        self.changes.removed(id);
        if !connection.closed() {
            self.client_session_ended(*connection.client.ip());
        }
        // Its two flows, unless a newer connection on the same ports owns them already.
        for flow in [
            key(connection.client, connection.server_seen),
            key(connection.server, connection.client_seen),
        ] {
            if self.flows.get(&flow).is_some_and(|(owner, _)| *owner == id) {
                self.flows.remove(&flow);
            }
        }
        // Data connections it announced and that never opened die with it.
        for (key, _) in &connection.expectations {
            maps.unexpect(*key);
        }
        self.stats.sessions_closed += 1;
        tracing::info!(
            client = %connection.client,
            server = %connection.server,
            "ftp control session ended"
        );
    }

    /// A client's SYN: which kind of control connection it opens, and its translation; or,
    /// when it opens none, what to answer it with (nothing: dropped).
    fn open(
        &mut self,
        reason: u8,
        packet: &TcpPacket,
        now_ns: u64,
        maps: &mut dyn AlgMaps,
    ) -> Result<u64, Vec<Outgoing>> {
        let client = SocketAddrV4::new(packet.src, packet.src_port);
        let destination = SocketAddrV4::new(packet.dst, packet.dst_port);
        let policy = self.settings.policy_for(destination);
        let sessions_of_client = self.live_per_client.get(client.ip()).copied().unwrap_or(0);
        if policy
            .session_limit()
            .is_some_and(|limit| sessions_of_client >= limit)
        {
            // Refused at once, visibly: a silent drop would leave the client (an office
            // behind one address) to time out.
            self.stats.violations += 1;
            self.stats.violations_by_check[check_index(Check::TooManySessions)] += 1;
            if let Some(unlogged) = self.refusals_logged.admit(now_ns) {
                tracing::warn!(
                    %client, server = %destination, check = Check::TooManySessions.name(),
                    action = "reset", unlogged,
                    "ftp control session refused: {sessions_of_client} sessions from this client already"
                );
            }
            return Err(vec![refusal::reset_for_syn(packet)]);
        }
        let (client_seen, server, server_seen, held) = match PuntReason::try_from(reason) {
            Ok(PuntReason::PublishedFromClient) => {
                let Some(private) = self.settings.published.get(&destination).copied() else {
                    self.stats.drop_no_session += 1;
                    return Err(Vec::new());
                };
                (client, private, destination, Vec::new())
            }
            Ok(PuntReason::MasqueradeFromClient) => {
                let Some(public) = self.masquerade_mapping(client, maps) else {
                    self.stats.drop_no_port += 1;
                    return Err(Vec::new());
                };
                let held = vec![(Endpoint::from_socket(public, IPPROTO_TCP), u64::MAX)];
                (public, destination, destination, held)
            }
            // An inside client of a published server, through its public address: the server
            // sees the client at its masquerade mapping, as any hairpinned connection.
            Ok(PuntReason::HairpinFromClient) => {
                let Some(private) = self.settings.published.get(&destination).copied() else {
                    self.stats.drop_no_session += 1;
                    return Err(Vec::new());
                };
                let Some(public) = self.masquerade_mapping(client, maps) else {
                    self.stats.drop_no_port += 1;
                    return Err(Vec::new());
                };
                let held = vec![(Endpoint::from_socket(public, IPPROTO_TCP), u64::MAX)];
                (public, private, destination, held)
            }
            // A server's segment with no connection: not ours to open; nor is a reason the
            // fast path does not write.
            Ok(PuntReason::PublishedFromServer | PuntReason::MasqueradeFromServer) | Err(_) => {
                self.stats.drop_no_session += 1;
                return Err(Vec::new());
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let connection = Connection {
            id,
            client,
            client_seen,
            server,
            server_seen,
            core: session::Session::new(
                Endpoints {
                    client_real: *client.ip(),
                    client_seen: *client_seen.ip(),
                    server_real: *server.ip(),
                    server_seen: *server_seen.ip(),
                },
                policy.clone(),
            ),
            policy,
            created_ns: now_ns,
            last_from: [None, None],
            mss_to_client: DEFAULT_MSS,
            mss_to_server: DEFAULT_MSS,
            fin_from_client: false,
            fin_from_server: false,
            established: false,
            reset: false,
            last_seen_ns: now_ns,
            held,
            expectations: Vec::new(),
            acks_written: [None; 2],
        };
        self.flows
            .insert(key(client, server_seen), (id, Direction::ClientToServer));
        self.flows
            .insert(key(server, client_seen), (id, Direction::ServerToClient));
        self.connections.insert(id, connection);
        self.changes.changed(id);
        *self.live_per_client.entry(*client.ip()).or_default() += 1;
        self.stats.sessions_opened += 1;
        tracing::info!(
            %client, client_seen = %client_seen, %server, server_seen = %server_seen,
            "ftp control session started"
        );
        Ok(id)
    }
}

pub(super) fn key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey {
        src: src.ip().octets(),
        dst: dst.ip().octets(),
        src_port: src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

fn flow_key(packet: &TcpPacket) -> FlowKey {
    key(
        SocketAddrV4::new(packet.src, packet.src_port),
        SocketAddrV4::new(packet.dst, packet.dst_port),
    )
}

mod acks;
mod connection;
mod expect;
mod held;
mod memory;
mod ports;
mod segment;
mod settings;
mod state;
mod stats;
#[cfg(test)]
mod tests;
