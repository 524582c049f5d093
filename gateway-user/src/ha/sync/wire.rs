//! The records a sync frame carries, and their bytes: each a tag, then the fields in a fixed
//! order (addresses and ports in network order as the maps hold them, integers
//! big-endian). Times travel relative to the sender's clock: a session's or peer's age, an
//! expectation's time left; the receiver puts them back on its own CLOCK_MONOTONIC.
//!
//! The ALG's control sessions travel as the records of its journal (`SavedChanges`, JSON,
//! the format the restart file uses), with the sender's clock beside them: the receiver
//! moves their times by the difference of the two clocks.

use gateway_common::{Endpoint, ExpectationEntry, ExpectationKey, FlowKey, PeerKey, Session};

use crate::dataplane::sync::{SyncedEntry, SyncedKey};

/// What the active node tells the standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A bulk snapshot starts: what the standby holds and the snapshot does not name goes
    /// at its end.
    SnapshotBegin,
    SnapshotEnd,
    Upsert(SyncedEntry),
    Remove(SyncedKey),
    /// A snapshot of the ALG's control sessions starts: the `Alg` records up to its end
    /// replace the sessions the standby holds.
    AlgSnapshotBegin,
    AlgSnapshotEnd,
    /// Control sessions changed and removed (a journal record, `SavedChanges` as JSON).
    Alg(AlgPart),
}

/// One journal record of the ALG for the standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlgPart {
    /// `SavedChanges` as JSON.
    pub json: Vec<u8>,
    /// Receiver's clock minus the sender's, nanoseconds (0 as sent): added to the sessions'
    /// times.
    pub clock_shift_ns: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("record cut short at byte {0}")]
    Short(usize),
    #[error("unknown record tag {0}")]
    Tag(u8),
}

const BEGIN: u8 = 1;
const END: u8 = 2;
const SESSION: u8 = 10;
const BY_PRIVATE: u8 = 11;
const BY_PUBLIC: u8 = 12;
const PEER: u8 = 13;
const EXPECTATION: u8 = 14;
const ALG_BEGIN: u8 = 20;
const ALG_END: u8 = 21;
const ALG_CHANGES: u8 = 22;
/// Added to an entry's tag: its removal.
const GONE: u8 = 100;

/// Appends `records` to `out`, times relative to `now_ns` (this node's monotonic clock).
pub fn encode(records: &[Record], now_ns: u64, out: &mut Vec<u8>) {
    for record in records {
        match record {
            Record::SnapshotBegin => out.push(BEGIN),
            Record::SnapshotEnd => out.push(END),
            Record::AlgSnapshotBegin => out.push(ALG_BEGIN),
            Record::AlgSnapshotEnd => out.push(ALG_END),
            Record::Alg(part) => {
                out.push(ALG_CHANGES);
                out.extend_from_slice(&now_ns.to_be_bytes());
                out.extend_from_slice(&(part.json.len() as u32).to_be_bytes());
                out.extend_from_slice(&part.json);
            }
            Record::Upsert(entry) => encode_entry(entry, now_ns, out),
            Record::Remove(key) => {
                out.push(tag_of(key) + GONE);
                encode_key(key, out);
            }
        }
    }
}

fn tag_of(key: &SyncedKey) -> u8 {
    match key {
        SyncedKey::Session(_) => SESSION,
        SyncedKey::ByPrivate(_) => BY_PRIVATE,
        SyncedKey::ByPublic(_) => BY_PUBLIC,
        SyncedKey::Peer(_) => PEER,
        SyncedKey::Expectation(_) => EXPECTATION,
    }
}

fn encode_key(key: &SyncedKey, out: &mut Vec<u8>) {
    match key {
        SyncedKey::Session(key) => put_flow(key, out),
        SyncedKey::ByPrivate(key) | SyncedKey::ByPublic(key) => put_endpoint(key, out),
        SyncedKey::Peer(key) => {
            put_endpoint(&key.public, out);
            out.extend_from_slice(&key.remote);
        }
        SyncedKey::Expectation(key) => {
            put_endpoint(&key.endpoint, out);
            out.extend_from_slice(&key.peer);
        }
    }
}

