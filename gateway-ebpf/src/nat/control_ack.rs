//! Pure ACKs of FTP control connections, forwarded by the program through the connection's
//! `CONTROL_ACKS` entry instead of punted to the agent (see `gateway_common::control_ack`).
//! Anything this cannot map exactly stays a punt.

use gateway_common::{
    IPPROTO_TCP, Rewrite,
    control_ack::{
        ControlAck, SACK_BLOCK_LEN, SeqShift, TCP_HEADER_PLAIN, TIMESTAMPS_OPTION, is_pure_ack,
        sack_blocks,
    },
    outcome::{Dropped, Translated},
};

use super::{
    Outcome,
    headers::{ETH_LEN, Headers, TCP_CHECK, rewrite},
};
use crate::{
    maps::CONTROL_ACKS,
    packet::{Packet, ptr_at},
};

/// Offsets inside the TCP header.
const TCP_SEQ: usize = 4;
const TCP_ACK: usize = 8;
const TCP_DATA_OFFSET: usize = 12;
const TCP_FIXED_LEN: usize = 20;
/// NOP, NOP, kind, length, TSval, TSecr.
const TIMESTAMPS_LEN: usize = 12;
/// NOP, NOP, kind, length: what precedes the SACK blocks.
const SACK_HEAD_LEN: usize = 4;

/// The punted packet forwarded as a pure ACK of its control connection, or `None`: it stays
/// punted (not a pure ACK, no entry, an option other than timestamps, or a number inside a
/// rewrite the agent has not seen acknowledged).
#[inline(always)]
pub(super) fn forward_control_ack<P: Packet>(
    packet: &mut P,
    headers: &Headers,
) -> Option<Result<Translated, Outcome>> {
    if headers.key.proto != IPPROTO_TCP || !is_pure_ack(headers.tcp_flags) {
        return None;
    }
    // SAFETY: a live map value of plain data, read in place (the programs' stack is full);
    // only `last_tsval` is written, and a torn write of it by two CPUs at once only makes
    // the agent's later segment carry one of the two values.
    let entry: &mut ControlAck = unsafe { &mut *CONTROL_ACKS.get_ptr_mut(headers.key)? };
    if !packet.make_readable(headers.l4 + TCP_FIXED_LEN) {
        return None;
    }
    let word = |packet: &P, at: usize| -> Option<u32> {
        let field: *const [u8; 4] = ptr_at(packet, headers.l4 + at)?;
        // SAFETY: bounds-checked by ptr_at.
        Some(u32::from_be_bytes(unsafe { *field }))
    };
    let seq = word(packet, TCP_SEQ)?;
    let ack = word(packet, TCP_ACK)?;
    // Data offset, flags and window.
    let head = word(packet, TCP_DATA_OFFSET)?;
    let header_words = (head >> 28) as u8;
    // No payload: the IPv4 packet ends with the TCP header.
    if headers.ip_len as usize != headers.l4 - ETH_LEN + header_words as usize * 4 {
        return None;
    }
    // The options: none, timestamps, SACK blocks, or timestamps then SACK blocks, as Linux
    // writes them, ending the header; any other layout stays a punt.
    let header_len = header_words as usize * 4;
    if header_words < TCP_HEADER_PLAIN || !packet.make_readable(headers.l4 + header_len) {
        return None;
    }
    let mut options_at = TCP_FIXED_LEN;
    let mut tsval = None;
    if header_len >= TCP_FIXED_LEN + TIMESTAMPS_LEN
        && word(packet, TCP_FIXED_LEN)? == u32::from_be_bytes(TIMESTAMPS_OPTION)
    {
        tsval = Some(word(packet, TCP_FIXED_LEN + TIMESTAMPS_OPTION.len())?);
        options_at += TIMESTAMPS_LEN;
    }
    let mut sack = 0;
    if options_at < header_len {
        sack = sack_blocks(word(packet, options_at)?)?;
        options_at += SACK_HEAD_LEN;
    }
    if options_at + sack * SACK_BLOCK_LEN != header_len {
        return None;
    }
    let new_seq = entry.seq.map(seq)?;
    let new_ack = entry.ack.map(ack)?;
    // SACK blocks speak of the other direction's stream, as the ACK number does. Mapped
    // (every edge, or nothing) before anything else is written.
    if sack > 0 {
        match map_sack_blocks(
            packet,
            headers.l4 + options_at,
            sack,
            headers.l4 + TCP_CHECK,
            &entry.ack,
        ) {
            SACK_MAPPED => {}
            SACK_UNMAPPABLE => return None,
            _ => return Some(Err(Outcome::Drop(Dropped::RewriteFailed))),
        }
    }
    let window = head as u16;
    let new_head = (head & 0xffff_0000) | u32::from(window.saturating_sub(entry.window_shrink));
    let result = rewrite_ack(
        packet,
        headers,
        entry,
        [seq, new_seq],
        [ack, new_ack],
        [head, new_head],
    );
    if let (Ok(_), Some(tsval)) = (&result, tsval) {
        entry.last_tsval = tsval.to_be_bytes();
    }
    Some(result)
}

