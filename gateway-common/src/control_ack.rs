//! Segments of an FTP control connection that carry nothing for the ALG to judge: pure ACKs.
//!
//! Every segment of a control connection goes to the agent (punted), because the ALG may have
//! rewritten lines of either direction, and every later sequence and acknowledgment number
//! must be moved by those edits. A pure ACK (no payload, no SYN/FIN/RST/PSH/URG, no option
//! but timestamps) only needs that: its addresses translated as the connection's, its own
//! sequence number moved by its sender's edits, its ACK number moved back by the other
//! direction's, and its window shrunk by the growth still in flight. The agent writes what
//! each direction needs into `CONTROL_ACKS` ([`ControlAck`], keyed by the direction's
//! [`crate::FlowKey`] as its packets arrive) whenever it changes, before the rewritten
//! segment that changes it leaves; the programs forward such ACKs themselves, SACK blocks
//! mapped back as the ACK number is. Whatever they cannot map exactly (a number or a SACK
//! edge inside a rewrite still unacknowledged, any other option or layout) still goes to the
//! agent: the map only ever saves a punt.
//!
//! The rule (`SeqShift::map`) is written here once: the programs apply it, and the agent's
//! tests check it against the FTP core's own sequence map.

/// How one direction's sequence numbers move, as the programs can apply it without the whole
/// edit list: positions at or before `low` move by `before`, positions at or after `high` by
/// `after`; a position strictly between them lies inside a rewrite still unacknowledged,
/// which only the agent's edit list maps (and rounds) right. Comparisons are modulo 2^32, as
/// TCP's (positions within 2^31 of each other).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SeqShift {
    pub low: u32,
    pub high: u32,
    pub before: i32,
    pub after: i32,
}

impl SeqShift {
    /// Every position moves by `shift`: no rewrite is unacknowledged. (`low` = `high`: every
    /// position is at or before one of them, or at or after it.)
    pub const fn uniform(shift: i32) -> SeqShift {
        SeqShift {
            low: 0,
            high: 0,
            before: shift,
            after: shift,
        }
    }

    /// Where `position` lands, or `None` when only the full edit list can tell.
    #[inline(always)]
    pub fn map(&self, position: u32) -> Option<u32> {
        if position.wrapping_sub(self.low) as i32 <= 0 {
            Some(position.wrapping_add(self.before as u32))
        } else if position.wrapping_sub(self.high) as i32 >= 0 {
            Some(position.wrapping_add(self.after as u32))
        } else {
            None
        }
    }
}

/// What the programs do with a pure ACK of one direction of a control connection: the value
/// of `CONTROL_ACKS`. No entry: the ACK goes to the agent, as every other segment does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ControlAck {
    /// The connection's translation of this direction, as in a [`crate::Session`]: a
    /// [`crate::Rewrite`], with `addr`/`port` (and `peer_addr`/`peer_port` for `Both`).
    pub rewrite: u8,
    pub _pad: u8,
    /// Window units (the sender's scale) the advertised window shrinks by: the other
    /// direction's growth still in flight, so that a longer line never passes the receiver's
    /// right edge (as the agent shrinks it).
    pub window_shrink: u16,
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub peer_port: [u8; 2],
    pub peer_addr: [u8; 4],
    /// The sender's own sequence number, forward through its stream's edits.
    pub seq: SeqShift,
    /// The ACK number, back through the other direction's edits (receiver to sender).
    pub ack: SeqShift,
    /// Written by the programs: the timestamp value (network order) of the last ACK they
    /// forwarded, zero before any. What the gateway later sends in this side's name must not
    /// carry an older one, or the receiver's PAWS check (RFC 7323) drops it.
    pub last_tsval: [u8; 4],
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays in an order that leaves no implicit padding
// (the explicit `_pad` is written as zero).
unsafe impl aya::Pod for ControlAck {}

/// Directions of control connections whose pure ACKs the programs forward (two per
/// connection); beyond it a connection's ACKs simply keep going to the agent.
pub const MAX_CONTROL_ACKS: u32 = 65536;

/// The TCP header of a pure ACK the programs may forward: no options, or the timestamps in the
/// layout every stack sends them (NOP, NOP, kind 8, length 10), which pass unchanged, and SACK
/// blocks (below), which are mapped.
pub const TCP_HEADER_PLAIN: u8 = 5;
pub const TIMESTAMPS_OPTION: [u8; 4] = [1, 1, 8, 10];