fn encode_entry(entry: &SyncedEntry, now_ns: u64, out: &mut Vec<u8>) {
    let key = entry.key();
    out.push(tag_of(&key));
    encode_key(&key, out);
    match entry {
        SyncedEntry::Session(_, session) => {
            out.extend_from_slice(&session.addr);
            out.extend_from_slice(&session.port);
            out.push(session.rewrite);
            out.push(session.state);
            out.extend_from_slice(&session.peer_addr);
            out.extend_from_slice(&session.peer_port);
            let age = now_ns.saturating_sub(session.last_seen_ns);
            for value in [age, session.packets, session.bytes] {
                out.extend_from_slice(&value.to_be_bytes());
            }
        }
        SyncedEntry::ByPrivate(_, value) | SyncedEntry::ByPublic(_, value) => {
            put_endpoint(value, out);
        }
        SyncedEntry::Peer(_, last_sent) => {
            out.extend_from_slice(&now_ns.saturating_sub(*last_sent).to_be_bytes());
        }
        SyncedEntry::Expectation(_, value) => {
            put_endpoint(&value.target, out);
            out.push(value.kind);
            out.extend_from_slice(&value.source);
            let left = value.expires_ns.saturating_sub(now_ns);
            out.extend_from_slice(&left.to_be_bytes());
        }
    }
}

fn put_endpoint(endpoint: &Endpoint, out: &mut Vec<u8>) {
    out.extend_from_slice(&endpoint.addr);
    out.extend_from_slice(&endpoint.port);
    out.push(endpoint.proto);
    out.push(endpoint.flags);
}

fn put_flow(key: &FlowKey, out: &mut Vec<u8>) {
    out.extend_from_slice(&key.src);
    out.extend_from_slice(&key.dst);
    out.extend_from_slice(&key.src_port);
    out.extend_from_slice(&key.dst_port);
    out.push(key.proto);
}

