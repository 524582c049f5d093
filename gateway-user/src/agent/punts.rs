//! Taking punted packets: what the agent does per wake-up.
//!
//! A wake-up on either transport (the tap or the ring) takes what both hold, handles it as
//! one batch (translated together, saved once, sent with one `sendmmsg`), then, with
//! `[ftp] busy_poll_us`, keeps polling both without sleeping while punts keep coming: each
//! batch found opens a new window of that length, and a window that passes empty sends the
//! agent back to sleep. Without traffic the agent sleeps in epoll and costs nothing.

use std::time::{Duration, Instant};

use super::Agent;
use crate::alg::{shell::PuntReader, tap::PuntTap};

/// Batches the busy-poll takes in a row before the loop's other work (management requests,
/// the sweep, signals) gets a turn; the next turn picks the polling up again if punts wait.
const MAX_POLLED_BATCHES: u32 = 64;

/// Empty polls between two readings of the clock that ends the busy-poll's window: the window
/// may overrun by that many polls (a few microseconds).
const CLOCK_EVERY_EMPTY_POLLS: u32 = 4;

/// Where punts come from, and the batch they are read into.
pub(super) struct Punts {
    pub(super) ring: PuntReader,
    /// `None` once it failed (or with no tap at all): the ring carries every punt then.
    pub(super) tap: Option<PuntTap>,
    /// What a wake-up on the ring read.
    pub(super) ring_batch: Vec<(u8, Vec<u8>)>,
    /// What a wake-up on the tap read.
    pub(super) tap_batch: Vec<(u8, Vec<u8>)>,
}

impl Agent {
    /// After a wake-up whose read is in `punts`' batches (and accounted): takes what the
    /// transports hold besides, handles it all, then busy-polls as configured.
    pub(super) fn take_punts(&mut self, punts: &mut Punts) {
        if !self.poll_punts(punts) {
            // A wake-up with nothing to take (readiness left over from the last busy-poll,
            // which read past tokio): no traffic, no polling.
            return;
        }
        self.alg
            .handle_batch(&mut self.dataplane, &mut punts.ring_batch);
        let window = Duration::from_micros(self.config.ftp.busy_poll_us);
        if window.is_zero() {
            return;
        }
        let mut batches = 0;
        let mut idle_since = Instant::now();
        let mut empty_polls = 0u32;
        while batches < MAX_POLLED_BATCHES {
            if self.poll_punts(punts) {
                self.alg.io.polled_batches += 1;
                batches += 1;
                self.alg
                    .handle_batch(&mut self.dataplane, &mut punts.ring_batch);
                idle_since = Instant::now();
                empty_polls = 0;
                continue;
            }
            empty_polls += 1;
            // An empty poll is a read(2) of the tap (about a microsecond): the clock, read
            // after each one, was 7% of the agent's samples while spinning.
            if empty_polls.is_multiple_of(CLOCK_EVERY_EMPTY_POLLS) {
                let idle = idle_since.elapsed();
                if idle >= window {
                    self.alg.io.poll_idle_ns += idle.as_nanos() as u64;
                    return;
                }
            }
            std::hint::spin_loop();
        }
        // Stopped by the limit: the time since the last batch was spent polling too.
        self.alg.io.poll_idle_ns += idle_since.elapsed().as_nanos() as u64;
    }

    /// Reads what both transports hold now, without waiting, into the ring's batch (the
    /// tap's read is appended to it); whether the batch has packets to handle.
    fn poll_punts(&mut self, punts: &mut Punts) -> bool {
        let from_ring = punts.ring.try_batch(&mut punts.ring_batch);
        self.alg.took(from_ring, false);
        if let Some(tap) = punts.tap.as_mut() {
            match tap.try_batch(&mut punts.tap_batch) {
                Ok(from_tap) => self.alg.took(from_tap, true),
                Err(err) => self.lose_tap(punts, &err),
            }
        }
        punts.ring_batch.append(&mut punts.tap_batch);
        !punts.ring_batch.is_empty()
    }

    /// The tap failed (someone deleted it, most likely): TC punts to the ring from now on.
    /// What was read from it before the error stays in its batch, to be handled.
    pub(super) fn lose_tap(&mut self, punts: &mut Punts, err: &std::io::Error) {
        tracing::warn!("cannot read the punt tap, TC punts to the ring from now on: {err}");
        if let Err(err) = self.dataplane.set_punt_tap(None) {
            tracing::warn!("cannot clear the punt tap: {err}");
        }
        punts.tap = None;
        self.punt_tap = None;
    }
}
