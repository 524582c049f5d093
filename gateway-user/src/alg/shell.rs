//! The ALG's I/O: the punt ring buffer read under tokio (the tap, TC's punt transport, is
//! in `tap.rs`; the raw socket that sends the translated packets in `sender.rs`), and the
//! fast path's maps behind [`AlgMaps`].

use std::io;

use aya::maps::{MapData, RingBuf};
use gateway_common::{
    Endpoint, ExpectationEntry, ExpectationKey, FlowKey, PUNT_HEADER_LEN, PuntHeader,
    control_ack::ControlAck,
};
use tokio::io::unix::AsyncFd;

use super::control::AlgMaps;
use crate::dataplane::Dataplane;

/// One punt record: why the packet came, and the packet from its IPv4 header on.
pub struct Punted<'a> {
    pub header: PuntHeader,
    pub packet: &'a [u8],
}

/// Splits a ring record into header and packet; `None` for a record shorter than it says.
pub fn decode(record: &[u8]) -> Option<Punted<'_>> {
    let head = record.get(..PUNT_HEADER_LEN)?;
    let word = |at: usize| u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let header = PuntHeader {
        ifindex: word(0),
        len: word(4),
        reason: head[8],
        _pad: [0; 3],
        punted_ns_low: word(12),
    };
    let end = PUNT_HEADER_LEN.checked_add(usize::try_from(header.len).ok()?)?;
    Some(Punted {
        header,
        packet: record.get(PUNT_HEADER_LEN..end)?,
    })
}

/// The punt ring, readable under tokio.
pub struct PuntReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl PuntReader {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<PuntReader> {
        // SAFETY: the ring buffer owns its map's descriptor, which stays open and the same
        // for as long as the AsyncFd owns the ring.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|err| err.into_parts().1)?;
        Ok(PuntReader { ring })
    }

    /// Waits for records, then takes every one the ring holds (reason, packet), in order.
    pub async fn next_batch(&mut self, batch: &mut Vec<(u8, Vec<u8>)>) -> io::Result<BatchRead> {
        let mut guard = self.ring.readable_mut().await?;
        let mut read = drain_ring(guard.get_inner_mut(), batch);
        read.wakeups = 1;
        guard.clear_ready();
        Ok(read)
    }

    /// Takes every record the ring holds now, without waiting (none: an empty read). The
    /// readiness tokio keeps is left as it is: at worst the next wait returns at once to an
    /// empty ring, and waits again.
    pub fn try_batch(&mut self, batch: &mut Vec<(u8, Vec<u8>)>) -> BatchRead {
        drain_ring(self.ring.get_mut(), batch)
    }
}

fn drain_ring(ring: &mut RingBuf<MapData>, batch: &mut Vec<(u8, Vec<u8>)>) -> BatchRead {
    // The punt's clock, truncated as in the header. Records punted while the ring is being
    // drained are younger than this: they count as not having waited.
    let taken_ns_low = crate::dataplane::monotonic_now_ns() as u32;
    let mut read = BatchRead::default();
    while let Some(record) = ring.next() {
        match decode(&record) {
            Some(punted) => {
                let waited = taken_ns_low.wrapping_sub(punted.header.punted_ns_low) as i32;
                read.waited_ns += waited.max(0) as u64;
                read.packets += 1;
                batch.push((punted.header.reason, punted.packet.to_vec()));
            }
            None => read.undecodable += 1,
        }
    }
    read
}

/// What one read of the ring (or the tap) found besides the packets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchRead {
    /// Packets taken into the batch.
    pub packets: usize,
    /// Records that did not decode, skipped.
    pub undecodable: usize,
    /// Time the packets of the batch waited in the ring (or the tap's queue), summed: from their punt to the
    /// agent taking them (wake-up and scheduling).
    pub waited_ns: u64,
    /// Times the read waited for the transport to become readable and was woken (one per
    /// readiness tokio reported, empty ones included); none for a read that did not wait.
    pub wakeups: u64,
}

impl BatchRead {
    /// Whether the read took anything (packets or records it had to skip).
    pub fn took_any(&self) -> bool {
        self.packets > 0 || self.undecodable > 0
    }
}

