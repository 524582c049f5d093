//! One direction of a control connection as a rewritten TCP byte stream.
//!
//! The sender's segments come in (any size, possibly retransmitted, overlapping or out of
//! order); segments for the receiver go out, with every line the caller wants changed
//! replaced and the sequence numbers moved by the edits so far ([`SeqMap`]). Retransmissions
//! are answered from a history of what was sent, so the receiver always sees the same bytes
//! at the same sequence numbers.
//!
//! Every line is held back until it is complete, so that the caller judges it whole (and may
//! rewrite or refuse it); a complete line goes out as soon as the caller has answered. (A
//! sender that waits, Nagle-style, for the held half to be acknowledged is acknowledged by
//! the session on the receiver's behalf; see `Session::resend_owed`.)

use std::collections::{BTreeMap, VecDeque};

use crate::{
    line::{Line, LineAssembler, LineTooLong},
    seq::{SeqError, SeqMap},
};

/// Out-of-order bytes kept while waiting for a gap to fill; beyond it segments are dropped and
/// left to the sender's retransmission.
pub const MAX_OUT_OF_ORDER: usize = 64 * 1024;

/// Bytes of complete lines held (pipelined commands waiting for their turn); beyond it new bytes
/// are not taken, so not acknowledged, and the sender sends them again later: TCP's own flow
/// control, instead of memory for whatever a client pipelines.
pub const MAX_HELD: usize = 16 * 1024;

/// A TCP segment's sequence number and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    LineTooLong(#[from] LineTooLong),
    #[error(transparent)]
    Seq(#[from] SeqError),
    /// An earlier error left the stream without a consistent view of its bytes; the
    /// connection can only be ended.
    #[error("the stream failed earlier and cannot continue")]
    Broken,
}

/// What to do with a complete line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineAction {
    Keep,
    Replace(Vec<u8>),
    /// Not now: the line, and every line after it, waits in the stream (unsent) until the
    /// caller [releases](StreamRewriter::release) it. Pipelined commands wait so for the
    /// reply to the one before them.
    Hold,
}

/// Serializable (serde) so that the agent can keep a session across its own restart.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct StreamRewriter {
    map: SeqMap,
    lines: LineAssembler,
    /// Next original offset expected in order.
    next: u64,
    /// Original offset up to which bytes have been sent (lines held back lie beyond it).
    sent_up_to: u64,
    /// Bytes sent to the receiver, from receiver offset `history_start` on, for retransmission.
    history: VecDeque<u8>,
    history_start: u64,
    /// Segments ahead of `next`, by original offset.
    out_of_order: BTreeMap<u64, Vec<u8>>,
    out_of_order_bytes: usize,
    /// Set by the first error: framing and sequence state are no longer trustworthy.
    broken: bool,
    /// No more line framing: every byte passes as it is (an encrypted session).
    opaque: bool,
    /// Complete lines waiting to be released, in order; the first starts at `sent_up_to`.
    #[serde(default)]
    held: VecDeque<Line>,
    /// The sender's FIN came while lines were held: it goes with the last of them.
    #[serde(default)]
    fin_held: bool,
}

impl StreamRewriter {
    /// `base_seq`: sequence number of the first payload byte (SYN + 1).
    pub fn new(base_seq: u32, max_line: usize) -> StreamRewriter {
        StreamRewriter {
            map: SeqMap::new(base_seq),
            lines: LineAssembler::new(max_line),
            next: 0,
            sent_up_to: 0,
            history: VecDeque::new(),
            history_start: 0,
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            broken: false,
            opaque: false,
            held: VecDeque::new(),
            fin_held: false,
        }
    }

    /// How many complete lines wait to be released.
    pub fn held_lines(&self) -> usize {
        self.held.len()
    }

    /// The sender's FIN waits behind held lines.
    pub fn hold_fin(&mut self) {
        self.fin_held = true;
    }

