//! Control sessions held for the other node of an HA pair: a standby's copy of its active
//! node's table, kept up to date by the state sync (`ha::sync`) and not acted on (no timer,
//! no resend, no map entry of its own): nothing is punted to a standby. On promotion the
//! node's ALG takes them over ([`ControlTable::take_over`]); on demotion it holds its own
//! aside ([`ControlTable::hold_aside`]) until the new active node's snapshot replaces them.
//!
//! Times in a connection are CLOCK_MONOTONIC nanoseconds of the node that wrote them: the
//! sync moves them onto the receiver's clock ([`HeldTable::apply`]'s `clock_shift_ns`).

use std::collections::HashMap;

use super::{
    ControlTable,
    connection::Connection,
    state::{ChangeLog, Connections, SAVED_TABLE_VERSION, SavedChanges, SavedMeta, SavedTable},
};

/// The control sessions a standby holds for its active node.
#[derive(Default)]
pub struct HeldTable {
    meta: Option<SavedMeta>,
    connections: HashMap<u64, Connection>,
}

impl HeldTable {
    /// Brings the held sessions up to date with what the active node changed; its times, on
    /// the sender's clock, are moved by `clock_shift_ns` (receiver's now minus sender's).
    /// Returns the records applied (connections written and removed).
    pub fn apply(&mut self, changes: SavedChanges, clock_shift_ns: i64) -> u64 {
        let records = changes.records();
        self.meta = Some(changes.meta);
        // One that this version cannot read is lost, not left as it was before the change
        // (sequence edits older than what the peers saw), as in a journal replay.
        for id in changes.removed.iter().chain(&changes.changed.unreadable) {
            self.connections.remove(id);
        }
        for mut connection in changes.changed.read {
            shift_clock(&mut connection, clock_shift_ns);
            self.connections.insert(connection.id, connection);
        }
        records
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// As a saved table (what a restore takes); `None` when nothing was ever received.
    fn into_saved(self) -> Option<SavedTable> {
        Some(SavedTable {
            version: SAVED_TABLE_VERSION,
            generation: 0,
            meta: self.meta?,
            connections: Connections::of(self.connections.into_values().collect()),
        })
    }
}

/// Moves a connection's times by `shift` nanoseconds (`u64::MAX`, "for ever", stays).
fn shift_clock(connection: &mut Connection, shift: i64) {
    let moved = |time: u64| {
        if time == u64::MAX {
            return time;
        }
        (i128::from(time) + i128::from(shift)).clamp(0, i128::from(u64::MAX - 1)) as u64
    };
    connection.last_seen_ns = moved(connection.last_seen_ns);
    connection.created_ns = moved(connection.created_ns);
    for (_, until) in &mut connection.held {
        *until = moved(*until);
    }
    for (_, expires) in &mut connection.expectations {
        *expires = moved(*expires);
    }
}

impl ControlTable {
    /// Promotion: the held sessions become this table (their policies from this node's
    /// configuration, as at a restore); this node's own counters stay. What this table held
    /// before goes (it was stale: the other node was active meanwhile). Returns how many
    /// sessions were taken over, `None` when `held` never received anything (the table is
    /// left as it was). The fast path's pure-ACK entries are the caller's to adopt
    /// (`adopt_control_acks`), before the programs attach.
    pub fn take_over(&mut self, held: HeldTable) -> Option<usize> {
        let saved = held.into_saved()?;
        let mut table = ControlTable::restore(self.settings.clone(), saved)?;
        table.stats = self.stats;
        // The logs that were tracked go on: whatever they had is now removed or changed.
        table.changes = std::mem::take(&mut self.changes);
        for id in self.connections.keys() {
            if !table.connections.contains_key(id) {
                table.changes.removed(*id);
            }
        }
        for id in table.connections.keys() {
            table.changes.changed(*id);
        }
        let taken = table.connections.len();
        *self = table;
        Some(taken)
    }

    /// Demotion: this table's sessions are held aside (acted on by nobody) and the table is
    /// emptied without touching the fast path's maps (their entries are the new active
    /// node's to keep, and come from it). The sync's log stops; the store's records the
    /// removals.
    pub fn hold_aside(&mut self) -> HeldTable {
        let connections = std::mem::take(&mut self.connections);
        for id in connections.keys() {
            self.changes.removed(*id);
        }
        self.untrack_changes(ChangeLog::Sync);
        self.flows.clear();
        self.live_per_client.clear();
        HeldTable {
            meta: Some(self.meta()),
            connections,
        }
    }
}
