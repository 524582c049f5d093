//! The pure ACKs of a control connection that the fast path forwards itself (`CONTROL_ACKS`,
//! see `gateway_common::control_ack`): what each direction needs, brought in step with the
//! session after every segment (before anything that segment caused is sent), removed with
//! the connection.

use gateway_common::{FlowKey, Rewrite, control_ack::ControlAck};
use gateway_ftp::session::Direction;

use super::{
    AlgMaps, ControlTable,
    connection::{Connection, side},
    key,
};

impl Connection {
    /// The key a direction's packets arrive with.
    pub(super) fn arriving_key(&self, direction: Direction) -> FlowKey {
        match direction {
            Direction::ClientToServer => key(self.client, self.server_seen),
            Direction::ServerToClient => key(self.server, self.client_seen),
        }
    }

    /// What the fast path may do with `direction`'s pure ACKs now; `None`: they come here
    /// (before both SYNs are through, once the connection closes, and whenever the session
    /// must see them: see `Session::pure_acks`). The handshake's last ACK is the first the
    /// fast path may forward: the agent knows both sides' numbers by then.
    fn control_ack(&self, direction: Direction) -> Option<ControlAck> {
        if self.closed() {
            return None;
        }
        let acks = self.core.pure_acks(direction)?;
        // Arriving `from -> to`, a segment leaves as `seen_from -> seen_to`.
        let (from, to, seen_from, seen_to) = match direction {
            Direction::ClientToServer => {
                (self.client, self.server_seen, self.client_seen, self.server)
            }
            Direction::ServerToClient => {
                (self.server, self.client_seen, self.server_seen, self.client)
            }
        };
        let (rewrite, addr) = match (from != seen_from, to != seen_to) {
            (true, true) => (Rewrite::Both, seen_from),
            (true, false) => (Rewrite::Source, seen_from),
            (false, _) => (Rewrite::Destination, seen_to),
        };
        Some(ControlAck {
            rewrite: rewrite as u8,
            _pad: 0,
            window_shrink: acks.window_shrink,
            addr: addr.ip().octets(),
            port: addr.port().to_be_bytes(),
            peer_addr: seen_to.ip().octets(),
            peer_port: seen_to.port().to_be_bytes(),
            seq: acks.seq,
            ack: acks.ack,
            last_tsval: self.last_from[side(direction)]
                .as_ref()
                .and_then(|packet| packet.tsval())
                .unwrap_or(0)
                .to_be_bytes(),
        })
    }

    /// Brings the fast path's entries in step with the session: writes what changed,
    /// removes what no longer holds (everything when `enabled` is off, as after a reload that
    /// turned `forward_pure_acks` off: at each session's next segment). An entry the map refuses (full) leaves that direction's
    /// ACKs coming here, as before.
    pub(super) fn sync_control_acks(&mut self, enabled: bool, maps: &mut dyn AlgMaps) {
        for direction in Direction::BOTH {
            let at = side(direction);
            let wanted = self.control_ack(direction).filter(|_| enabled);
            // The timestamp is the fast path's to keep current: not a change by itself.
            let rule = |entry: Option<ControlAck>| {
                entry.map(|entry| ControlAck {
                    last_tsval: [0; 4],
                    ..entry
                })
            };
            if rule(wanted) == rule(self.acks_written[at]) {
                continue;
            }
            let key = self.arriving_key(direction);
            self.acks_written[at] = match wanted {
                Some(entry) if maps.set_control_ack(key, entry) => Some(entry),
                _ => {
                    maps.remove_control_ack(key);
                    None
                }
            };
        }
    }

    /// Removes the connection's entries (it is going).
    pub(super) fn drop_control_acks(&mut self, maps: &mut dyn AlgMaps) {
        for direction in Direction::BOTH {
            if self.acks_written[side(direction)].take().is_some() {
                maps.remove_control_ack(self.arriving_key(direction));
            }
        }
    }

    /// Before the gateway sends a segment in `direction`'s sender's name: that sender's
    /// latest timestamp, which only the fast path may have seen (on an ACK it forwarded), so
    /// that the segment is not older than what its receiver has (PAWS, RFC 7323).
    pub(super) fn refresh_timestamp(&mut self, direction: Direction, maps: &mut dyn AlgMaps) {
        if self.acks_written[side(direction)].is_none() {
            return;
        }
        let Some(tsval) = maps.control_ack_tsval(self.arriving_key(direction)) else {
            return;
        };
        if let Some(template) = self.last_from[side(direction)].as_mut() {
            template.raise_tsval(tsval);
        }
    }
}

impl ControlTable {
    /// After a restore: the fast path's entries (pinned, the previous agent's) agree with the
    /// restored sessions: those of connections the table does not know go, the others are
    /// written as the sessions say now.
    pub fn adopt_control_acks(&mut self, maps: &mut dyn AlgMaps) {
        for key in maps.control_ack_keys() {
            if !self.flows.contains_key(&key) {
                maps.remove_control_ack(key);
            }
        }
        for connection in self.connections.values_mut() {
            for direction in Direction::BOTH {
                // Unknown to this agent: written afresh, or removed.
                connection.acks_written[side(direction)] = None;
                maps.remove_control_ack(connection.arriving_key(direction));
            }
            connection.sync_control_acks(self.settings.forward_pure_acks, maps);
        }
    }
}