    /// Asks `judge` about the held lines, oldest first, and sends those it lets go, until it
    /// answers [`LineAction::Hold`] again or none is left. The FIN that waited goes (the
    /// second value) once nothing is held any more, after any unfinished line the sender
    /// left.
    pub fn release(
        &mut self,
        judge: &mut dyn FnMut(&Line) -> LineAction,
    ) -> Result<(Option<Segment>, bool), StreamError> {
        if self.broken {
            return Err(StreamError::Broken);
        }
        let send_from = self.sent_up_to;
        let mut output = Vec::new();
        while let Some(line) = self.held.pop_front() {
            match judge(&line) {
                LineAction::Hold => {
                    self.held.push_front(line);
                    break;
                }
                action => self.put_line(&line, action, &mut output)?,
            }
        }
        let mut fin = false;
        if self.held.is_empty() && self.fin_held {
            self.fin_held = false;
            fin = true;
            let pending = self.lines.pending().to_vec();
            output.extend_from_slice(&pending);
            self.sent_up_to = self.lines.next_offset();
        }
        Ok((self.sent(send_from, output), fin))
    }

    /// Sends everything held, unjudged and unchanged (the session stopped inspecting).
    pub fn release_unjudged(&mut self) -> Option<Segment> {
        if self.broken {
            return None;
        }
        let send_from = self.sent_up_to;
        let mut output = Vec::new();
        for line in std::mem::take(&mut self.held) {
            output.extend_from_slice(&line.bytes);
        }
        output.extend_from_slice(self.lines.pending());
        self.sent_up_to = self.lines.next_offset();
        self.sent(send_from, output)
    }

    /// From now on the stream is not framed into lines: bytes pass unchanged (the sequence
    /// shift of earlier edits still applies).
    pub fn set_opaque(&mut self) {
        self.opaque = true;
    }

    /// The sender's sequence number of the next byte expected from it in order.
    pub fn next_seq(&self) -> u32 {
        self.map.base_seq().wrapping_add(self.next as u32)
    }

    /// Inserts `bytes` into the stream for the receiver at the current position, as if the
    /// sender had sent them (the gateway answering a client itself). `None` when the position
    /// is inside a line already partly sent, where an insertion would split it.
    pub fn inject(&mut self, bytes: &[u8]) -> Result<Option<Segment>, StreamError> {
        if self.broken {
            return Err(StreamError::Broken);
        }
        let pending = self.lines.pending();
        let pending_start = self.lines.next_offset() - pending.len() as u64;
        if !self.opaque && !pending.is_empty() && pending_start < self.sent_up_to {
            return Ok(None);
        }
        let at = self.sent_up_to;
        let receiver_offset = self.map.to_receiver(at);
        self.map.record(at, 0, bytes.len() as u64)?;
        if self.history.is_empty() {
            self.history_start = receiver_offset;
        }
        self.history.extend(bytes.iter().copied());
        Ok(Some(Segment {
            seq: self.receiver_seq(receiver_offset),
            payload: bytes.to_vec(),
        }))
    }

    pub fn seq_map(&self) -> &SeqMap {
        &self.map
    }

    /// Where the sender's `seq` lands for the receiver (for segments without payload).
    pub fn seq_to_receiver(&mut self, seq: u32) -> u32 {
        self.map.seq_to_receiver(seq, 0)
    }

    /// Whether bytes received in order are held back (an unfinished line).
    pub fn holds_back(&self) -> bool {
        !self.opaque && self.sent_up_to < self.next
    }

    /// Whether the receiver has acknowledged everything sent to it.
    pub fn all_acknowledged(&self) -> bool {
        self.history.is_empty()
    }

    /// Everything sent that the receiver has not acknowledged yet, as one segment (the
    /// history), for the gateway's own retransmission of what it acknowledged on the
    /// receiver's behalf.
    pub fn unacknowledged(&self) -> Option<Segment> {
        if self.history.is_empty() {
            return None;
        }
        Some(Segment {
            seq: self.receiver_seq(self.history_start),
            payload: self.history.iter().copied().collect(),
        })
    }

    /// Original offset up to which bytes have been sent to the receiver.
    pub fn sent_up_to(&self) -> u64 {
        self.sent_up_to
    }

