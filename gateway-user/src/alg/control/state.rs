//! The control table as saved for the agent after this one (see `alg::store`): the
//! connections as they are (`Connection` is serializable), the table-wide counters, and what
//! changed since the last save. A connection's policy is not saved: a restore gives each the
//! one the configuration then in force has for its server, as a reload does.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use gateway_common::{Endpoint, ExpectationKey, IPPROTO_TCP};
use gateway_ftp::session::Direction;
use serde::{Deserialize as _, Deserializer, Serializer};

use super::{AlgSettings, AlgStats, ControlTable, connection::Connection, key};

/// Version of [`SavedTable`]'s format. 3: the sessions are saved without their policy.
pub(super) const SAVED_TABLE_VERSION: u32 = 3;
/// The oldest version still restored: 2 (each session with a copy of its policy, which is
/// ignored) is read as 3 is, so that an upgrade across a pinned restart keeps the sessions.
const OLDEST_RESTORED_VERSION: u32 = 2;

/// The control sessions as saved to disk, so that a restarted agent (adopting a pinned fast
/// path) carries on with them: their translation, FTP state and sequence edits.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SavedTable {
    pub(super) version: u32,
    /// Which journal continues this snapshot (see `alg::state`): changes saved under another
    /// generation are older than the snapshot.
    pub generation: u64,
    pub(super) meta: SavedMeta,
    pub(super) connections: Connections,
}

/// The table-wide part of a save.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(super) struct SavedMeta {
    next_id: u64,
    rng: u64,
    stats: AlgStats,
}

/// What changed in the table since the last [`ControlTable::take_changes`]: the connections
/// as they are now, and those that went.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SavedChanges {
    pub generation: u64,
    pub(super) meta: SavedMeta,
    pub(super) changed: Connections,
    pub(super) removed: Vec<u64>,
}

impl SavedChanges {
    /// The records this carries for the HA sync's counters: connections changed (or
    /// unreadable) and removed.
    pub fn records(&self) -> u64 {
        (self.changed.read.len() + self.changed.unreadable.len() + self.removed.len()) as u64
    }

    /// Connections changed (read).
    pub fn connections(&self) -> usize {
        self.changed.read.len()
    }

    /// Cut into parts of at most `per_part` connections each (the removals go with the
    /// first), so that a large change fits the sync's frames.
    pub fn split(self, per_part: usize) -> Vec<SavedChanges> {
        let per_part = per_part.max(1);
        if self.changed.read.len() <= per_part {
            return vec![self];
        }
        let SavedChanges {
            generation,
            meta,
            changed,
            mut removed,
        } = self;
        let mut removed_unreadable = changed.unreadable;
        changed
            .read
            .chunks(per_part)
            .map(|chunk| SavedChanges {
                generation,
                meta,
                changed: Connections {
                    read: chunk.to_vec(),
                    unreadable: std::mem::take(&mut removed_unreadable),
                },
                removed: std::mem::take(&mut removed),
            })
            .collect()
    }
}

impl SavedTable {
    /// Brings the snapshot up to date with changes saved after it.
    pub fn apply(&mut self, changes: SavedChanges) {
        self.meta = changes.meta;
        // A connection changed in a line that this version cannot read is lost, not left
        // as it was before the change (sequence edits older than what the peers saw).
        let gone: HashSet<u64> = changes
            .removed
            .iter()
            .chain(&changes.changed.unreadable)
            .chain(changes.changed.read.iter().map(|connection| &connection.id))
            .copied()
            .collect();
        self.connections
            .read
            .retain(|connection| !gone.contains(&connection.id));
        self.connections.read.extend(changes.changed.read);
    }
}

/// Who takes the table's changes: the on-disk store (journal) and the HA state sync. Each
/// has its own log, so that neither takes what the other has not seen yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeLog {
    Store = 0,
    Sync = 1,
}

/// Connections changed, and removed, since the last [`ControlTable::take_changes`] of each
/// log. Nothing is kept for a log until [`ControlTable::track_changes`]: without a store (or a
/// standby to stream to) nobody takes them.
#[derive(Default)]
pub(super) struct Changes {
    logs: [Option<Pending>; 2],
}

#[derive(Default)]
pub(super) struct Pending {
    pub changed: HashSet<u64>,
    pub removed: Vec<u64>,
}

impl Changes {
    pub fn changed(&mut self, id: u64) {
        for log in self.logs.iter_mut().flatten() {
            log.changed.insert(id);
        }
    }

    pub fn removed(&mut self, id: u64) {
        for log in self.logs.iter_mut().flatten() {
            log.changed.remove(&id);
            log.removed.push(id);
        }
    }

    /// What `log` has pending (`None`: not tracked).
    #[cfg(test)]
    pub fn log(&self, log: ChangeLog) -> Option<&Pending> {
        self.logs[log as usize].as_ref()
    }

    fn log_mut(&mut self, log: ChangeLog) -> Option<&mut Pending> {
        self.logs[log as usize].as_mut()
    }
}

impl ControlTable {
    /// Everything needed to carry on after a restart, as the snapshot of journal
    /// `generation`. The store's pending changes are part of it: they are cleared.
    pub fn save(&mut self, generation: u64) -> SavedTable {
        if let Some(pending) = self.changes.log_mut(ChangeLog::Store) {
            *pending = Pending::default();
        }
        SavedTable {
            version: SAVED_TABLE_VERSION,
            generation,
            meta: self.meta(),
            connections: Connections::of(self.connections.values().cloned().collect()),
        }
    }