/// Writes the mapped numbers and the translation into the ACK, checksums following.
#[inline(always)]
fn rewrite_ack<P: Packet>(
    packet: &mut P,
    headers: &Headers,
    entry: &ControlAck,
    seq: [u32; 2],
    ack: [u32; 2],
    window_word: [u32; 2],
) -> Result<Translated, Outcome> {
    // (The window's word begins with the data offset and flags, which stay.)
    for (at, [old, new]) in [
        (TCP_SEQ, seq),
        (TCP_ACK, ack),
        (TCP_DATA_OFFSET, window_word),
    ] {
        if old != new {
            packet
                .rewrite_tcp_word(
                    headers.l4 + at,
                    headers.l4 + TCP_CHECK,
                    old.to_be_bytes(),
                    new.to_be_bytes(),
                )
                .map_err(|_| Outcome::Drop(Dropped::RewriteFailed))?;
        }
    }
    if entry.rewrite == Rewrite::Source as u8 || entry.rewrite == Rewrite::Both as u8 {
        rewrite(packet, headers, Rewrite::Source, entry.addr, entry.port)?;
    }
    if entry.rewrite == Rewrite::Destination as u8 {
        rewrite(
            packet,
            headers,
            Rewrite::Destination,
            entry.addr,
            entry.port,
        )?;
    } else if entry.rewrite == Rewrite::Both as u8 {
        rewrite(
            packet,
            headers,
            Rewrite::Destination,
            entry.peer_addr,
            entry.peer_port,
        )?;
    }
    Ok(Translated::ControlAck)
}

/// [`map_sack_blocks`]'s answers: plain integers (see `icmp_error.rs` on `Option`s returned
/// from functions that are not inlined).
const SACK_MAPPED: u32 = 0;
const SACK_UNMAPPABLE: u32 = 1;
const SACK_REWRITE_FAILED: u32 = 2;

/// Moves the `blocks` SACK blocks at `at` through `shift`, fixing the checksum at `check_at`:
/// every edge is mapped first, and only when all of them map is any written
/// (`SACK_UNMAPPABLE` leaves the packet untouched, for the agent). Not inlined: SACK blocks
/// come only after a loss, and the caller's frame is full.
#[inline(never)]
fn map_sack_blocks<P: Packet>(
    packet: &mut P,
    at: usize,
    blocks: usize,
    check_at: usize,
    shift: &SeqShift,
) -> u32 {
    let edges = blocks * 2;
    for edge in 0..MAX_SACK_EDGES {
        if edge >= edges {
            break;
        }
        match load_edge(packet, at + edge * 4) {
            Some(position) if shift.map(position).is_some() => {}
            _ => return SACK_UNMAPPABLE,
        }
    }
    for edge in 0..MAX_SACK_EDGES {
        if edge >= edges {
            break;
        }
        let offset = at + edge * 4;
        let Some(position) = load_edge(packet, offset) else {
            return SACK_REWRITE_FAILED;
        };
        let Some(mapped) = shift.map(position) else {
            return SACK_REWRITE_FAILED;
        };
        if mapped != position
            && packet
                .rewrite_tcp_word(
                    offset,
                    check_at,
                    position.to_be_bytes(),
                    mapped.to_be_bytes(),
                )
                .is_err()
        {
            return SACK_REWRITE_FAILED;
        }
    }
    SACK_MAPPED
}

/// Edges of the most SACK blocks a header holds.
const MAX_SACK_EDGES: usize = gateway_common::control_ack::MAX_SACK_BLOCKS * 2;

/// One SACK edge, through the load helper (the blocks sit at a variable offset).
#[inline(always)]
fn load_edge<P: Packet>(packet: &P, offset: usize) -> Option<u32> {
    let mut edge = [0u8; 4];
    packet
        .load_bytes(offset as u32, edge.as_mut_ptr(), 4)
        .then(|| u32::from_be_bytes(edge))
}