    /// A segment from the sender. Returns the segments to send to the receiver; `rewrite` is
    /// asked about every complete line.
    pub fn on_segment(
        &mut self,
        seq: u32,
        payload: &[u8],
        rewrite: &mut dyn FnMut(&Line) -> LineAction,
    ) -> Result<Vec<Segment>, StreamError> {
        if self.broken {
            return Err(StreamError::Broken);
        }
        let result = self.accept(seq, payload, rewrite);
        self.broken = result.is_err();
        result
    }

    fn accept(
        &mut self,
        seq: u32,
        payload: &[u8],
        rewrite: &mut dyn FnMut(&Line) -> LineAction,
    ) -> Result<Vec<Segment>, StreamError> {
        let mut out = Vec::new();
        let start = self.map.offset_of(seq, payload.len() as u32);
        let end = start + payload.len() as u64;
        // Whatever of it was seen before is resent exactly as it went out the first time.
        if start < self.next {
            let old_end = end.min(self.next);
            if let Some(segment) = self.resend(start, old_end) {
                out.push(segment);
            }
        }
        if end <= self.next {
            return Ok(out);
        }
        if self.held.iter().map(|line| line.bytes.len()).sum::<usize>() >= MAX_HELD {
            // Full: the sender's retransmission brings these bytes again once lines went.
            return Ok(out);
        }
        let fresh = &payload[(self.next.saturating_sub(start)) as usize..];
        let fresh_start = start.max(self.next);
        if fresh_start > self.next {
            self.hold_out_of_order(fresh_start, fresh);
            return Ok(out);
        }
        let mut bytes = fresh.to_vec();
        // Earlier out-of-order segments that now follow on.
        while let Some((&at, _)) = self.out_of_order.first_key_value() {
            let held_end = self.next + bytes.len() as u64;
            if at > held_end {
                break;
            }
            let (at, data) = self.out_of_order.pop_first().expect("checked non-empty");
            self.out_of_order_bytes -= data.len();
            let skip = (held_end - at) as usize;
            if skip < data.len() {
                bytes.extend_from_slice(&data[skip..]);
            }
        }
        if let Some(segment) = self.process(&bytes, rewrite)? {
            out.push(segment);
        }
        Ok(out)
    }

    /// Sends whatever is held back, unchanged: the sender closed its side, so a held line will
    /// never be completed (and so never rewritten).
    pub fn flush(&mut self) -> Option<Segment> {
        if self.broken || !self.held.is_empty() {
            // Held lines come first; the FIN waits for them (`hold_fin`).
            return None;
        }
        let pending = self.lines.pending();
        let pending_start = self.lines.next_offset() - pending.len() as u64;
        if pending.is_empty() || pending_start + pending.len() as u64 <= self.sent_up_to {
            return None;
        }
        let from = self.sent_up_to.max(pending_start);
        let output = pending[(from - pending_start) as usize..].to_vec();
        let receiver_offset = self.map.to_receiver(from);
        if self.history.is_empty() {
            self.history_start = receiver_offset;
        }
        self.history.extend(output.iter().copied());
        self.sent_up_to = self.lines.next_offset();
        Some(Segment {
            seq: self.receiver_seq(receiver_offset),
            payload: output,
        })
    }

    /// The receiver's cumulative ACK, as the sender must see it. Drops history and edits that
    /// are acknowledged.
    pub fn on_ack(&mut self, ack: u32) -> u32 {
        let mapped = self.map.ack_to_sender(ack);
        let acked = self.map.offset_of(mapped, 0);
        let receiver_acked = self.map.to_receiver(acked.min(self.sent_up_to));
        while self.history_start < receiver_acked && !self.history.is_empty() {
            self.history.pop_front();
            self.history_start += 1;
        }
        self.map.acknowledge(ack);
        mapped
    }

