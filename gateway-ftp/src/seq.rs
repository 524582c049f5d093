//! The sequence-number map of one direction of a TCP connection whose payload is rewritten.
//!
//! When the ALG replaces `10,0,0,2,195,80` by `203,0,113,1,156,64` the line grows, and every
//! later byte of that direction sits at a different sequence number for the receiver than for
//! the sender. The map keeps *every* such edit still in flight (the kernel's seqadj keeps one
//! correction point per direction and gets a second rewrite within a window wrong), maps the
//! sender's sequence numbers forward, and maps the receiver's ACK numbers and SACK blocks back.
//!
//! Internally positions are 64-bit stream offsets (0 = first payload byte), so wrap-around of
//! the 32-bit sequence space is handled once, at the edges.

use std::collections::VecDeque;

use gateway_common::control_ack::SeqShift;

/// The most edits a direction may have unacknowledged at once. A control connection has one
/// rewrite per PORT/EPRT/227/229 exchange, so this bounds state, not legitimate use.
pub const MAX_PENDING_EDITS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeqError {
    #[error(
        "edit at stream offset {at} overlaps or precedes the previous edit, which ends at {previous_end}"
    )]
    OutOfOrder { at: u64, previous_end: u64 },
    #[error("more than {MAX_PENDING_EDITS} rewrites unacknowledged in one direction")]
    TooManyEdits,
}

/// How to map a receiver-side position that falls inside a rewritten range back to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// To the start of the original range: for ACKs and right edges of SACK blocks, which must
    /// never claim bytes the receiver has not fully got.
    Down,
    /// To the end of the original range: for left edges of SACK blocks.
    Up,
}

/// One rewrite: original bytes `[at, at + old_len)` reached the receiver as `new_len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Edit {
    at: u64,
    old_len: u64,
    new_len: u64,
}

impl Edit {
    fn delta(&self) -> i64 {
        self.new_len as i64 - self.old_len as i64
    }

