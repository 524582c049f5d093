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

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    ops::RangeInclusive,
    sync::Arc,
};

use gateway_common::{
    Endpoint, ExpectationEntry, ExpectationKey, ExpectationKind, FlowKey, IPPROTO_TCP,
    PORT_ALLOCATION_TRIES, PuntReason, endpoint_flags,
    masquerade::{PortCandidates, public_address_index},
    tcp,
};
use gateway_ftp::{
    policy::{Check, Policy, ViolationAction},
    session::{self, Action, Direction, Endpoints, PortAllocator, SessionError, TcpSegment, flags},
};

use super::{
    packet::{DEFAULT_MSS, TcpPacket},
    refusal::{self, LogLimit},
};
use crate::config::Ipv4Net;

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
}

/// The ALG's view of the configuration.
#[derive(Debug, Clone)]
pub struct AlgSettings {
    /// Published FTP control endpoints: public -> private.
    pub published: HashMap<SocketAddrV4, SocketAddrV4>,
    /// Every published TCP public endpoint (FTP or not): never handed out as a data port.
    pub reserved: HashSet<SocketAddrV4>,
    pub masquerade: Option<MasqueradeSettings>,
    /// Public ports for data connections announced by published servers when the server's
    /// own port is taken (the masquerade's range when there is one).
    pub data_ports: RangeInclusive<u16>,
    pub expectation_timeout_ns: u64,
    /// `[ftp.policy]`: masqueraded clients' sessions, and published servers without their own.
    pub policy: Arc<Policy>,
    /// Published servers' own policies, by public control endpoint.
    pub published_policies: HashMap<SocketAddrV4, Arc<Policy>>,
    pub established_timeout_ns: u64,
    pub transitory_timeout_ns: u64,
}

