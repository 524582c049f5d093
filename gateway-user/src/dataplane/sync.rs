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

use aya::{Pod, maps::MapError};
use gateway_common::{
    Counter, Endpoint, ExpectationEntry, ExpectationKey, FlowKey, PeerKey, Session, names,
    sync_event::{PrivateEndpoint, PublicEndpoint, SyncEvent, SyncTable},
};

use super::{
    Dataplane, DataplaneError, map_error,
    maps::{Maps, Table},
};

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

/// One of the synced tables: its map, its name (for errors), and its variants in
/// [`SyncedKey`] and [`SyncedEntry`]. What the sync does to an entry is written once, generic
/// over the table ([`KeyOp`], [`EntryOp`]); [`SyncedKey::on_table`] and
/// [`SyncedEntry::on_table`] are the one place a key or an entry is matched to its table.
trait SyncedTable: 'static {
    type Key: Pod;
    type Value: Pod;
    const NAME: &'static str;
    fn map(maps: &Maps) -> &Table<Self::Key, Self::Value>;
    fn map_mut(maps: &mut Maps) -> &mut Table<Self::Key, Self::Value>;
    fn key(key: Self::Key) -> SyncedKey;
    fn entry(key: Self::Key, value: Self::Value) -> SyncedEntry;
}

/// Declares a synced table: its marker type, its field in [`Maps`], its key and value types,
/// its name, and its variant in [`SyncedKey`] and [`SyncedEntry`].
macro_rules! synced_table {
    ($table:ident, $field:ident: Table<$key:ty, $value:ty>, $name:expr, $variant:ident) => {
        struct $table;

        impl SyncedTable for $table {
            type Key = $key;
            type Value = $value;
            const NAME: &'static str = $name;
            fn map(maps: &Maps) -> &Table<$key, $value> {
                &maps.$field
            }
            fn map_mut(maps: &mut Maps) -> &mut Table<$key, $value> {
                &mut maps.$field
            }
            fn key(key: $key) -> SyncedKey {
                SyncedKey::$variant(key)
            }
            fn entry(key: $key, value: $value) -> SyncedEntry {
                SyncedEntry::$variant(key, value)
            }
        }
    };
}

synced_table!(Sessions, sessions: Table<FlowKey, Session>, names::SESSIONS, Session);
synced_table!(
    MasqByPrivate,
    masq_by_private: Table<Endpoint, Endpoint>,
    names::MASQ_BY_PRIVATE,
    ByPrivate
);
synced_table!(
    MasqByPublic,
    masq_by_public: Table<Endpoint, Endpoint>,
    names::MASQ_BY_PUBLIC,
    ByPublic
);
synced_table!(MasqPeers, masq_peers: Table<PeerKey, u64>, names::MASQ_PEERS, Peer);
synced_table!(
    Expectations,
    expectations: Table<ExpectationKey, ExpectationEntry>,
    names::EXPECTATIONS,
    Expectation
);

/// Something done to the entry a key names, whichever table holds it.
trait KeyOp {
    type Output;
    fn run<T: SyncedTable>(self, key: T::Key) -> Self::Output;
}

/// Something done with an entry, whichever table it belongs to.
trait EntryOp {
    type Output;
    fn run<T: SyncedTable>(self, key: T::Key, value: T::Value) -> Self::Output;
}

impl SyncedKey {
    fn on_table<O: KeyOp>(self, op: O) -> O::Output {
        match self {
            SyncedKey::Session(key) => op.run::<Sessions>(key),
            SyncedKey::ByPrivate(key) => op.run::<MasqByPrivate>(key),
            SyncedKey::ByPublic(key) => op.run::<MasqByPublic>(key),
            SyncedKey::Peer(key) => op.run::<MasqPeers>(key),
            SyncedKey::Expectation(key) => op.run::<Expectations>(key),
        }
    }
}

impl SyncedEntry {
    fn on_table<O: EntryOp>(self, op: O) -> O::Output {
        match self {
            SyncedEntry::Session(key, value) => op.run::<Sessions>(key, value),
            SyncedEntry::ByPrivate(key, value) => op.run::<MasqByPrivate>(key, value),
            SyncedEntry::ByPublic(key, value) => op.run::<MasqByPublic>(key, value),
            SyncedEntry::Peer(key, value) => op.run::<MasqPeers>(key, value),
            SyncedEntry::Expectation(key, value) => op.run::<Expectations>(key, value),
        }
    }
}

/// The entry as it is now; `None` when it is gone.
struct Read<'a>(&'a Maps);

impl KeyOp for Read<'_> {
    type Output = Option<SyncedEntry>;
    fn run<T: SyncedTable>(self, key: T::Key) -> Option<SyncedEntry> {
        Some(T::entry(key, T::map(self.0).get(&key, 0).ok()?))
    }
}

/// Writes the entry, replacing what is there.
struct Write<'a>(&'a mut Maps);

impl EntryOp for Write<'_> {
    type Output = Result<(), DataplaneError>;
    fn run<T: SyncedTable>(self, key: T::Key, value: T::Value) -> Self::Output {
        T::map_mut(self.0)
            .insert(key, value, 0)
            .map_err(map_error(T::NAME))
    }
}

/// Removes the entry; one that is not there is no error.
struct Remove<'a>(&'a mut Maps);

impl KeyOp for Remove<'_> {
    type Output = Result<(), DataplaneError>;
    fn run<T: SyncedTable>(self, key: T::Key) -> Self::Output {
        match T::map_mut(self.0).remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
            {
                Ok(())
            }
            Err(err) => Err(map_error(T::NAME)(err)),
        }
    }
}

/// The entries of one table; those that vanish under the iteration (the fast path and the
/// LRU evict) are skipped.
fn entries<T: SyncedTable>(maps: &Maps) -> impl Iterator<Item = SyncedEntry> + '_ {
    let entries = T::map(maps).iter().flatten();
    entries.map(|(key, value)| T::entry(key, value))
}

/// The keys of one table's entries.
fn keys<T: SyncedTable>(maps: &Maps) -> impl Iterator<Item = SyncedKey> + '_ {
    T::map(maps).keys().flatten().map(T::key)
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
        key.on_table(Read(&self.maps))
    }

    /// Every entry of the synced tables. Entries that vanish under the iteration (the fast
    /// path and the LRU evict) are skipped.
    pub fn synced_entries(&self) -> Vec<SyncedEntry> {
        let maps = &self.maps;
        // Claims before the mappings and sessions that name them.
        entries::<MasqByPublic>(maps)
            .chain(entries::<MasqByPrivate>(maps))
            .chain(entries::<MasqPeers>(maps))
            .chain(entries::<Sessions>(maps))
            .chain(entries::<Expectations>(maps))
            .collect()
    }

    /// The keys of every entry of the synced tables.
    pub fn synced_keys(&self) -> Vec<SyncedKey> {
        let maps = &self.maps;
        keys::<Sessions>(maps)
            .chain(keys::<MasqByPrivate>(maps))
            .chain(keys::<MasqByPublic>(maps))
            .chain(keys::<MasqPeers>(maps))
            .chain(keys::<Expectations>(maps))
            .collect()
    }

    /// Writes an entry the active node sent (replacing what is there).
    pub fn write_synced(&mut self, entry: SyncedEntry) -> Result<(), DataplaneError> {
        entry.on_table(Write(&mut self.maps))
    }

    /// Removes an entry the active node removed; one that is not there is no error.
    pub fn remove_synced(&mut self, key: SyncedKey) -> Result<(), DataplaneError> {
        key.on_table(Remove(&mut self.maps))
    }
}