    fn end(&self) -> u64 {
        self.at + self.old_len
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SeqMap {
    /// Sequence number of stream offset 0 (the SYN's sequence number plus one). The ALG never
    /// changes initial sequence numbers, so it is the same on both sides.
    base_seq: u32,
    /// Total length change of the edits already acknowledged and dropped from `edits`.
    folded_shift: i64,
    /// Edits not yet acknowledged, in stream order, not overlapping.
    edits: VecDeque<Edit>,
    /// Highest original offset seen: the reference for unwrapping 32-bit sequence numbers.
    high: u64,
}

const HALF: u64 = 1 << 31;
const WRAP: u64 = 1 << 32;

/// The 64-bit offset nearest to `reference` whose low 32 bits are `low`.
fn unwrap(low: u32, reference: u64) -> u64 {
    let candidate = (reference & !(WRAP - 1)) | low as u64;
    if candidate + HALF < reference {
        candidate + WRAP
    } else if candidate > reference + HALF && candidate >= WRAP {
        candidate - WRAP
    } else {
        candidate
    }
}

impl SeqMap {
    /// `base_seq`: the first payload byte's sequence number (SYN + 1).
    pub fn new(base_seq: u32) -> SeqMap {
        SeqMap {
            base_seq,
            folded_shift: 0,
            edits: VecDeque::new(),
            high: 0,
        }
    }

    pub fn base_seq(&self) -> u32 {
        self.base_seq
    }

    pub fn pending_edits(&self) -> usize {
        self.edits.len()
    }

    /// Total length change of every edit so far: receiver offset minus sender offset past them.
    pub fn total_shift(&self) -> i64 {
        self.folded_shift + self.edits.iter().map(Edit::delta).sum::<i64>()
    }

    /// How many bytes longer the receiver's stream is than the sender's past the last
    /// acknowledged edit: what the receiver's window must be reduced by for the sender, so
    /// that rewrites still in flight cannot push data past the receiver's right edge.
    pub fn unacknowledged_growth(&self) -> u64 {
        self.edits.iter().map(Edit::delta).sum::<i64>().max(0) as u64
    }

    /// Records that original bytes `[at, at + old_len)` are sent as `new_len` bytes.
    pub fn record(&mut self, at: u64, old_len: u64, new_len: u64) -> Result<(), SeqError> {
        if old_len == new_len {
            return Ok(());
        }
        if let Some(last) = self.edits.back()
            && at < last.end()
        {
            return Err(SeqError::OutOfOrder {
                at,
                previous_end: last.end(),
            });
        }
        if self.edits.len() >= MAX_PENDING_EDITS {
            return Err(SeqError::TooManyEdits);
        }
        self.edits.push_back(Edit {
            at,
            old_len,
            new_len,
        });
        self.high = self.high.max(at + old_len);
        Ok(())
    }

    /// The original stream offset of a sender's sequence number; also advances the reference
    /// used to unwrap later numbers when `len` bytes start there.
    pub fn offset_of(&mut self, seq: u32, len: u32) -> u64 {
        let offset = unwrap(seq.wrapping_sub(self.base_seq), self.high);
        self.high = self.high.max(offset + len as u64);
        offset
    }

    /// Forward: where an original stream offset lands for the receiver. An offset inside a
    /// rewritten range maps into the rewritten range, clamped to its end.
    pub fn to_receiver(&self, offset: u64) -> u64 {
        let mut shift = self.folded_shift;
        for edit in &self.edits {
            if offset >= edit.end() {
                shift += edit.delta();
            } else if offset > edit.at {
                return (edit.at as i64 + shift) as u64 + (offset - edit.at).min(edit.new_len);
            } else {
                break;
            }
        }
        (offset as i64 + shift) as u64
    }

    /// Backward: which original offset a receiver-side offset stands for.
    pub fn to_sender(&self, offset: u64, round: Round) -> u64 {
        let mut shift = self.folded_shift;
        for edit in &self.edits {
            let start = (edit.at as i64 + shift) as u64;
            if offset <= start {
                break;
            }
            if offset >= start + edit.new_len {
                shift += edit.delta();
                continue;
            }
            return match round {
                Round::Down => edit.at,
                Round::Up => edit.end(),
            };
        }
        (offset as i64 - shift).max(0) as u64
    }

    /// The sequence number the receiver must see for the sender's `seq`.
    pub fn seq_to_receiver(&mut self, seq: u32, len: u32) -> u32 {
        let offset = self.offset_of(seq, len);
        self.base_seq.wrapping_add(self.to_receiver(offset) as u32)
    }

    /// The receiver's cumulative ACK, as the sender must see it. Never acknowledges part of
    /// a rewritten line.
    pub fn ack_to_sender(&self, ack: u32) -> u32 {
        let offset = self.receiver_offset(ack);
        self.base_seq
            .wrapping_add(self.to_sender(offset, Round::Down) as u32)
    }

    /// A SACK block `[left, right)` from the receiver, as the sender must see it; `None` when
    /// nothing whole is left of it.
    pub fn sack_to_sender(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let left = self.to_sender(self.receiver_offset(left), Round::Up);
        let right = self.to_sender(self.receiver_offset(right), Round::Down);
        (left < right).then(|| {
            (
                self.base_seq.wrapping_add(left as u32),
                self.base_seq.wrapping_add(right as u32),
            )
        })
    }

    /// Drops the edits that end at or before the receiver's cumulative ACK (in receiver
    /// numbering): nothing before it will be asked for again.
    pub fn acknowledge(&mut self, ack: u32) {
        let acked = self.to_sender(self.receiver_offset(ack), Round::Down);
        while let Some(edit) = self.edits.front() {
            if edit.end() > acked {
                break;
            }
            self.folded_shift += edit.delta();
            self.edits.pop_front();
        }
    }

    /// The sender's sequence numbers as the fast path may move them without this map (see
    /// `gateway_common::control_ack`): one shift before the first unacknowledged edit, one
    /// after the last, nothing in between. `None` when a shift does not fit 32 bits.
    pub fn forward_shift(&self) -> Option<SeqShift> {
        let total = i32::try_from(self.total_shift()).ok()?;
        let (Some(first), Some(last)) = (self.edits.front(), self.edits.back()) else {
            return Some(SeqShift::uniform(total));
        };
        Some(SeqShift {
            low: self.base_seq.wrapping_add(first.at as u32),
            high: self.base_seq.wrapping_add(last.end() as u32),
            before: i32::try_from(self.folded_shift).ok()?,
            after: total,
        })
    }

    /// The receiver's ACK numbers as the fast path may move them back to the sender's: the
    /// reverse of [`SeqMap::forward_shift`], in the receiver's numbering.
    pub fn backward_shift(&self) -> Option<SeqShift> {
        let total = i32::try_from(self.total_shift()).ok()?;
        let (Some(first), Some(last)) = (self.edits.front(), self.edits.back()) else {
            return Some(SeqShift::uniform(total.checked_neg()?));
        };
        let folded = i32::try_from(self.folded_shift).ok()?;
        let receiver = |offset: u64, shift: i32| {
            self.base_seq
                .wrapping_add(offset as u32)
                .wrapping_add(shift as u32)
        };
        Some(SeqShift {
            low: receiver(first.at, folded),
            high: receiver(last.end(), total),
            before: folded.checked_neg()?,
            after: total.checked_neg()?,
        })
    }

    fn receiver_offset(&self, seq: u32) -> u64 {
        unwrap(seq.wrapping_sub(self.base_seq), self.to_receiver(self.high))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The 227 example: a 15-byte address at offset 100 becomes 18 bytes; a second rewrite at
    /// 300 shrinks 18 to 14.
    fn two_edits(base_seq: u32) -> SeqMap {
        let mut map = SeqMap::new(base_seq);
        map.record(100, 15, 18).unwrap();
        map.record(300, 18, 14).unwrap();
        map
    }

    #[test]
    fn offsets_shift_after_each_edit() {
        let map = two_edits(1000);
        assert_eq!(map.to_receiver(0), 0);
        assert_eq!(map.to_receiver(100), 100);
        assert_eq!(map.to_receiver(115), 118);
        assert_eq!(map.to_receiver(300), 303);
        assert_eq!(map.to_receiver(318), 317);
        assert_eq!(map.to_receiver(1000), 999);
        assert_eq!(map.total_shift(), -1);
    }

    #[test]
    fn acks_inside_a_rewrite_do_not_claim_it() {
        let map = two_edits(1000);
        // Receiver got 110 of the 118 bytes before the end of the first rewrite.
        assert_eq!(map.to_sender(110, Round::Down), 100);
        assert_eq!(map.to_sender(110, Round::Up), 115);
        assert_eq!(map.to_sender(118, Round::Down), 115);
        assert_eq!(map.ack_to_sender(1000 + 317), 1000 + 318);
    }

    #[test]
    fn sack_blocks_shrink_to_whole_original_bytes() {
        let map = two_edits(1000);
        assert_eq!(
            map.sack_to_sender(1000 + 200, 1000 + 317),
            Some((1000 + 197, 1000 + 318))
        );
        // A block entirely inside the rewritten range covers no whole original byte.
        assert_eq!(map.sack_to_sender(1000 + 105, 1000 + 110), None);
    }

    #[test]
    fn acknowledged_edits_are_folded_away_without_changing_the_map() {
        let mut map = two_edits(1000);
        map.acknowledge(1000 + 200);
        assert_eq!(map.pending_edits(), 1);
        assert_eq!(map.to_receiver(250), 253);
        assert_eq!(map.to_receiver(400), 399);
        assert_eq!(map.to_sender(399, Round::Down), 400);
        map.acknowledge(1000 + 399);
        assert_eq!(map.pending_edits(), 0);
        assert_eq!(map.to_receiver(400), 399);
    }

    #[test]
    fn edits_must_come_in_stream_order_and_are_bounded() {
        let mut map = SeqMap::new(0);
        map.record(100, 10, 12).unwrap();
        assert_eq!(
            map.record(105, 2, 3),
            Err(SeqError::OutOfOrder {
                at: 105,
                previous_end: 110
            })
        );
        for i in 1..MAX_PENDING_EDITS as u64 {
            map.record(100 + i * 100, 10, 11).unwrap();
        }
        assert_eq!(map.record(1_000_000, 1, 2), Err(SeqError::TooManyEdits));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let base = u32::MAX - 150;
        let mut map = two_edits(base);
        // Offset 400 lies past the 32-bit wrap.
        let seq = base.wrapping_add(400);
        assert!(seq < base);
        assert_eq!(map.seq_to_receiver(seq, 10), base.wrapping_add(399));
        assert_eq!(map.ack_to_sender(base.wrapping_add(399)), seq);
    }

    /// Non-overlapping edits in stream order, from (gap, old_len, new_len) triples.
    fn edits() -> impl Strategy<Value = Vec<(u64, u64, u64)>> {
        prop::collection::vec((0u64..200, 1u64..40, 1u64..40), 0..20)
    }

    fn build(base_seq: u32, triples: &[(u64, u64, u64)]) -> (SeqMap, Vec<Edit>) {
        let mut map = SeqMap::new(base_seq);
        let mut at = 0;
        let mut list = Vec::new();
        for &(gap, old_len, new_len) in triples {
            at += gap;
            map.record(at, old_len, new_len).unwrap();
            if old_len != new_len {
                list.push(Edit {
                    at,
                    old_len,
                    new_len,
                });
            }
            at += old_len;
        }
        (map, list)
    }

    fn interior(list: &[Edit], offset: u64) -> bool {
        list.iter()
            .any(|edit| offset > edit.at && offset < edit.end())
    }

    proptest! {
        #[test]
        fn forward_is_monotonic(triples in edits(), a in 0u64..6000, b in 0u64..6000) {
            let (map, _) = build(7, &triples);
            let (low, high) = (a.min(b), a.max(b));
            prop_assert!(map.to_receiver(low) <= map.to_receiver(high));
        }

        #[test]
        fn backward_inverts_forward_outside_rewrites(triples in edits(), offset in 0u64..6000) {
            let (map, list) = build(7, &triples);
            prop_assume!(!interior(&list, offset));
            let there = map.to_receiver(offset);
            prop_assert_eq!(map.to_sender(there, Round::Down), offset);
            prop_assert_eq!(map.to_sender(there, Round::Up), offset);
        }

        #[test]
        fn rounding_brackets_the_receiver_position(triples in edits(), offset in 0u64..6000) {
            let (map, _) = build(7, &triples);
            let down = map.to_sender(offset, Round::Down);
            let up = map.to_sender(offset, Round::Up);
            prop_assert!(down <= up);
            prop_assert!(map.to_receiver(down) <= offset);
            prop_assert!(map.to_receiver(up) >= offset);
        }

        #[test]
        fn wrapped_sequence_numbers_round_trip(triples in edits(), base in any::<u32>(), offset in 0u64..6000) {
            let (mut map, list) = build(base, &triples);
            prop_assume!(!interior(&list, offset));
            let seq = base.wrapping_add(offset as u32);
            let there = map.seq_to_receiver(seq, 0);
            prop_assert_eq!(map.ack_to_sender(there), seq);
        }

        #[test]
        fn the_fast_paths_shifts_agree_with_the_map_wherever_they_answer(
            triples in edits(),
            base in any::<u32>(),
            acked in 0u64..6000,
            offset in 0u64..6000,
            width in 1u64..300,
        ) {
            let (mut map, _) = build(base, &triples);
            let acknowledged = map.to_receiver(acked);
            map.acknowledge(base.wrapping_add(acknowledged as u32));
            let seq = base.wrapping_add(offset as u32);
            if let Some(there) = map.forward_shift().unwrap().map(seq) {
                prop_assert_eq!(there, map.clone().seq_to_receiver(seq, 0));
            }
            // A cumulative ACK below one already acknowledged is old (the sender ignores it,
            // and the map clamps it at the stream's start): only later ones must agree.
            let ack = base.wrapping_add(offset as u32);
            if offset >= acknowledged
                && let Some(back) = map.backward_shift().unwrap().map(ack)
            {
                prop_assert_eq!(back, map.ack_to_sender(ack));
            }
            // SACK blocks move as the ACK does (the programs map each edge through the same
            // shift): a block whose edges both answer is the block the map gives.
            let right = base.wrapping_add((offset + width) as u32);
            let shift = map.backward_shift().unwrap();
            if offset >= acknowledged
                && let (Some(left), Some(right_back)) = (shift.map(ack), shift.map(right))
            {
                prop_assert_eq!(Some((left, right_back)), map.sack_to_sender(ack, right));
            }
            // Past every edit both always answer.
            let past = base.wrapping_add(6000 + 64);
            prop_assert!(map.forward_shift().unwrap().map(past).is_some());
            prop_assert!(map.backward_shift().unwrap().map(past).is_some());
        }

        #[test]
        fn folding_acknowledged_edits_keeps_later_offsets(triples in edits(), acked in 0u64..6000, offset in 0u64..6000) {
            let (mut map, _) = build(7, &triples);
            let ack_seq = 7u32.wrapping_add(map.to_receiver(acked) as u32);
            // What that ACK acknowledges of the sender's stream: past `acked` when `acked`
            // falls inside a rewrite whose new bytes the receiver then has whole. Offsets
            // before it are acknowledged and never mapped again.
            prop_assume!(offset >= map.to_sender(map.to_receiver(acked), Round::Down));
            let before = map.to_receiver(offset);
            map.acknowledge(ack_seq);
            prop_assert_eq!(map.to_receiver(offset), before);
        }
    }
}
