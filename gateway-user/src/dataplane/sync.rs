//! The fast path's state as the HA state sync ([`crate::ha::sync`]) carries it: the entries
//! an established flow depends on (masquerade mappings and their port claims, the
//! address-dependent filtering entries, both sessions of every connection, expectations),
//! read on the active node and written on the standby.
//!
//! Timestamps stay in this node's CLOCK_MONOTONIC here; the wire carries them relative to
//! the sender's "now" (two machines' monotonic clocks have nothing in common).
//!
//! What changed comes from two places: the fast path names the entries it creates, changes
//! and removes in its `SYNC_EVENTS` ring (`gateway_common::sync_event`), and the agent's own
//! writes here (the ALG's expectations and claims, the sweep's removals) note theirs in
//! [`SyncChanges`]. [`Dataplane::take_changes`] hands both over.

use aya::maps::MapError;
use gateway_common::{
    Counter, Endpoint, ExpectationEntry, ExpectationKey, FlowKey, PeerKey, Session, names,
    sync_event::{PrivateEndpoint, PublicEndpoint, SyncEvent, SyncTable},
};

use super::{Dataplane, DataplaneError, map_error};

/// Changes the agent made itself, and whether the sync wants them at all.
#[derive(Debug, Default)]
pub struct SyncChanges {
    enabled: bool,
    touched: Vec<SyncedKey>,
    /// Something changed that no key names (a flush): the next look must be a full walk.
    walk_due: bool,
    /// `sync_event_lost` when last looked at.
    lost_seen: u64,
}

impl SyncChanges {
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub(super) fn touched(&mut self, key: SyncedKey) {
        if self.enabled {
            self.touched.push(key);
        }
    }

    pub(super) fn walk_due(&mut self) {
        self.walk_due = self.enabled;
    }
}

/// What [`Dataplane::take_changes`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// Events the fast path wrote.
    pub events: u64,
    /// Whether the keys are not the whole story (events lost, a flush): walk everything.
    pub walk_due: bool,
}

/// One entry of a synced table, with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncedEntry {
    /// `SESSIONS`: one direction of a connection.
    Session(FlowKey, Session),
    /// `MASQ_BY_PRIVATE`: a private endpoint's public mapping, reused by its connections.
    ByPrivate(Endpoint, Endpoint),
    /// `MASQ_BY_PUBLIC`: the claim of a public endpoint (its owner).
    ByPublic(Endpoint, Endpoint),
    /// `MASQ_PEERS`: a remote a mapping sent to (address-dependent filtering), and when.
    Peer(PeerKey, u64),
    /// `EXPECTATIONS`: a data connection announced and not opened yet.
    Expectation(ExpectationKey, ExpectationEntry),
}

/// Which entry: the key of a synced table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncedKey {
    Session(FlowKey),
    ByPrivate(Endpoint),
    ByPublic(Endpoint),
    Peer(PeerKey),
    Expectation(ExpectationKey),
}

impl SyncedEntry {
    pub fn key(&self) -> SyncedKey {
        match *self {
            SyncedEntry::Session(key, _) => SyncedKey::Session(key),
            SyncedEntry::ByPrivate(key, _) => SyncedKey::ByPrivate(key),
            SyncedEntry::ByPublic(key, _) => SyncedKey::ByPublic(key),
            SyncedEntry::Peer(key, _) => SyncedKey::Peer(key),
            SyncedEntry::Expectation(key, _) => SyncedKey::Expectation(key),
        }
    }
}

/// The entry an event names, if its table is one this agent knows.
fn event_key(event: &SyncEvent) -> Option<SyncedKey> {
    Some(match SyncTable::try_from(event.table).ok()? {
        SyncTable::Session => SyncedKey::Session(event.key_as::<FlowKey>()?),
        SyncTable::ByPrivate => SyncedKey::ByPrivate(event.key_as::<PrivateEndpoint>()?.0),
        SyncTable::ByPublic => SyncedKey::ByPublic(event.key_as::<PublicEndpoint>()?.0),
        SyncTable::Peer => SyncedKey::Peer(event.key_as::<PeerKey>()?),
        SyncTable::Expectation => SyncedKey::Expectation(event.key_as::<ExpectationKey>()?),
    })
}

impl Dataplane {
    /// Turns the change events on or off (the fast path's `NatConfig::sync_events` with
    /// them).
    pub fn set_sync_events(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.sync_changes.enabled = on;
        let mut config = self
            .maps
            .nat_config
            .get(&0, 0)
            .map_err(map_error(names::NAT_CONFIG))?;
        config.sync_events = u32::from(on);
        self.maps
            .nat_config
            .set(0, config, 0)
            .map_err(map_error(names::NAT_CONFIG))
    }

