//! Pure ACKs of FTP control connections, forwarded by the program through the connection's
//! `CONTROL_ACKS` entry instead of punted to the agent (see `gateway_common::control_ack`).
//! Anything this cannot map exactly stays a punt.

use gateway_common::{
    IPPROTO_TCP, Rewrite,
    control_ack::{
        ControlAck, TCP_HEADER_PLAIN, TCP_HEADER_TIMESTAMPS, TIMESTAMPS_OPTION, is_pure_ack,
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
    let mut tsval = None;
    match header_words {
        TCP_HEADER_PLAIN => {}
        TCP_HEADER_TIMESTAMPS => {
            if !packet.make_readable(headers.l4 + TCP_FIXED_LEN + TIMESTAMPS_LEN) {
                return None;
            }
            if word(packet, TCP_FIXED_LEN)? != u32::from_be_bytes(TIMESTAMPS_OPTION) {
                return None;
            }
            tsval = Some(word(packet, TCP_FIXED_LEN + TIMESTAMPS_OPTION.len())?);
        }
        _ => return None,
    }
    let new_seq = entry.seq.map(seq)?;
    let new_ack = entry.ack.map(ack)?;
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