/// Reads the records of one frame's payload, times put on `now_ns` (this node's clock).
pub fn decode(bytes: &[u8], now_ns: u64) -> Result<Vec<Record>, WireError> {
    let mut reader = Reader { bytes, at: 0 };
    let mut records = Vec::new();
    while reader.at < bytes.len() {
        let tag = reader.u8()?;
        let record = match tag {
            BEGIN => Record::SnapshotBegin,
            END => Record::SnapshotEnd,
            ALG_BEGIN => Record::AlgSnapshotBegin,
            ALG_END => Record::AlgSnapshotEnd,
            ALG_CHANGES => {
                let sent_ns = reader.u64()?;
                let length = u32::from_be_bytes(reader.take()?) as usize;
                let json = reader
                    .bytes
                    .get(reader.at..reader.at + length)
                    .ok_or(WireError::Short(reader.at))?
                    .to_vec();
                reader.at += length;
                let shift = (i128::from(now_ns) - i128::from(sent_ns))
                    .clamp(i128::from(i64::MIN), i128::from(i64::MAX));
                Record::Alg(AlgPart {
                    json,
                    clock_shift_ns: shift as i64,
                })
            }
            tag if tag > GONE => Record::Remove(reader.key(tag - GONE)?),
            tag => Record::Upsert(reader.entry(tag, now_ns)?),
        };
        records.push(record);
    }
    Ok(records)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let end = self.at + N;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(WireError::Short(self.at))?;
        self.at = end;
        let mut out = [0; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    fn endpoint(&mut self) -> Result<Endpoint, WireError> {
        Ok(Endpoint {
            addr: self.take()?,
            port: self.take()?,
            proto: self.u8()?,
            flags: self.u8()?,
        })
    }

    fn key(&mut self, tag: u8) -> Result<SyncedKey, WireError> {
        Ok(match tag {
            SESSION => SyncedKey::Session(FlowKey {
                src: self.take()?,
                dst: self.take()?,
                src_port: self.take()?,
                dst_port: self.take()?,
                proto: self.u8()?,
                _pad: [0; 3],
            }),
            BY_PRIVATE => SyncedKey::ByPrivate(self.endpoint()?),
            BY_PUBLIC => SyncedKey::ByPublic(self.endpoint()?),
            PEER => SyncedKey::Peer(PeerKey {
                public: self.endpoint()?,
                remote: self.take()?,
            }),
            EXPECTATION => SyncedKey::Expectation(ExpectationKey {
                endpoint: self.endpoint()?,
                peer: self.take()?,
            }),
            tag => return Err(WireError::Tag(tag)),
        })
    }

    fn entry(&mut self, tag: u8, now_ns: u64) -> Result<SyncedEntry, WireError> {
        Ok(match self.key(tag)? {
            SyncedKey::Session(key) => {
                let mut session = Session {
                    addr: self.take()?,
                    port: self.take()?,
                    rewrite: self.u8()?,
                    state: self.u8()?,
                    peer_addr: self.take()?,
                    peer_port: self.take()?,
                    ..Session::default()
                };
                session.last_seen_ns = now_ns.saturating_sub(self.u64()?);
                session.packets = self.u64()?;
                session.bytes = self.u64()?;
                SyncedEntry::Session(key, session)
            }
            SyncedKey::ByPrivate(key) => SyncedEntry::ByPrivate(key, self.endpoint()?),
            SyncedKey::ByPublic(key) => SyncedEntry::ByPublic(key, self.endpoint()?),
            SyncedKey::Peer(key) => SyncedEntry::Peer(key, now_ns.saturating_sub(self.u64()?)),
            SyncedKey::Expectation(key) => {
                let mut entry = ExpectationEntry {
                    target: self.endpoint()?,
                    kind: self.u8()?,
                    source: self.take()?,
                    ..ExpectationEntry::default()
                };
                entry.expires_ns = now_ns.saturating_add(self.u64()?);
                SyncedEntry::Expectation(key, entry)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(last: u8, port: u16) -> Endpoint {
        Endpoint::new([10, 0, 0, last], port.to_be_bytes(), 6)
    }

    fn samples(now: u64) -> Vec<Record> {
        let key = FlowKey {
            src: [10, 0, 0, 2],
            dst: [203, 0, 113, 2],
            src_port: 40000u16.to_be_bytes(),
            dst_port: 7u16.to_be_bytes(),
            proto: 6,
            _pad: [0; 3],
        };
        let session = Session {
            addr: [203, 0, 113, 1],
            port: 1024u16.to_be_bytes(),
            rewrite: 1,
            state: 1,
            last_seen_ns: now - 5_000,
            packets: 7,
            bytes: 900,
            ..Session::default()
        };
        let peer = PeerKey {
            public: endpoint(1, 1024),
            remote: [203, 0, 113, 2],
        };
        let expectation = ExpectationKey {
            endpoint: endpoint(1, 2000),
            peer: [203, 0, 113, 2],
        };
        let entry = ExpectationEntry {
            target: endpoint(2, 3000),
            kind: 1,
            source: [0; 4],
            expires_ns: now + 9_000,
            ..ExpectationEntry::default()
        };
        vec![
            Record::SnapshotBegin,
            Record::Upsert(SyncedEntry::ByPublic(endpoint(1, 1024), endpoint(2, 40000))),
            Record::Upsert(SyncedEntry::ByPrivate(
                endpoint(2, 40000),
                endpoint(1, 1024),
            )),
            Record::Upsert(SyncedEntry::Peer(peer, now - 3_000)),
            Record::Upsert(SyncedEntry::Session(key, session)),
            Record::Upsert(SyncedEntry::Expectation(expectation, entry)),
            Record::SnapshotEnd,
            Record::Remove(SyncedKey::Session(key.reversed())),
            Record::Remove(SyncedKey::ByPublic(endpoint(1, 1025))),
            Record::Remove(SyncedKey::ByPrivate(endpoint(2, 40001))),
            Record::Remove(SyncedKey::Peer(peer)),
            Record::Remove(SyncedKey::Expectation(expectation)),
            Record::AlgSnapshotBegin,
            Record::Alg(AlgPart {
                json: br#"{"generation":0}"#.to_vec(),
                clock_shift_ns: 0,
            }),
            Record::AlgSnapshotEnd,
        ]
    }

    #[test]
    fn records_travel_with_times_moved_to_the_receivers_clock() {
        let sender_now = 1_000_000;
        let mut bytes = Vec::new();
        encode(&samples(sender_now), sender_now, &mut bytes);
        // The receiver's clock is elsewhere: ages and time left are kept.
        let receiver_now = 77_000_000;
        let decoded = decode(&bytes, receiver_now).unwrap();
        let mut expected = samples(receiver_now);
        for record in &mut expected {
            if let Record::Alg(part) = record {
                part.clock_shift_ns = (receiver_now - sender_now) as i64;
            }
        }
        assert_eq!(decoded, expected);
    }

    #[test]
    fn a_cut_or_unknown_record_is_an_error() {
        let mut bytes = Vec::new();
        encode(&samples(1_000_000), 1_000_000, &mut bytes);
        for cut in 1..bytes.len() {
            // Every prefix either decodes (a record boundary) or says where it was cut.
            if let Err(err) = decode(&bytes[..cut], 1_000_000) {
                assert!(matches!(err, WireError::Short(_)), "{cut}: {err}");
            }
        }
        assert_eq!(decode(&[3], 0), Err(WireError::Tag(3)));
        assert_eq!(decode(&[GONE + 99], 0), Err(WireError::Tag(99)));
    }
}
