//! The session tables as the agent sees them: reading them, flushing them, and the sweep
//! that removes what has expired.

use std::collections::HashSet;

use gateway_common::{
    Endpoint, ExpectationEntry, ExpectationKey, FlowKey, PeerKey, Rewrite, Session, names,
};

use super::{Dataplane, DataplaneError, map_error, sync::SyncedKey};

/// What one [`Dataplane::sweep`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub sessions: usize,
    pub peers: usize,
    pub mappings: usize,
    pub expectations: usize,
}

impl std::ops::AddAssign for Sweep {
    fn add_assign(&mut self, other: Sweep) {
        self.sessions += other.sessions;
        self.peers += other.peers;
        self.mappings += other.mappings;
        self.expectations += other.expectations;
    }
}

/// What the sweep remembers from one run to the next.
#[derive(Debug, Default)]
pub struct Sweeper {
    unused_last_time: HashSet<Endpoint>,
}

/// Free entries the kernel's LRU hash keeps aside per possible CPU before it evicts
/// (`LOCAL_FREE_TARGET` in kernel/bpf/bpf_lru_list.h): a full LRU table shows up to this
/// many entries per CPU fewer than its capacity.
const LRU_LOCAL_FREE_TARGET: u64 = 128;

/// Whether a session table of `capacity` holding `entries` is full enough to warn: 90 %, or
/// as full as the kernel's LRU lets it get on `cpus` possible CPUs, whichever comes first.
/// A small table on a few CPUs already evicts at three quarters: 90 % alone would never warn.
pub fn session_table_nearly_full(entries: usize, capacity: u32, cpus: usize) -> bool {
    let capacity = u64::from(capacity);
    let lru_full = capacity.saturating_sub(LRU_LOCAL_FREE_TARGET * cpus as u64);
    let threshold = (capacity * 9 / 10).min(lru_full).max(1);
    entries as u64 >= threshold
}

impl Dataplane {
    /// Session-table entries at the last sweep, and the table's capacity.
    pub fn session_occupancy(&self) -> (usize, u32) {
        (self.session_entries, self.max_sessions)
    }

    /// Whether the session table was nearly full at the last sweep
    /// ([`session_table_nearly_full`] on this machine's possible CPUs).
    pub fn session_table_nearly_full(&self) -> bool {
        // Without the CPU count, assume one: the threshold is then the higher one.
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        session_table_nearly_full(self.session_entries, self.max_sessions, cpus)
    }

    /// The session table itself, for benchmarks that fill it directly.
    pub fn session_table(
        &mut self,
    ) -> &mut aya::maps::HashMap<aya::maps::MapData, FlowKey, Session> {
        &mut self.maps.sessions
    }

    /// Every session-table entry (one per direction of a connection), as the fast path holds
    /// it. Entries may come and go under the iteration; those are skipped.
    pub fn sessions(&self) -> Result<Vec<(FlowKey, Session)>, DataplaneError> {
        Ok(self.maps.sessions.iter().flatten().collect())
    }

    /// The expectations not used yet.
    pub fn expectations(&self) -> Result<Vec<(ExpectationKey, ExpectationEntry)>, DataplaneError> {
        Ok(self.maps.expectations.iter().flatten().collect())
    }

    /// Removes every session entry (mappings and filtering entries stay, so connections that
    /// go on get their sessions back with the same public endpoints). Returns how many went.
    pub fn flush_sessions(&mut self) -> Result<usize, DataplaneError> {
        let sessions = &mut self.maps.sessions;
        let keys: Vec<FlowKey> = sessions.keys().flatten().collect();
        let flushed = keys
            .iter()
            .filter(|key| sessions.remove(key).is_ok())
            .count();
        self.sync_changes.walk_due();
        Ok(flushed)
    }