impl std::ops::AddAssign for BatchRead {
    fn add_assign(&mut self, other: BatchRead) {
        self.packets += other.packets;
        self.undecodable += other.undecodable;
        self.waited_ns += other.waited_ns;
        self.wakeups += other.wakeups;
    }
}

/// The fast path's maps as the control connections use them. Map errors other than "taken"
/// are logged and reported as failures: the packet that needed the entry is not sent.
impl AlgMaps for Dataplane {
    fn mapping(&mut self, private: Endpoint) -> Option<Endpoint> {
        self.masquerade_mapping(private)
            .inspect_err(|err| tracing::warn!("mapping lookup failed: {err:#}"))
            .ok()
            .flatten()
    }

    fn claim(&mut self, public: Endpoint, owner: Endpoint) -> bool {
        self.claim_public(public, owner)
            .inspect_err(|err| tracing::warn!("port claim failed: {err:#}"))
            .unwrap_or(false)
    }

    fn record_mapping(&mut self, private: Endpoint, public: Endpoint) {
        if let Err(err) = Dataplane::record_mapping(self, private, public) {
            tracing::warn!("mapping record failed: {err:#}");
        }
    }

    fn expect(&mut self, key: ExpectationKey, entry: ExpectationEntry) -> bool {
        Dataplane::expect(self, key, entry)
            .inspect_err(|err| tracing::warn!("expectation install failed: {err:#}"))
            .is_ok()
    }

    fn expectation_pending(&mut self, key: ExpectationKey) -> bool {
        self.expectation_exists(key).unwrap_or(true)
    }

    fn unexpect(&mut self, key: ExpectationKey) {
        if let Err(err) = Dataplane::unexpect(self, key) {
            tracing::warn!("expectation removal failed: {err:#}");
        }
    }

    fn set_control_ack(&mut self, key: FlowKey, entry: ControlAck) -> bool {
        Dataplane::set_control_ack(self, key, entry)
            .inspect_err(|err| tracing::warn!("control ACK entry refused: {err:#}"))
            .is_ok()
    }

    fn remove_control_ack(&mut self, key: FlowKey) {
        if let Err(err) = Dataplane::remove_control_ack(self, key) {
            tracing::warn!("control ACK entry removal failed: {err:#}");
        }
    }

    fn control_ack_tsval(&mut self, key: FlowKey) -> Option<u32> {
        self.control_ack(key)
            .ok()
            .flatten()
            .map(|entry| u32::from_be_bytes(entry.last_tsval))
            .filter(|&tsval| tsval != 0)
    }

    fn control_ack_keys(&mut self) -> Vec<FlowKey> {
        Dataplane::control_ack_keys(self)
            .inspect_err(|err| tracing::warn!("control ACK entries unreadable: {err:#}"))
            .unwrap_or_default()
    }
}

/// A seed for the ALG's port choice from the kernel's random pool.
pub fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom(2) writes at most `seed.len()` bytes into `seed`.
    let filled = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if filled == seed.len() as isize {
        u64::from_ne_bytes(seed)
    } else {
        // Not cryptographic either way; the clock is good enough to avoid fixed sequences.
        crate::dataplane::monotonic_now_ns() ^ u64::from(std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_and_short_ones_are_refused() {
        let mut record = vec![0u8; PUNT_HEADER_LEN + 4];
        record[0..4].copy_from_slice(&7u32.to_ne_bytes());
        record[4..8].copy_from_slice(&3u32.to_ne_bytes());
        record[8] = 2;
        record[PUNT_HEADER_LEN..].copy_from_slice(&[0x45, 1, 2, 3]);
        let punted = decode(&record).unwrap();
        assert_eq!((punted.header.ifindex, punted.header.reason), (7, 2));
        assert_eq!(punted.packet, &[0x45, 1, 2]);
        record[4..8].copy_from_slice(&9u32.to_ne_bytes());
        assert!(decode(&record).is_none());
        assert!(decode(&record[..4]).is_none());
    }
}