impl AlgSettings {
    pub fn from_config(config: &crate::config::Config) -> AlgSettings {
        let tcp =
            |publish: &&crate::config::Publish| publish.protocol == crate::config::Protocol::Tcp;
        let seconds = |s: u64| s.saturating_mul(1_000_000_000);
        let masquerade = config
            .masquerade
            .as_ref()
            .map(|masquerade| MasqueradeSettings {
                networks: masquerade.networks.clone(),
                addresses: masquerade.addresses.clone(),
                ports: masquerade.ports.clone(),
            });
        AlgSettings {
            published: config
                .publish
                .iter()
                .filter(tcp)
                .filter(|publish| publish.alg.is_some())
                .map(|publish| (publish.public, publish.private))
                .collect(),
            reserved: config
                .publish
                .iter()
                .filter(tcp)
                .map(|publish| publish.public)
                .collect(),
            data_ports: masquerade
                .as_ref()
                .map_or(1024..=65535, |masquerade| masquerade.ports.clone()),
            masquerade,
            expectation_timeout_ns: seconds(config.ftp.expectation_timeout),
            policy: Arc::new(config.ftp.policy.clone()),
            published_policies: config
                .publish
                .iter()
                .filter_map(|publish| Some((publish.public, Arc::new(publish.policy.clone()?))))
                .collect(),
            established_timeout_ns: seconds(config.timeouts.tcp_established),
            transitory_timeout_ns: seconds(config.timeouts.tcp_transitory),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MasqueradeSettings {
    pub networks: Vec<Ipv4Net>,
    pub addresses: Vec<Ipv4Addr>,
    pub ports: RangeInclusive<u16>,
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

/// What the ALG did, for the log and the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlgStats {
    pub packets: u64,
    pub emitted: u64,
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    pub expectations: u64,
    pub violations: u64,
    pub drop_malformed: u64,
    pub drop_no_session: u64,
    pub drop_no_port: u64,
    pub drop_stream_error: u64,
    pub drop_ttl: u64,
    pub expectation_install_failed: u64,
    /// Sessions ended by a violation under `reset`.
    pub sessions_reset: u64,
    /// Sessions that switched to TLS (`tls = "pass"`).
    pub sessions_encrypted: u64,
    /// Sessions whose client stream turned out not to be FTP (reset, or passed as plain TCP).
    #[serde(default)]
    pub not_ftp: u64,
    /// Segments the ALG sent again because it had acknowledged them for their receiver.
    pub resent: u64,
    /// Violations by check, in `Check::ALL` order.
    pub violations_by_check: [u64; Check::ALL.len()],
}

impl AlgStats {
    /// Every total by its bare name (`packets`, ...): `gateway stats` shows `alg_<name>`, the
    /// metrics `gateway_ftp_<name>_total`.
    pub fn totals(&self) -> [(&'static str, u64); 16] {
        [
            ("packets", self.packets),
            ("emitted", self.emitted),
            ("sessions_opened", self.sessions_opened),
            ("sessions_closed", self.sessions_closed),
            ("expectations", self.expectations),
            ("violations", self.violations),
            ("drop_malformed", self.drop_malformed),
            ("drop_no_session", self.drop_no_session),
            ("drop_no_port", self.drop_no_port),
            ("drop_stream_error", self.drop_stream_error),
            ("drop_ttl", self.drop_ttl),
            (
                "expectation_install_failed",
                self.expectation_install_failed,
            ),
            ("sessions_reset", self.sessions_reset),
            ("sessions_encrypted", self.sessions_encrypted),
            ("not_ftp", self.not_ftp),
            ("resent", self.resent),
        ]
    }

    /// Violations by check, in `Check::ALL` order.
    pub fn violations(&self) -> impl Iterator<Item = (Check, u64)> {
        Check::ALL.into_iter().zip(self.violations_by_check)
    }

    /// Every counter as `gateway stats` names it (violations by check as
    /// `alg_violation_<check>`).
    pub fn pairs(&self) -> Vec<(String, u64)> {
        self.totals()
            .into_iter()
            .map(|(name, value)| (format!("alg_{name}"), value))
            .chain(
                self.violations()
                    .map(|(check, value)| (format!("alg_violation_{}", check.name()), value)),
            )
            .collect()
    }
}

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
}

struct Connection {
    client: SocketAddrV4,
    client_seen: SocketAddrV4,
    server: SocketAddrV4,
    server_seen: SocketAddrV4,
    core: session::Session,
    /// Largest payload each receiver takes (from the MSS option of its SYN).
    mss_to_client: u16,
    mss_to_server: u16,
    fin_from_client: bool,
    fin_from_server: bool,
    established: bool,
    reset: bool,
    last_seen_ns: u64,
    /// Public endpoints this connection holds in the fast path: its own mapping (masquerade)
    /// and the data ports of its expectations, until those expire.
    held: Vec<(Endpoint, u64)>,
    /// Expectations installed and maybe not used yet, with their expiry.
    expectations: Vec<(ExpectationKey, u64)>,
    policy: Arc<Policy>,
    created_ns: u64,
    /// The last segment from each side (client, server), payload dropped: the template of
    /// what the gateway sends in that side's name (its replies, its RSTs), so their TCP
    /// options (timestamps) are that side's.
    last_from: [Option<TcpPacket>; 2],
}

impl Connection {
    fn closed(&self) -> bool {
        self.reset || (self.fin_from_client && self.fin_from_server)
    }

    fn info(&self, now_ns: u64) -> ControlInfo {
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
        }
    }
}

/// Version of [`SavedTable`]'s format; a file of another version is not restored.
const SAVED_TABLE_VERSION: u32 = 2;

/// The control sessions as saved to disk, so that a restarted agent (adopting a pinned fast
/// path) carries on with them: their translation, FTP state and sequence edits.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SavedTable {
    version: u32,
    /// Which journal continues this snapshot (see `alg::state`): changes saved under another
    /// generation are older than the snapshot.
    pub generation: u64,
    meta: SavedMeta,
    connections: Vec<SavedConnection>,
}

/// The table-wide part of a save.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
struct SavedMeta {
    next_id: u64,
    rng: u64,
    stats: AlgStats,
}

/// What changed in the table since the last [`ControlTable::take_changes`]: the connections
/// as they are now, and those that went.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SavedChanges {
    pub generation: u64,
    meta: SavedMeta,
    changed: Vec<SavedConnection>,
    removed: Vec<u64>,
}