    /// Removes what has expired: sessions past their idle timeout (the fast path only notices
    /// when a packet looks one up), address-dependent filtering entries past the mapping
    /// timeout, and mappings no session has used in two consecutive sweeps (two, so that a
    /// mapping whose sessions the fast path is inserting right now is not taken from it).
    /// `now_ns` is CLOCK_MONOTONIC, the fast path's clock.
    ///
    /// `held`: public endpoints the FTP ALG holds (its control connections' mappings, data
    /// ports of pending expectations), which no fast-path session names yet.
    pub fn sweep(
        &mut self,
        sweeper: &mut Sweeper,
        now_ns: u64,
        held: &HashSet<Endpoint>,
    ) -> Result<Sweep, DataplaneError> {
        let maps = &mut self.maps;
        let config = maps
            .nat_config
            .get(&0, 0)
            .map_err(map_error(names::NAT_CONFIG))?;
        let mut sweep = Sweep::default();

        let void: Vec<ExpectationKey> = maps
            .expectations
            .iter()
            .flatten()
            .filter(|(_, entry)| entry.expires_ns < now_ns)
            .map(|(key, _)| key)
            .collect();
        sweep.expectations = void
            .iter()
            .filter(|key| maps.expectations.remove(key).is_ok())
            .count();
        let mut removed: Vec<SyncedKey> = void.into_iter().map(SyncedKey::Expectation).collect();

        let mut in_use = held.clone();
        let mut expired = Vec::new();
        let mut live: usize = 0;
        // Entries may vanish under the iteration (the fast path and LRU evict): skip errors.
        for (key, session) in maps.sessions.iter().flatten() {
            live += 1;
            let idle = now_ns.saturating_sub(session.last_seen_ns);
            if idle > config.session_timeout_ns(key.proto, session.state) {
                expired.push(key);
            } else if Rewrite::try_from(session.rewrite) != Ok(Rewrite::Destination) {
                // Outbound and hairpin sessions name the mapping they use.
                in_use.insert(Endpoint::new(session.addr, session.port, key.proto));
            }
        }
        sweep.sessions = expired
            .iter()
            .filter(|key| maps.sessions.remove(key).is_ok())
            .count();
        removed.extend(expired.into_iter().map(SyncedKey::Session));
        self.session_entries = live.saturating_sub(sweep.sessions);

        let stale: Vec<PeerKey> = maps
            .masq_peers
            .iter()
            .flatten()
            .filter(|(peer, last_sent)| {
                now_ns.saturating_sub(*last_sent) > config.mapping_timeout_ns(peer.public.proto)
            })
            .map(|(peer, _)| peer)
            .collect();
        sweep.peers = stale
            .iter()
            .filter(|peer| maps.masq_peers.remove(peer).is_ok())
            .count();
        removed.extend(stale.into_iter().map(SyncedKey::Peer));

        let unused: Vec<(Endpoint, Endpoint)> = maps
            .masq_by_public
            .iter()
            .flatten()
            .filter(|(public, _)| !in_use.contains(public))
            .collect();
        let mut unused_now = HashSet::new();
        for (public, private) in unused {
            if !sweeper.unused_last_time.contains(&public) {
                unused_now.insert(public);
                continue;
            }
            if maps.masq_by_public.remove(&public).is_ok() {
                sweep.mappings += 1;
            }
            removed.push(SyncedKey::ByPublic(public));
            if maps.masq_by_private.get(&private, 0).ok() == Some(public) {
                let _ = maps.masq_by_private.remove(&private);
                removed.push(SyncedKey::ByPrivate(private));
            }
        }
        sweeper.unused_last_time = unused_now;
        for key in removed {
            self.sync_changes.touched(key);
        }
        Ok(sweep)
    }
}

#[cfg(test)]
mod tests {
    use super::session_table_nearly_full;

    #[test]
    fn a_large_table_warns_at_ninety_percent() {
        assert!(!session_table_nearly_full(58_981, 65_536, 2));
        assert!(session_table_nearly_full(58_983, 65_536, 2));
    }

    #[test]
    fn a_small_table_warns_where_the_lru_starts_evicting() {
        // 1024 entries on 2 CPUs: the LRU may stop at 768.
        assert!(!session_table_nearly_full(767, 1024, 2));
        assert!(session_table_nearly_full(768, 1024, 2));
        assert!(!session_table_nearly_full(0, 16, 64));
        assert!(session_table_nearly_full(1, 16, 64));
    }
}
