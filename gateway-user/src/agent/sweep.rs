//! The periodic sweep: expired sessions, mappings and expectations out of the fast path's
//! maps, the ALG's stale state with them, and a warning when the session table fills.

use std::time::{Duration, Instant};

use super::Agent;
use crate::dataplane::{Sweep, Sweeper, monotonic_now_ns};

/// The sweep's state between two runs, and what it found in all.
pub(super) struct Sweeping {
    sweeper: Sweeper,
    /// Everything swept since the start, for the log at exit.
    pub(super) swept: Sweep,
    /// Sweeps that found the session table at least 90 % full, and when that was last said.
    pub(super) table_full_sweeps: u64,
    table_full_warned: Instant,
}

impl Sweeping {
    pub(super) fn new() -> Self {
        Sweeping {
            sweeper: Sweeper::default(),
            swept: Sweep::default(),
            table_full_sweeps: 0,
            table_full_warned: Instant::now(),
        }
    }
}

impl Agent {
    pub(super) fn sweep(&mut self) {
        let now = monotonic_now_ns();
        self.alg.table.expire(now, &mut self.dataplane);
        // The ALG's mappings and claimed data ports have no fast-path session yet.
        self.alg.table.forget_used(&mut self.dataplane);
        self.alg.save_state();
        if self.sync.is_some() && !self.passes_traffic() {
            // A standby's entries are the active node's: its sweep removes them, and the
            // removals travel. A standby sweeping on its own would expire them early (their
            // last-seen times are refreshed coarsely) or late.
            return;
        }
        let held = self.alg.table.held_endpoints(now);
        match self.dataplane.sweep(&mut self.sweeping.sweeper, now, &held) {
            Ok(sweep) => {
                if sweep != Sweep::default() {
                    tracing::debug!(?sweep, "swept expired state");
                }
                self.sweeping.swept += sweep;
            }
            Err(err) => tracing::warn!(error = %err, "sweep failed"),
        }
        // An LRU table never refuses an entry: when full it evicts the least recently used
        // connection, whose next packet then needs a new session. Say so before it bites.
        if self.dataplane.session_table_nearly_full() {
            let (entries, capacity) = self.dataplane.session_occupancy();
            self.sweeping.table_full_sweeps += 1;
            if self.sweeping.table_full_sweeps == 1
                || self.sweeping.table_full_warned.elapsed() > Duration::from_secs(60)
            {
                self.sweeping.table_full_warned = Instant::now();
                tracing::warn!(
                    entries,
                    capacity,
                    "session table nearly full: the least recently used connections are evicted first; raise [sessions] max"
                );
            }
        }
    }
}

/// The sweep's clock; a late tick is not made up for.
pub(super) fn sweep_ticks(seconds: u64) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(Duration::from_secs(seconds));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}