    /// Moves the keys of what changed since the last call into `keys` (in no order, maybe
    /// repeated): the fast path's events, then the agent's own changes.
    pub fn take_changes(&mut self, keys: &mut Vec<SyncedKey>) -> Changes {
        let mut changes = Changes::default();
        while let Some(record) = self.maps.sync_events.next() {
            changes.events += 1;
            if record.len() < size_of::<SyncEvent>() {
                changes.walk_due = true;
                continue;
            }
            // SAFETY: at least `SyncEvent`'s size, which is plain bytes.
            let event = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<SyncEvent>()) };
            match event_key(&event) {
                Some(key) => keys.push(key),
                None => changes.walk_due = true,
            }
        }
        keys.append(&mut self.sync_changes.touched);
        let lost = self
            .maps
            .stats
            .get(&(Counter::SyncEventLost as u32), 0)
            .map(|values| values.iter().sum::<u64>())
            .unwrap_or(self.sync_changes.lost_seen);
        changes.walk_due |=
            std::mem::take(&mut self.sync_changes.walk_due) || lost != self.sync_changes.lost_seen;
        self.sync_changes.lost_seen = lost;
        changes
    }

    /// The entry `key` names, as it is now; `None` when it is gone.
    pub fn synced_entry(&self, key: SyncedKey) -> Option<SyncedEntry> {
        let maps = &self.maps;
        match key {
            SyncedKey::Session(key) => {
                Some(SyncedEntry::Session(key, maps.sessions.get(&key, 0).ok()?))
            }
            SyncedKey::ByPrivate(key) => Some(SyncedEntry::ByPrivate(
                key,
                maps.masq_by_private.get(&key, 0).ok()?,
            )),
            SyncedKey::ByPublic(key) => Some(SyncedEntry::ByPublic(
                key,
                maps.masq_by_public.get(&key, 0).ok()?,
            )),
            SyncedKey::Peer(key) => {
                Some(SyncedEntry::Peer(key, maps.masq_peers.get(&key, 0).ok()?))
            }
            SyncedKey::Expectation(key) => Some(SyncedEntry::Expectation(
                key,
                maps.expectations.get(&key, 0).ok()?,
            )),
        }
    }

    /// Every entry of the synced tables. Entries that vanish under the iteration (the fast
    /// path and the LRU evict) are skipped.
    pub fn synced_entries(&self) -> Vec<SyncedEntry> {
        let maps = &self.maps;
        let sessions = maps.sessions.iter().flatten();
        let sessions = sessions.map(|(key, value)| SyncedEntry::Session(key, value));
        let by_private = maps.masq_by_private.iter().flatten();
        let by_private = by_private.map(|(key, value)| SyncedEntry::ByPrivate(key, value));
        let by_public = maps.masq_by_public.iter().flatten();
        let by_public = by_public.map(|(key, value)| SyncedEntry::ByPublic(key, value));
        let peers = maps.masq_peers.iter().flatten();
        let peers = peers.map(|(key, value)| SyncedEntry::Peer(key, value));
        let expectations = maps.expectations.iter().flatten();
        let expectations = expectations.map(|(key, value)| SyncedEntry::Expectation(key, value));
        // Claims before the mappings and sessions that name them.
        by_public
            .chain(by_private)
            .chain(peers)
            .chain(sessions)
            .chain(expectations)
            .collect()
    }

    /// The keys of every entry of the synced tables.
    pub fn synced_keys(&self) -> Vec<SyncedKey> {
        let maps = &self.maps;
        let sessions = maps.sessions.keys().flatten().map(SyncedKey::Session);
        let by_private = maps.masq_by_private.keys().flatten();
        let by_public = maps.masq_by_public.keys().flatten();
        let peers = maps.masq_peers.keys().flatten().map(SyncedKey::Peer);
        let expectations = maps.expectations.keys().flatten();
        sessions
            .chain(by_private.map(SyncedKey::ByPrivate))
            .chain(by_public.map(SyncedKey::ByPublic))
            .chain(peers)
            .chain(expectations.map(SyncedKey::Expectation))
            .collect()
    }

    /// Writes an entry the active node sent (replacing what is there).
    pub fn write_synced(&mut self, entry: SyncedEntry) -> Result<(), DataplaneError> {
        let maps = &mut self.maps;
        match entry {
            SyncedEntry::Session(key, value) => maps
                .sessions
                .insert(key, value, 0)
                .map_err(map_error(names::SESSIONS)),
            SyncedEntry::ByPrivate(key, value) => maps
                .masq_by_private
                .insert(key, value, 0)
                .map_err(map_error(names::MASQ_BY_PRIVATE)),
            SyncedEntry::ByPublic(key, value) => maps
                .masq_by_public
                .insert(key, value, 0)
                .map_err(map_error(names::MASQ_BY_PUBLIC)),
            SyncedEntry::Peer(key, value) => maps
                .masq_peers
                .insert(key, value, 0)
                .map_err(map_error(names::MASQ_PEERS)),
            SyncedEntry::Expectation(key, value) => maps
                .expectations
                .insert(key, value, 0)
                .map_err(map_error(names::EXPECTATIONS)),
        }
    }

    /// Removes an entry the active node removed; one that is not there is no error.
    pub fn remove_synced(&mut self, key: SyncedKey) -> Result<(), DataplaneError> {
        let maps = &mut self.maps;
        let (removed, name) = match key {
            SyncedKey::Session(key) => (maps.sessions.remove(&key), names::SESSIONS),
            SyncedKey::ByPrivate(key) => {
                (maps.masq_by_private.remove(&key), names::MASQ_BY_PRIVATE)
            }
            SyncedKey::ByPublic(key) => (maps.masq_by_public.remove(&key), names::MASQ_BY_PUBLIC),
            SyncedKey::Peer(key) => (maps.masq_peers.remove(&key), names::MASQ_PEERS),
            SyncedKey::Expectation(key) => (maps.expectations.remove(&key), names::EXPECTATIONS),
        };
        match removed {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
            {
                Ok(())
            }
            Err(err) => Err(map_error(name)(err)),
        }
    }
}