    /// What changed since `log`'s last call (or its snapshot), if anything, as a record of
    /// journal `generation` (0 for the sync).
    pub fn take_changes(&mut self, log: ChangeLog, generation: u64) -> Option<SavedChanges> {
        let meta = self.meta();
        let pending = self.changes.log_mut(log)?;
        if pending.changed.is_empty() && pending.removed.is_empty() {
            return None;
        }
        let changed = Connections::of(
            pending
                .changed
                .drain()
                .filter_map(|id| self.connections.get(&id).cloned())
                .collect(),
        );
        Some(SavedChanges {
            generation,
            meta,
            changed,
            removed: std::mem::take(&mut pending.removed),
        })
    }

    /// From now on, keep what changes for `log`'s [`ControlTable::take_changes`].
    pub fn track_changes(&mut self, log: ChangeLog) {
        let pending = &mut self.changes.logs[log as usize];
        if pending.is_none() {
            *pending = Some(Pending::default());
        }
    }

    /// Keep nothing more for `log`, and forget what it had pending (a snapshot will cover it).
    pub fn untrack_changes(&mut self, log: ChangeLog) {
        self.changes.logs[log as usize] = None;
    }

    /// The whole table for the HA sync, in parts of at most `per_part` connections (the first
    /// part carries the removals of nothing; every part the table-wide counters), after which
    /// the sync's log starts afresh: what changes from now on comes as changes.
    pub fn sync_snapshot(&mut self, per_part: usize) -> Vec<SavedChanges> {
        self.changes.logs[ChangeLog::Sync as usize] = Some(Pending::default());
        let meta = self.meta();
        let all: Vec<Connection> = self.connections.values().cloned().collect();
        let mut parts: Vec<SavedChanges> = all
            .chunks(per_part.max(1))
            .map(|chunk| SavedChanges {
                generation: 0,
                meta,
                changed: Connections::of(chunk.to_vec()),
                removed: Vec::new(),
            })
            .collect();
        if parts.is_empty() {
            parts.push(SavedChanges {
                generation: 0,
                meta,
                changed: Connections::of(Vec::new()),
                removed: Vec::new(),
            });
        }
        parts
    }

    pub(super) fn meta(&self) -> SavedMeta {
        SavedMeta {
            next_id: self.next_id,
            rng: self.rng,
            stats: self.stats,
        }
    }

    /// A table from a saved one; policies come from `settings` (the config now in force).
    /// `None` for a save of a format version this one does not read.
    pub fn restore(settings: AlgSettings, saved: SavedTable) -> Option<ControlTable> {
        if !(OLDEST_RESTORED_VERSION..=SAVED_TABLE_VERSION).contains(&saved.version) {
            return None;
        }
        let mut table = ControlTable {
            next_id: saved.meta.next_id,
            stats: saved.meta.stats,
            ..ControlTable::new(settings, saved.meta.rng)
        };
        for mut connection in saved.connections.read {
            connection.follow(table.settings.policy_for(connection.server_seen));
            let id = connection.id;
            table.flows.insert(
                key(connection.client, connection.server_seen),
                (id, Direction::ClientToServer),
            );
            table.flows.insert(
                key(connection.server, connection.client_seen),
                (id, Direction::ServerToClient),
            );
            if !connection.closed() {
                *table
                    .live_per_client
                    .entry(*connection.client.ip())
                    .or_default() += 1;
            }
            table.connections.insert(id, connection);
        }
        Some(table)
    }
}

/// Saved connections. Read back one by one: one this version cannot read (a bad file, or a
/// format it does not know) gets a log line and costs only itself.
pub(super) struct Connections {
    pub(super) read: Vec<Connection>,
    /// The ids of those that could not be read (where the id could).
    pub(super) unreadable: Vec<u64>,
}

impl Connections {
    pub(super) fn of(read: Vec<Connection>) -> Connections {
        Connections {
            read,
            unreadable: Vec::new(),
        }
    }
}

impl serde::Serialize for Connections {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.read.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Connections {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Connections, D::Error> {
        let mut connections = Connections::of(Vec::new());
        for value in Vec::<serde_json::Value>::deserialize(deserializer)? {
            let id = value.get("id").and_then(serde_json::Value::as_u64);
            match serde_json::from_value::<Connection>(value) {
                Ok(connection) => connections.read.push(connection),
                Err(err) => {
                    tracing::warn!(
                        id = id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
                        "saved ftp control session unreadable: not restored: {err}"
                    );
                    connections.unreadable.extend(id);
                }
            }
        }
        Ok(connections)
    }
}

/// Held public endpoints as `(address:port, until)`: all TCP.
pub(super) mod held {
    use super::*;

    pub fn serialize<S: Serializer>(
        held: &[(Endpoint, u64)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            held.iter()
                .map(|(endpoint, until)| (endpoint.socket(), until)),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(Endpoint, u64)>, D::Error> {
        Ok(Vec::<(SocketAddrV4, u64)>::deserialize(deserializer)?
            .into_iter()
            .map(|(endpoint, until)| (Endpoint::from_socket(endpoint, IPPROTO_TCP), until))
            .collect())
    }
}

/// Expectations as `(address:port, peer, expiry)`: all TCP.
pub(super) mod expectations {
    use super::*;

    pub fn serialize<S: Serializer>(
        expectations: &[(ExpectationKey, u64)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            expectations
                .iter()
                .map(|(key, expires)| (key.endpoint.socket(), Ipv4Addr::from(key.peer), expires)),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(ExpectationKey, u64)>, D::Error> {
        Ok(
            Vec::<(SocketAddrV4, Ipv4Addr, u64)>::deserialize(deserializer)?
                .into_iter()
                .map(|(endpoint, peer, expires)| {
                    let key = ExpectationKey {
                        endpoint: Endpoint::from_socket(endpoint, IPPROTO_TCP),
                        peer: peer.octets(),
                    };
                    (key, expires)
                })
                .collect(),
        )
    }
}
