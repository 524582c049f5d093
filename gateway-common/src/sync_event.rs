//! Change events for the HA state sync: the fast path names each entry it creates, changes
//! in a way the standby must learn (a TCP state, a last-seen time past a refresh boundary) or
//! removes, in the `SYNC_EVENTS` ring buffer, without waking anyone
//! (`BPF_RB_NO_WAKEUP`). The active node's agent drains the ring on its sync tick, reads each
//! named entry as it is now and streams it, so the sync costs in proportion to the changes,
//! not to the tables. An event is only a name: the entry's value is read when drained, so
//! events may repeat, and a lost one (full ring, counted in `sync_event_lost`) is made good by
//! a full walk.
//!
//! Written only when `NatConfig::sync_events` is set (a node with `[ha]` state sync).

use crate::{Endpoint, ExpectationKey, FlowKey, PeerKey};

wire_enum! {
    /// Which table an event names.
    pub enum SyncTable: u8 {
        Session = 1,
        ByPrivate = 2,
        ByPublic = 3,
        Peer = 4,
        Expectation = 5,
    }
}

/// Room for a key of any synced table.
pub const SYNC_KEY_BYTES: usize = 16;

/// One record of `SYNC_EVENTS`: the table and the entry's key (its first bytes; the rest
/// zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncEvent {
    /// A [`SyncTable`].
    pub table: u8,
    pub _pad: [u8; 3],
    pub key: [u8; SYNC_KEY_BYTES],
}

/// Bytes of the `SYNC_EVENTS` ring: 32768 records of 28 bytes (with the ring's header), a
/// few hundred milliseconds of new connections at the fast path's highest rates, drained
/// every 200 ms.
pub const SYNC_EVENTS_BYTES: u32 = 1 << 20;

/// A session's last-seen time is synced again when it crosses a boundary of 2^31 ns (about
/// 2.1 s): the first packet of each such interval names the session. Coarse on purpose: a
/// standby that believes a flow idle a few seconds longer than it is loses nothing, since
/// every idle timeout is minutes.
pub const REFRESH_SHIFT: u32 = 31;

/// Whether a time moved from `before` to `now` crosses a refresh boundary.
#[inline(always)]
pub const fn refresh_due(before_ns: u64, now_ns: u64) -> bool {
    (before_ns >> REFRESH_SHIFT) != (now_ns >> REFRESH_SHIFT)
}

/// A key of a synced table, as an event carries it.
pub trait SyncedKeyBytes: Copy {
    const TABLE: SyncTable;
}

macro_rules! synced_key {
    ($key:ty, $table:ident) => {
        impl SyncedKeyBytes for $key {
            const TABLE: SyncTable = SyncTable::$table;
        }
        const _: () = assert!(core::mem::size_of::<$key>() <= SYNC_KEY_BYTES);
    };
}

synced_key!(FlowKey, Session);
synced_key!(PeerKey, Peer);
synced_key!(ExpectationKey, Expectation);

/// `MASQ_BY_PRIVATE` and `MASQ_BY_PUBLIC` are both keyed by an [`Endpoint`]: the table says
/// which.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct PrivateEndpoint(pub Endpoint);
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct PublicEndpoint(pub Endpoint);
synced_key!(PrivateEndpoint, ByPrivate);
synced_key!(PublicEndpoint, ByPublic);

impl SyncEvent {
    /// The key as `K`, if the event names `K`'s table.
    #[cfg(feature = "user")]
    pub fn key_as<K: SyncedKeyBytes + aya::Pod>(&self) -> Option<K> {
        if self.table != K::TABLE as u8 {
            return None;
        }
        // SAFETY: `K` is Pod and at most SYNC_KEY_BYTES long (asserted per key type).
        Some(unsafe { core::ptr::read_unaligned(self.key.as_ptr().cast::<K>()) })
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), bytes only.
unsafe impl aya::Pod for SyncEvent {}
#[cfg(feature = "user")]
// SAFETY: repr(transparent) over a Pod.
unsafe impl aya::Pod for PrivateEndpoint {}
#[cfg(feature = "user")]
// SAFETY: repr(transparent) over a Pod.
unsafe impl aya::Pod for PublicEndpoint {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_boundaries_are_about_two_seconds_apart() {
        assert!(!refresh_due(0, (1 << 31) - 1));
        assert!(refresh_due((1 << 31) - 1, 1 << 31));
        assert!(!refresh_due(1 << 31, (2 << 31) - 1));
        assert_eq!(core::mem::size_of::<SyncEvent>(), 20);
    }
}
