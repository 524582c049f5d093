//! A segment of a known control connection: through its FTP session, and what the session's
//! actions mean for the maps, the log and the packets sent on.

use gateway_common::{Endpoint, ExpectationEntry, ExpectationKey, ExpectationKind, IPPROTO_TCP};
use gateway_ftp::{
    policy::ViolationAction,
    session::{Action, Direction, SessionError, TcpSegment, flags},
};

use super::{
    AlgMaps, ControlTable, Outgoing, emit, expect, ports::DataPorts, side, stats::check_index,
};
use crate::alg::packet::{DEFAULT_MSS, TcpPacket};

impl ControlTable {
    pub(super) fn on_segment(
        &mut self,
        id: u64,
        direction: Direction,
        mut packet: TcpPacket,
        now_ns: u64,
        maps: &mut dyn AlgMaps,
    ) -> Vec<Outgoing> {
        // The payload goes to the core; the headers stay as the template of what is sent,
        // so nothing on this path copies the payload.
        let payload = std::mem::take(&mut packet.payload);
        let Some(connection) = self.connections.get_mut(&id) else {
            return Vec::new();
        };
        if packet.ttl <= 1 {
            // The kernel would answer with time-exceeded; the ALG only drops it.
            self.stats.drop_ttl += 1;
            return Vec::new();
        }
        connection.last_seen_ns = now_ns;
        connection.last_from[side(direction)] = Some(packet.clone());
        if packet.flags & flags::SYN != 0 {
            let mss = packet.mss().unwrap_or(DEFAULT_MSS);
            match direction {
                Direction::ClientToServer => connection.mss_to_client = mss,
                Direction::ServerToClient => connection.mss_to_server = mss,
            }
        } else {
            connection.established = true;
        }
        if packet.flags & flags::RST != 0 {
            connection.reset = true;
        }
        if packet.flags & flags::FIN != 0 {
            match direction {
                Direction::ClientToServer => connection.fin_from_client = true,
                Direction::ServerToClient => connection.fin_from_server = true,
            }
        }

        let segment = TcpSegment {
            seq: packet.seq,
            ack: packet.ack,
            flags: packet.flags,
            window: packet.window,
            window_scale: packet.window_scale(),
            sack: packet.sack(),
            payload,
        };
        let expectation_until = now_ns.saturating_add(self.settings.expectation_timeout_ns);
        let pending = connection
            .expectations
            .iter()
            .filter(|(_, expires)| *expires >= now_ns)
            .map(|(key, _)| *key)
            .collect();
        let mut ports = DataPorts {
            rng: &mut self.rng,
            maps: &mut *maps,
            settings: &self.settings,
            claimed: Vec::new(),
            pending,
            announced: 0,
            max_pending: connection.policy.max_pending_expectations,
        };
        let actions = match connection.core.on_segment(direction, segment, &mut ports) {
            Ok(actions) => actions,
            Err(err) => {
                self.stats.drop_stream_error += 1;
                let level_error = !matches!(err, SessionError::NotStarted);
                if level_error {
                    tracing::warn!(
                        client = %connection.client, server = %connection.server,
                        "ftp control stream refused: {err}"
                    );
                }
                return Vec::new();
            }
        };
        let claimed = std::mem::take(&mut ports.claimed);
        connection.held.extend(
            claimed
                .into_iter()
                .map(|public| (public, expectation_until)),
        );

        let mut outgoing = Vec::new();
        for action in actions {
            match action {
                Action::InstallExpectation(expectation) => {
                    let ends = expect::Ends {
                        client: connection.client,
                        client_seen: connection.client_seen,
                        server: connection.server,
                        server_seen: connection.server_seen,
                    };
                    let (key, entry) =
                        expect::entry(&ends, direction, &expectation, expectation_until);
                    self.stats.expectations += 1;
                    if maps.expect(key, entry) {
                        connection.expectations.push((key, expectation_until));
                    } else {
                        self.stats.expectation_install_failed += 1;
                    }
                    tracing::debug!(
                        peer = %expectation.peer, public = %expectation.public,
                        private = %expectation.private, "expectation installed"
                    );
                }
                Action::InstallOutboundExpectation(expectation) => {
                    let key = ExpectationKey {
                        endpoint: Endpoint::from_socket(expectation.to, IPPROTO_TCP),
                        peer: expectation.opener.octets(),
                    };
                    let entry = ExpectationEntry {
                        target: Endpoint::new(expectation.source.octets(), [0; 2], IPPROTO_TCP),
                        kind: ExpectationKind::Outbound as u8,
                        _pad: [0; 3],
                        source: [0; 4],
                        expires_ns: expectation_until,
                    };
                    self.stats.expectations += 1;
                    if maps.expect(key, entry) {
                        connection.expectations.push((key, expectation_until));
                    } else {
                        self.stats.expectation_install_failed += 1;
                    }
                }
                Action::Emit {
                    direction: sent,
                    segment,
                } => {
                    if sent != direction {
                        // In the other side's name: not older than what that side sent last.
                        connection.refresh_timestamp(sent, maps);
                    }
                    emit(connection, &packet, sent, segment, &mut outgoing);
                }
                Action::Violation {
                    direction,
                    check,
                    reason,
                    line,
                    user,
                    action,
                } => {
                    self.stats.violations += 1;
                    self.stats.violations_by_check[check_index(check)] += 1;
                    tracing::warn!(
                        client = %connection.client,
                        server = %connection.server,
                        user = user.as_deref().unwrap_or("-"),
                        from = if direction == Direction::ClientToServer { "client" } else { "server" },
                        line = %String::from_utf8_lossy(&line).trim_end(),
                        check = check.name(),
                        action = action.map_or("reported", |action| match action {
                            ViolationAction::Drop => "drop",
                            ViolationAction::Reject => "reject",
                            ViolationAction::Reset => "reset",
                        }),
                        "ftp policy violation: {reason}"
                    );
                }
                Action::Encrypted => {
                    self.stats.sessions_encrypted += 1;
                    tracing::info!(
                        client = %connection.client,
                        server = %connection.server,
                        "ftp control session switched to TLS: no longer inspected, its data connections are not opened by the ALG"
                    );
                }
                Action::NotFtp { reason, passed } => {
                    self.stats.not_ftp += 1;
                    tracing::warn!(
                        client = %connection.client,
                        server = %connection.server,
                        outcome = if passed { "passed as plain TCP" } else { "reset" },
                        "ftp control session is not FTP: {reason}; nothing in it is rewritten or expected from now on"
                    );
                    if passed {
                        for (key, _) in connection.expectations.drain(..) {
                            maps.unexpect(key);
                        }
                    }
                }
                Action::Terminate => {
                    connection.reset = true;
                    self.stats.sessions_reset += 1;
                    for (key, _) in connection.expectations.drain(..) {
                        maps.unexpect(key);
                    }
                }
            }
        }
        self.stats.emitted += outgoing.len() as u64;
        outgoing
    }
}