/// The SACK option (RFC 2018) as stacks lay it out in a pure ACK: NOP, NOP, kind 5, length
/// 2 + 8 per block, after the timestamps when there are any (Linux's order), ending the header.
pub const SACK_OPTION_HEAD: [u8; 3] = [1, 1, 5];
/// Bytes of one SACK block: its left and right edge.
pub const SACK_BLOCK_LEN: usize = 8;
/// Blocks a TCP header holds: four alone, three beside timestamps.
pub const MAX_SACK_BLOCKS: usize = 4;

/// How many SACK blocks follow, if `word` (the option's first four bytes, big-endian) opens a
/// SACK option in the layout above with a length that is a whole number of blocks.
#[inline(always)]
pub const fn sack_blocks(word: u32) -> Option<usize> {
    let [nop, nop2, kind, len] = word.to_be_bytes();
    if nop != SACK_OPTION_HEAD[0] || nop2 != SACK_OPTION_HEAD[1] || kind != SACK_OPTION_HEAD[2] {
        return None;
    }
    let len = len as usize;
    if len < 2 + SACK_BLOCK_LEN || !(len - 2).is_multiple_of(SACK_BLOCK_LEN) {
        return None;
    }
    let blocks = (len - 2) / SACK_BLOCK_LEN;
    if blocks > MAX_SACK_BLOCKS {
        return None;
    }
    Some(blocks)
}

/// Flags a forwarded pure ACK may carry: ACK alone (ECE/CWR aside, which pass unchanged).
#[inline(always)]
pub const fn is_pure_ack(flags: u8) -> bool {
    use crate::tcp::flags;
    flags & (flags::FIN | flags::SYN | flags::RST | flags::PSH | flags::ACK | flags::URG)
        == flags::ACK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_move_by_the_shift_of_their_side_and_none_inside_a_rewrite() {
        let shift = SeqShift {
            low: 1000,
            high: 1010,
            before: 3,
            after: 9,
        };
        assert_eq!(shift.map(990), Some(993));
        assert_eq!(shift.map(1000), Some(1003));
        assert_eq!(shift.map(1001), None);
        assert_eq!(shift.map(1009), None);
        assert_eq!(shift.map(1010), Some(1019));
        assert_eq!(SeqShift::uniform(-4).map(2), Some(u32::MAX - 1));
    }

    #[test]
    fn the_sequence_space_wraps() {
        let shift = SeqShift {
            low: u32::MAX - 5,
            high: 4,
            before: -2,
            after: 6,
        };
        assert_eq!(shift.map(u32::MAX - 10), Some(u32::MAX - 12));
        assert_eq!(shift.map(u32::MAX), None);
        assert_eq!(shift.map(1), None);
        assert_eq!(shift.map(4), Some(10));
        assert_eq!(shift.map(u32::MAX - 1), None);
    }

    #[test]
    fn a_sack_option_counts_its_blocks_and_nothing_else_passes() {
        let word = |len: u8| u32::from_be_bytes([1, 1, 5, len]);
        assert_eq!(sack_blocks(word(10)), Some(1));
        assert_eq!(sack_blocks(word(34)), Some(4));
        for len in [0, 2, 9, 11, 42, 255] {
            assert_eq!(sack_blocks(word(len)), None, "length {len}");
        }
        assert_eq!(
            sack_blocks(u32::from_be_bytes([1, 1, 4, 2])),
            None,
            "SACK permitted"
        );
        assert_eq!(sack_blocks(u32::from_be_bytes([0, 1, 5, 10])), None);
        assert_eq!(sack_blocks(u32::from_be_bytes([1, 5, 10, 0])), None);
    }

    #[test]
    fn only_a_bare_ack_is_pure() {
        use crate::tcp::flags;
        assert!(is_pure_ack(flags::ACK));
        assert!(is_pure_ack(flags::ACK | 0x40 | 0x80));
        for other in [flags::FIN, flags::SYN, flags::RST, flags::PSH, flags::URG] {
            assert!(!is_pure_ack(flags::ACK | other));
        }
        assert!(!is_pure_ack(0));
    }
}