    /// Feeds in-order bytes: frames lines, hands complete lines to the caller, returns what can be sent.
    fn process(
        &mut self,
        bytes: &[u8],
        rewrite: &mut dyn FnMut(&Line) -> LineAction,
    ) -> Result<Option<Segment>, StreamError> {
        let send_from = self.sent_up_to;
        if self.opaque {
            self.next += bytes.len() as u64;
            self.sent_up_to = self.next;
            let receiver_offset = self.map.to_receiver(send_from);
            if self.history.is_empty() {
                self.history_start = receiver_offset;
            }
            self.history.extend(bytes.iter().copied());
            return Ok(Some(Segment {
                seq: self.receiver_seq(receiver_offset),
                payload: bytes.to_vec(),
            }));
        }
        let mut output = Vec::new();
        let lines = self.lines.push(bytes)?;
        self.next += bytes.len() as u64;
        for line in lines {
            if line.start < self.sent_up_to {
                // Its beginning already went out (a FIN flushed it unfinished): send the rest.
                output.extend_from_slice(&line.bytes[(self.sent_up_to - line.start) as usize..]);
                self.sent_up_to = line.end();
                continue;
            }
            let action = rewrite(&line);
            if !self.held.is_empty() || action == LineAction::Hold {
                // Lines keep their order: behind a held line every line waits (the caller
                // answers Hold for them; whatever it answered, nothing passes a held line).
                self.held.push_back(line);
                continue;
            }
            self.put_line(&line, action, &mut output)?;
        }
        // The unfinished tail waits until its line is complete (every line is judged whole),
        // unless part of it went out already.
        let pending = self.lines.pending();
        let pending_start = self.lines.next_offset() - pending.len() as u64;
        if self.held.is_empty() && !pending.is_empty() && pending_start < self.sent_up_to {
            // Part of this unfinished line went out already: the rest follows as it comes.
            let from = (self.sent_up_to - pending_start) as usize;
            output.extend_from_slice(pending.get(from..).unwrap_or_default());
            self.sent_up_to = self.lines.next_offset();
        }
        Ok(self.sent(send_from, output))
    }

    /// Appends a complete line at `sent_up_to` to `output` as `action` says, recording an edit
    /// when it changes.
    fn put_line(
        &mut self,
        line: &Line,
        action: LineAction,
        output: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        match action {
            LineAction::Replace(new) if new != line.bytes => {
                self.map
                    .record(line.start, line.bytes.len() as u64, new.len() as u64)?;
                output.extend_from_slice(&new);
            }
            _ => output.extend_from_slice(&line.bytes),
        }
        self.sent_up_to = line.end();
        Ok(())
    }

    /// Records `output`, which starts at original offset `send_from`, as sent: kept in the
    /// history for retransmissions, and returned as the segment for the receiver.
    fn sent(&mut self, send_from: u64, output: Vec<u8>) -> Option<Segment> {
        if output.is_empty() {
            return None;
        }
        let receiver_offset = self.map.to_receiver(send_from);
        // History is contiguous in receiver offsets from history_start.
        if self.history.is_empty() {
            self.history_start = receiver_offset;
        }
        self.history.extend(output.iter().copied());
        Some(Segment {
            seq: self.receiver_seq(receiver_offset),
            payload: output,
        })
    }

    /// The bytes already sent for original offsets `[start, end)`, as they went out.
    fn resend(&self, start: u64, end: u64) -> Option<Segment> {
        let end = end.min(self.sent_up_to);
        if start >= end {
            return None;
        }
        let (from, to) = (self.map.to_receiver(start), self.map.to_receiver(end));
        let from = from.max(self.history_start);
        let history_end = self.history_start + self.history.len() as u64;
        let to = to.min(history_end);
        if from >= to {
            return None;
        }
        let payload: Vec<u8> = self
            .history
            .range((from - self.history_start) as usize..(to - self.history_start) as usize)
            .copied()
            .collect();
        Some(Segment {
            seq: self.receiver_seq(from),
            payload,
        })
    }

    fn hold_out_of_order(&mut self, at: u64, data: &[u8]) {
        if self.out_of_order_bytes + data.len() > MAX_OUT_OF_ORDER
            || self.out_of_order.contains_key(&at)
        {
            return;
        }
        self.out_of_order_bytes += data.len();
        self.out_of_order.insert(at, data.to_vec());
    }

    fn receiver_seq(&self, receiver_offset: u64) -> u32 {
        // The map's base sequence number is the same on both sides.
        self.map.base_seq().wrapping_add(receiver_offset as u32)
    }
}

#[cfg(test)]
mod tests;
