//! Naming changed entries for the HA state sync (`gateway_common::sync_event`): one record
//! per entry created, changed or removed, written into `SYNC_EVENTS` without a wake-up (the
//! agent drains the ring on its own tick). Only on a node whose agent syncs its state.

use gateway_common::{
    Counter,
    sync_event::{SYNC_KEY_BYTES, SyncEvent, SyncedKeyBytes},
};

use crate::maps::{NAT_CONFIG, SYNC_EVENTS, count};

/// `BPF_RB_NO_WAKEUP`: the record waits for the agent's next drain.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// Names the entry of `key`'s table for the sync; a full ring is counted, and the agent
/// walks the tables instead. Called where entries are created, removed, or change what the
/// standby must know: rare against packets, so the flag is read here rather than passed
/// down every path that creates an entry.
#[inline(always)]
pub(super) fn changed<K: SyncedKeyBytes>(key: &K) {
    if !matches!(NAT_CONFIG.get(0), Some(config) if config.sync_events != 0) {
        return;
    }
    let Some(mut entry) = SYNC_EVENTS.reserve::<SyncEvent>(0) else {
        count(Counter::SyncEventLost);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved record of `SyncEvent`'s size; `K` is at most
    // SYNC_KEY_BYTES long (asserted where `SyncedKeyBytes` is implemented). Written field by
    // field, in place: a `SyncEvent` built on the stack would cost the frame 20 bytes.
    unsafe {
        (*event).table = K::TABLE as u8;
        (*event)._pad = [0; 3];
        (*event).key = [0; SYNC_KEY_BYTES];
        core::ptr::write_unaligned((*event).key.as_mut_ptr().cast::<K>(), *key);
    }
    entry.submit(BPF_RB_NO_WAKEUP);
}