impl SavedTable {
    /// Brings the snapshot up to date with changes saved after it.
    pub fn apply(&mut self, changes: SavedChanges) {
        self.meta = changes.meta;
        let gone: HashSet<u64> = changes
            .removed
            .iter()
            .chain(changes.changed.iter().map(|connection| &connection.id))
            .copied()
            .collect();
        self.connections
            .retain(|connection| !gone.contains(&connection.id));
        self.connections.extend(changes.changed);
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct SavedConnection {
    id: u64,
    client: SocketAddrV4,
    client_seen: SocketAddrV4,
    server: SocketAddrV4,
    server_seen: SocketAddrV4,
    core: session::Session,
    mss_to_client: u16,
    mss_to_server: u16,
    fin_from_client: bool,
    fin_from_server: bool,
    established: bool,
    reset: bool,
    last_seen_ns: u64,
    created_ns: u64,
    held: Vec<(SocketAddrV4, u64)>,
    /// (endpoint, peer, expiry) of each expectation.
    expectations: Vec<(SocketAddrV4, Ipv4Addr, u64)>,
    last_from: [Option<TcpPacket>; 2],
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

/// Connections changed, and removed, since the last [`ControlTable::take_changes`]. Nothing
/// is kept until [`ControlTable::track_changes`]: without a store nobody takes them.
#[derive(Default)]
struct Changes {
    tracking: bool,
    changed: HashSet<u64>,
    removed: Vec<u64>,
}

impl Changes {
    fn changed(&mut self, id: u64) {
        if self.tracking {
            self.changed.insert(id);
        }
    }

    fn removed(&mut self, id: u64) {
        if self.tracking {
            self.changed.remove(&id);
            self.removed.push(id);
        }
    }
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

    /// Everything needed to carry on after a restart, as the snapshot of journal
    /// `generation`. Pending changes are part of it: they are cleared.
    pub fn save(&mut self, generation: u64) -> SavedTable {
        self.changes.changed.clear();
        self.changes.removed.clear();
        SavedTable {
            version: SAVED_TABLE_VERSION,
            generation,
            meta: self.meta(),
            connections: self
                .connections
                .iter()
                .map(|(id, connection)| saved_connection(*id, connection))
                .collect(),
        }
    }

    /// What changed since the last call (or `save`), if anything, as a record of journal
    /// `generation`.
    pub fn take_changes(&mut self, generation: u64) -> Option<SavedChanges> {
        if self.changes.changed.is_empty() && self.changes.removed.is_empty() {
            return None;
        }
        let changed = self
            .changes
            .changed
            .drain()
            .filter_map(|id| Some(saved_connection(id, self.connections.get(&id)?)))
            .collect();
        Some(SavedChanges {
            generation,
            meta: self.meta(),
            changed,
            removed: std::mem::take(&mut self.changes.removed),
        })
    }

    /// From now on, keep what changes for [`ControlTable::take_changes`].
    pub fn track_changes(&mut self) {
        self.changes.tracking = true;
    }

    fn meta(&self) -> SavedMeta {
        SavedMeta {
            next_id: self.next_id,
            rng: self.rng,
            stats: self.stats,
        }
    }
}

fn saved_connection(id: u64, connection: &Connection) -> SavedConnection {
    SavedConnection {
        id,
        client: connection.client,
        client_seen: connection.client_seen,
        server: connection.server,
        server_seen: connection.server_seen,
        core: connection.core.clone(),
        mss_to_client: connection.mss_to_client,
        mss_to_server: connection.mss_to_server,
        fin_from_client: connection.fin_from_client,
        fin_from_server: connection.fin_from_server,
        established: connection.established,
        reset: connection.reset,
        last_seen_ns: connection.last_seen_ns,
        created_ns: connection.created_ns,
        held: connection
            .held
            .iter()
            .map(|(endpoint, until)| (endpoint.socket(), *until))
            .collect(),
        expectations: connection
            .expectations
            .iter()
            .map(|(key, expires)| (key.endpoint.socket(), Ipv4Addr::from(key.peer), *expires))
            .collect(),
        last_from: connection.last_from.clone(),
    }
}

impl ControlTable {
    /// A table from a saved one; policies come from `settings` (the config now in force).
    /// `None` for a save of another format version.
    pub fn restore(settings: AlgSettings, saved: SavedTable) -> Option<ControlTable> {
        if saved.version != SAVED_TABLE_VERSION {
            return None;
        }
        let mut table = ControlTable {
            settings,
            connections: HashMap::new(),
            flows: HashMap::new(),
            live_per_client: HashMap::new(),
            next_id: saved.meta.next_id,
            rng: saved.meta.rng | 1,
            stats: saved.meta.stats,
            refusals_logged: LogLimit::default(),
            changes: Changes::default(),
        };
        for saved in saved.connections {
            let policy = table
                .settings
                .published_policies
                .get(&saved.server_seen)
                .unwrap_or(&table.settings.policy)
                .clone();
            let mut core = saved.core;
            core.set_policy(policy.clone());
            table.flows.insert(
                key(saved.client, saved.server_seen),
                (saved.id, Direction::ClientToServer),
            );
            table.flows.insert(
                key(saved.server, saved.client_seen),
                (saved.id, Direction::ServerToClient),
            );
            if !(saved.reset || (saved.fin_from_client && saved.fin_from_server)) {
                *table.live_per_client.entry(*saved.client.ip()).or_default() += 1;
            }
            table.connections.insert(
                saved.id,
                Connection {
                    client: saved.client,
                    client_seen: saved.client_seen,
                    server: saved.server,
                    server_seen: saved.server_seen,
                    core,
                    mss_to_client: saved.mss_to_client,
                    mss_to_server: saved.mss_to_server,
                    fin_from_client: saved.fin_from_client,
                    fin_from_server: saved.fin_from_server,
                    established: saved.established,
                    reset: saved.reset,
                    last_seen_ns: saved.last_seen_ns,
                    held: saved
                        .held
                        .into_iter()
                        .map(|(endpoint, until)| {
                            (Endpoint::from_socket(endpoint, IPPROTO_TCP), until)
                        })
                        .collect(),
                    expectations: saved
                        .expectations
                        .into_iter()
                        .map(|(endpoint, peer, expires)| {
                            (
                                ExpectationKey {
                                    endpoint: Endpoint::from_socket(endpoint, IPPROTO_TCP),
                                    peer: peer.octets(),
                                },
                                expires,
                            )
                        })
                        .collect(),
                    policy,
                    created_ns: saved.created_ns,
                    last_from: saved.last_from,
                },
            );
        }
        Some(table)
    }

    /// New settings (a reload): new sessions follow them; running sessions keep their
    /// translation and get the policy that now applies to their server for what comes next.
    pub fn set_settings(&mut self, settings: AlgSettings) {
        for connection in self.connections.values_mut() {
            let policy = settings
                .published_policies
                .get(&connection.server_seen)
                .unwrap_or(&settings.policy)
                .clone();
            connection.core.set_policy(policy.clone());
            connection.policy = policy;
        }
        self.settings = settings;
    }

    /// What the control sessions owe (bytes the gateway acknowledged for a receiver that has
    /// not acknowledged them yet), to send again: called on a timer.
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
        if self.connections.contains_key(&id) {
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
        let Some(connection) = self.connections.remove(&id) else {
            return;
        };
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
        let policy = self
            .settings
            .published_policies
            .get(&destination)
            .unwrap_or(&self.settings.policy)
            .clone();
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

    /// The public endpoint of a masqueraded client's control connection: its existing
    /// mapping, else its own port on its public address if free, else random ports.
    fn masquerade_mapping(
        &mut self,
        client: SocketAddrV4,
        maps: &mut dyn AlgMaps,
    ) -> Option<SocketAddrV4> {
        let masquerade = self.settings.masquerade.as_ref()?;
        let private = Endpoint::from_socket(client, IPPROTO_TCP);
        if let Some(public) = maps.mapping(private) {
            return Some(public.socket());
        }
        // The same public address the fast path would choose for this private address.
        let count = u32::try_from(masquerade.addresses.len()).ok()?;
        let index = public_address_index(client.ip().octets(), count);
        let address = *masquerade.addresses.get(index)?;
        let ports = masquerade.ports.clone();
        let public = allocate(
            &mut self.rng,
            maps,
            address,
            client.port(),
            &ports,
            &self.settings.reserved,
            private,
        )?;
        maps.record_mapping(private, Endpoint::from_socket(public, IPPROTO_TCP));
        Some(public)
    }

    fn on_segment(
        &mut self,
        id: u64,
        direction: Direction,
        mut packet: TcpPacket,
        now_ns: u64,
        maps: &mut dyn AlgMaps,
    ) -> Vec<Outgoing> {
        // The payload goes to the core; the headers stay as the template of what is sent,
        // so nothing on this path copies the payload.
        let payload = std::mem::take(&mut packet.payload);
        let Some(connection) = self.connections.get_mut(&id) else {
            return Vec::new();
        };
        if packet.ttl <= 1 {
            // The kernel would answer with time-exceeded; the ALG only drops it.
            self.stats.drop_ttl += 1;
            return Vec::new();
        }
        connection.last_seen_ns = now_ns;
        connection.last_from[side(direction)] = Some(packet.clone());
        if packet.flags & flags::SYN != 0 {
            let mss = packet.mss().unwrap_or(DEFAULT_MSS);
            match direction {
                Direction::ClientToServer => connection.mss_to_client = mss,
                Direction::ServerToClient => connection.mss_to_server = mss,
            }
        } else {
            connection.established = true;
        }
        if packet.flags & flags::RST != 0 {
            connection.reset = true;
        }
        if packet.flags & flags::FIN != 0 {
            match direction {
                Direction::ClientToServer => connection.fin_from_client = true,
                Direction::ServerToClient => connection.fin_from_server = true,
            }
        }

        let segment = TcpSegment {
            seq: packet.seq,
            ack: packet.ack,
            flags: packet.flags,
            window: packet.window,
            window_scale: packet.window_scale(),
            sack: packet.sack(),
            payload,
        };
        let expectation_until = now_ns.saturating_add(self.settings.expectation_timeout_ns);
        let pending = connection
            .expectations
            .iter()
            .filter(|(_, expires)| *expires >= now_ns)
            .map(|(key, _)| *key)
            .collect();
        let mut ports = DataPorts {
            rng: &mut self.rng,
            maps: &mut *maps,
            settings: &self.settings,
            claimed: Vec::new(),
            pending,
            announced: 0,
            max_pending: connection.policy.max_pending_expectations,
        };
        let actions = match connection.core.on_segment(direction, segment, &mut ports) {
            Ok(actions) => actions,
            Err(err) => {
                self.stats.drop_stream_error += 1;
                let level_error = !matches!(err, SessionError::NotStarted);
                if level_error {
                    tracing::warn!(
                        client = %connection.client, server = %connection.server,
                        "ftp control stream refused: {err}"
                    );
                }
                return Vec::new();
            }
        };
        let claimed = std::mem::take(&mut ports.claimed);
        connection.held.extend(
            claimed
                .into_iter()
                .map(|public| (public, expectation_until)),
        );

        let mut outgoing = Vec::new();
        for action in actions {
            match action {
                Action::InstallExpectation(expectation) => {
                    let ends = expect::Ends {
                        client: connection.client,
                        client_seen: connection.client_seen,
                        server: connection.server,
                        server_seen: connection.server_seen,
                    };
                    let (key, entry) =
                        expect::entry(&ends, direction, &expectation, expectation_until);
                    self.stats.expectations += 1;
                    if maps.expect(key, entry) {
                        connection.expectations.push((key, expectation_until));
                    } else {
                        self.stats.expectation_install_failed += 1;
                    }
                    tracing::debug!(
                        peer = %expectation.peer, public = %expectation.public,
                        private = %expectation.private, "expectation installed"
                    );
                }
                Action::InstallOutboundExpectation(expectation) => {
                    let key = ExpectationKey {
                        endpoint: Endpoint::from_socket(expectation.to, IPPROTO_TCP),
                        peer: expectation.opener.octets(),
                    };
                    let entry = ExpectationEntry {
                        target: Endpoint::new(expectation.source.octets(), [0; 2], IPPROTO_TCP),
                        kind: ExpectationKind::Outbound as u8,
                        _pad: [0; 3],
                        source: [0; 4],
                        expires_ns: expectation_until,
                    };
                    self.stats.expectations += 1;
                    if maps.expect(key, entry) {
                        connection.expectations.push((key, expectation_until));
                    } else {
                        self.stats.expectation_install_failed += 1;
                    }
                }
                Action::Emit { direction, segment } => {
                    emit(connection, &packet, direction, segment, &mut outgoing);
                }
                Action::Violation {
                    direction,
                    check,
                    reason,
                    line,
                    user,
                    action,
                } => {
                    self.stats.violations += 1;
                    self.stats.violations_by_check[check_index(check)] += 1;
                    tracing::warn!(
                        client = %connection.client,
                        server = %connection.server,
                        user = user.as_deref().unwrap_or("-"),
                        from = if direction == Direction::ClientToServer { "client" } else { "server" },
                        line = %String::from_utf8_lossy(&line).trim_end(),
                        check = check.name(),
                        action = action.map_or("reported", |action| match action {
                            ViolationAction::Drop => "drop",
                            ViolationAction::Reject => "reject",
                            ViolationAction::Reset => "reset",
                        }),
                        "ftp policy violation: {reason}"
                    );
                }
                Action::Encrypted => {
                    self.stats.sessions_encrypted += 1;
                    tracing::info!(
                        client = %connection.client,
                        server = %connection.server,
                        "ftp control session switched to TLS: no longer inspected, its data connections are not opened by the ALG"
                    );
                }
                Action::NotFtp { reason, passed } => {
                    self.stats.not_ftp += 1;
                    tracing::warn!(
                        client = %connection.client,
                        server = %connection.server,
                        outcome = if passed { "passed as plain TCP" } else { "reset" },
                        "ftp control session is not FTP: {reason}; nothing in it is rewritten or expected from now on"
                    );
                    if passed {
                        for (key, _) in connection.expectations.drain(..) {
                            maps.unexpect(key);
                        }
                    }
                }
                Action::Terminate => {
                    connection.reset = true;
                    self.stats.sessions_reset += 1;
                    for (key, _) in connection.expectations.drain(..) {
                        maps.unexpect(key);
                    }
                }
            }
        }
        self.stats.emitted += outgoing.len() as u64;
        outgoing
    }
}

/// Builds the packets of one emitted segment: translated addresses, the segment's fields,
/// and its payload cut to the receiver's MSS.
fn emit(
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

fn side(direction: Direction) -> usize {
    match direction {
        Direction::ClientToServer => 0,
        Direction::ServerToClient => 1,
    }
}

fn check_index(check: Check) -> usize {
    Check::ALL
        .iter()
        .position(|candidate| *candidate == check)
        .unwrap_or(0)
}

fn key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
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

/// Public ports for announced data endpoints, claimed in the fast path as the ALG's.
struct DataPorts<'a> {
    rng: &'a mut u64,
    maps: &'a mut dyn AlgMaps,
    settings: &'a AlgSettings,
    claimed: Vec<Endpoint>,
    /// Expectations this session installed and that have not expired (some may have been
    /// used since), those announced in this segment, and the policy's limit.
    pending: Vec<ExpectationKey>,
    announced: usize,
    max_pending: usize,
}

impl PortAllocator for DataPorts<'_> {
    fn may_expect(&mut self) -> bool {
        // Only the ones still in the map count: a used expectation is gone from it.
        let maps = &mut *self.maps;
        self.pending.retain(|key| maps.expectation_pending(*key));
        if self.pending.len() + self.announced >= self.max_pending {
            return false;
        }
        self.announced += 1;
        true
    }

    fn allocate(&mut self, public: Ipv4Addr, private: SocketAddrV4) -> Option<u16> {
        let mut owner = Endpoint::from_socket(private, IPPROTO_TCP);
        owner.flags = endpoint_flags::ALG_CLAIM;
        let ports = self
            .settings
            .masquerade
            .as_ref()
            .filter(|masquerade| masquerade.addresses.contains(&public))
            .map_or(self.settings.data_ports.clone(), |masquerade| {
                masquerade.ports.clone()
            });
        let socket = allocate(
            self.rng,
            self.maps,
            public,
            private.port(),
            &ports,
            &self.settings.reserved,
            owner,
        )?;
        self.claimed
            .push(Endpoint::from_socket(socket, IPPROTO_TCP));
        Some(socket.port())
    }
}

/// Claims a public port on `address` for `owner`: `preferred` if it is in range and free,
/// else random ports in range, `PORT_ALLOCATION_TRIES` probes in all: the fast path's
/// sequence (`PortCandidates`).
fn allocate(
    rng: &mut u64,
    maps: &mut dyn AlgMaps,
    address: Ipv4Addr,
    preferred: u16,
    ports: &RangeInclusive<u16>,
    reserved: &HashSet<SocketAddrV4>,
    owner: Endpoint,
) -> Option<SocketAddrV4> {
    let candidates = PortCandidates::new(*ports.start(), *ports.end(), preferred);
    for attempt in 0..PORT_ALLOCATION_TRIES {
        let port = candidates.candidate(attempt, || next_random(rng));
        let candidate = SocketAddrV4::new(address, port);
        if reserved.contains(&candidate) {
            continue;
        }
        if maps.claim(Endpoint::from_socket(candidate, IPPROTO_TCP), owner) {
            return Some(candidate);
        }
    }
    None
}

/// xorshift64: port choice needs to be unpredictable to outsiders only loosely (the seed
/// comes from the OS); it must not repeat in a short cycle.
fn next_random(state: &mut u64) -> u32 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (x >> 32) as u32
}

mod expect;
#[cfg(test)]
mod tests;
