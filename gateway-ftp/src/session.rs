//! One FTP control connection through the gateway: both directions' streams, the lines that
//! announce data connections, and the expectations those need, as a plain state machine.
//!
//! The I/O shell feeds it every TCP segment of the connection, already address-translated,
//! with [`Session::on_segment`], and carries out the [`Action`]s in order: an expectation is
//! always returned before the segment whose line announces it, so the shell installs it in
//! the fast path before the receiver can act on the announcement.
//!
//! When the side that announces an endpoint sits behind the gateway (a published server's
//! `227`/`229`, a masqueraded client's `PORT`/`EPRT`), the line is rewritten to the public
//! endpoint and an [`Expectation`] maps that back. When the other side sits behind it (an
//! outside client's `PORT` to a published server), the line stays and an
//! [`OutboundExpectation`] gives the server's data connection its public source. An
//! announcement whose address is not the announcing side's own, or whose port is below 1024,
//! gets no expectation and is reported.

use std::sync::Arc;

pub use crate::endpoints::{
    Direction, Endpoints, Expectation, MIN_DATA_PORT, OutboundExpectation, PortAllocator,
};
use crate::{
    inspect::{Arrival, Inspector, LineViolation, Outcome},
    line::Line,
    policy::{Check, Policy, ViolationAction},
    state::ProtocolState,
    stream::{StreamError, StreamRewriter},
};

use gateway_common::control_ack::SeqShift;
/// TCP flag bits the session looks at: the ones the fast path reads too.
pub use gateway_common::tcp::flags;

/// The TCP fields of a segment that the session reads and rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSegment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// The window-scale option's shift, in a SYN that has one.
    pub window_scale: Option<u8>,
    /// SACK blocks, as (left, right) edges.
    pub sack: Vec<(u32, u32)>,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    InstallExpectation(Expectation),
    InstallOutboundExpectation(OutboundExpectation),
    Emit {
        direction: Direction,
        segment: TcpSegment,
    },
    /// A line that broke a rule, and what was done about it: `None` when it was reported only
    /// (the line that made a session not FTP under `not_ftp = "pass"`).
    Violation {
        direction: Direction,
        check: Check,
        reason: String,
        line: Vec<u8>,
        /// The user name given on the session so far, for the log.
        user: Option<String>,
        action: Option<ViolationAction>,
    },
    /// The session is over (a violation under `reset`): the shell removes its expectations;
    /// the RSTs to both sides are the `Emit`s just before.
    Terminate,
    /// The server accepted `AUTH` (policy `tls = "pass"`): the rest of the session is
    /// encrypted, passes unchanged, and is no longer inspected or translated.
    Encrypted,
    /// The client's stream is not FTP (see `Policy::not_ftp`): it never has a line rewritten
    /// or an expectation installed again. `passed`: it goes on as plain TCP (the shell removes
    /// the session's expectations); otherwise the RSTs and `Terminate` follow.
    NotFtp {
        reason: String,
        passed: bool,
    },
}

/// How the pure ACKs of one direction are rewritten (see [`Session::pure_acks`]): the shell
/// adds the connection's addresses and hands it to the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PureAcks {
    /// The sender's own sequence number, through its stream's edits.
    pub seq: SeqShift,
    /// The ACK number, back through the other stream's edits.
    pub ack: SeqShift,
    pub window_shrink: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("segment before the connection's SYN in that direction")]
    NotStarted,
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Serializable (serde), so that the agent can keep it across its own restart.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Session {
    endpoints: Endpoints,
    /// Each direction's stream (by [`Direction::index`]), from its SYN on.
    streams: [Option<StreamRewriter>; 2],
    /// Window-scale shifts announced in each side's SYN (client's, server's).
    window_scales: [Option<u8>; 2],
    /// What the operator allows. Not kept with the session's state: the shell gives a restored
    /// session the policy that applies to its server now ([`Session::set_policy`]).
    #[serde(skip)]
    policy: Arc<Policy>,
    state: ProtocolState,
    /// Ended by a reset: every further segment is dropped.
    terminated: bool,
    /// AUTH was accepted: the streams are opaque from here on.
    encrypted: bool,
    /// The client's stream turned out not to be FTP and passes as plain TCP (`not_ftp =
    /// "pass"`): nothing in it is inspected, rewritten or expected any more.
    #[serde(default)]
    not_ftp: bool,
    /// Lines no FTP client sends, seen after login (see `Policy::max_malformed_lines`).
    #[serde(default)]
    malformed_lines: usize,
    /// Per direction: the gateway acknowledged bytes on the receiver's behalf (held lines,
    /// its own replies), and so owes their delivery until the receiver acknowledges them.
    owed: [bool; 2],
    /// Per side (the sender's direction): the last window and ACK number that side sent, as
    /// the other side must see them: what the gateway puts in segments in that side's name.
    windows: [u16; 2],
    acks: [u32; 2],
}

impl Session {
    /// A session that follows the protocol state and enforces `policy` (which also bounds its
    /// lines: `max_line`). Every line is held until complete and judged before it passes.
    pub fn new(endpoints: Endpoints, policy: Arc<Policy>) -> Session {
        Session {
            endpoints,
            streams: [None, None],
            window_scales: [None; 2],
            policy,
            state: ProtocolState::new(),
            terminated: false,
            encrypted: false,
            not_ftp: false,
            malformed_lines: 0,
            owed: [false; 2],
            windows: [u16::MAX; 2],
            acks: [0; 2],
        }
    }

    /// The user name given on the session so far.
    pub fn user(&self) -> Option<&str> {
        self.state.user()
    }

    pub fn terminated(&self) -> bool {
        self.terminated
    }

    /// What the gateway owes in `direction` (bytes it acknowledged on the receiver's behalf
    /// that the receiver has not acknowledged yet): everything unacknowledged, to send again.
    /// The shell calls this on a timer; `None` once nothing is owed.
    pub fn resend_owed(&mut self, direction: Direction) -> Option<TcpSegment> {
        let at = direction.index();
        if !self.owed[at] || self.terminated {
            return None;
        }
        let stream = self.streams[at].as_ref()?;
        let Some(segment) = stream.unacknowledged() else {
            self.owed[at] = false;
            return None;
        };
        Some(TcpSegment {
            seq: segment.seq,
            ack: self.acks[at],
            flags: flags::ACK | flags::PSH,
            window: self.windows[at],
            window_scale: None,
            sack: Vec::new(),
            payload: segment.payload,
        })
    }

    /// Where the session stands, for listings: `reset`, `tls`, `not-ftp`, or the login state.
    pub fn phase(&self) -> &'static str {
        if self.terminated {
            "reset"
        } else if self.encrypted {
            "tls"
        } else if self.not_ftp {
            "not-ftp"
        } else {
            match self.state.login() {
                crate::state::Login::User => "login",
                crate::state::Login::Password { .. } => "password",
                crate::state::Login::Account { .. } => "account",
                crate::state::Login::LoggedIn { .. } => "logged-in",
            }
        }
    }

    /// Replaces the policy (a reload): it applies to the lines that come next.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.policy = policy;
    }

    pub fn on_segment(
        &mut self,
        direction: Direction,
        mut segment: TcpSegment,
        ports: &mut dyn PortAllocator,
    ) -> Result<Vec<Action>, SessionError> {
        let mut actions = Vec::new();
        if self.terminated {
            return Ok(actions);
        }
        let at = direction.index();
        if segment.flags & flags::SYN != 0 {
            self.window_scales[at] = segment.window_scale;
            if self.streams[at].is_none() {
                self.streams[at] = Some(StreamRewriter::new(
                    segment.seq.wrapping_add(1),
                    self.policy.max_line,
                ));
            }
            // A SYN's own sequence number is not mapped (it precedes the stream).
            if segment.flags & flags::ACK != 0 {
                segment.ack = self.ack_for(direction, segment.ack);
            }
            self.windows[at] = segment.window;
            actions.push(Action::Emit { direction, segment });
            return Ok(actions);
        }

        // The ACK, the window and SACK blocks speak of the other direction's stream.
        if segment.flags & flags::ACK != 0 {
            segment.ack = self.ack_for(direction, segment.ack);
            segment.window = self.window_for(direction, segment.window);
            if let Some(other) = self.streams[direction.opposite().index()].as_ref() {
                segment.sack = segment
                    .sack
                    .iter()
                    .filter_map(|&(left, right)| other.seq_map().sack_to_sender(left, right))
                    .collect();
            }
        }
        self.windows[at] = segment.window;
        self.acks[at] = segment.ack;
        if self.streams[at].is_none() {
            return Err(SessionError::NotStarted);
        }

        let payload = std::mem::take(&mut segment.payload);
        let policy = self.policy.clone();
        let [client, server] = &mut self.streams;
        let (stream, other) = match direction {
            Direction::ClientToServer => (client, server),
            Direction::ServerToClient => (server, client),
        };
        let Some(stream) = stream.as_mut() else {
            return Err(SessionError::NotStarted);
        };
        let mut inspector = Inspector {
            endpoints: &self.endpoints,
            ports,
            policy: &policy,
            state: &mut self.state,
            malformed_lines: &mut self.malformed_lines,
            holding: direction == Direction::ClientToServer && stream.held_lines() > 0,
            outcome: Outcome::default(),
        };
        // Client lines that a server reply releases (pipelined ones that waited for it).
        let mut released = Released::default();
        let result = if payload.is_empty() {
            Ok(Vec::new())
        } else {
            stream.on_segment(segment.seq, &payload, &mut |line: &Line| match direction {
                Direction::ClientToServer => inspector.client_line(line, Arrival::Fresh),
                Direction::ServerToClient => {
                    let action = inspector.server_line(line);
                    if let Some(client) = other.as_mut() {
                        released.release(client, &mut inspector);
                    }
                    action
                }
            })
        };
        let mut outcome = inspector.outcome;
        let mut outputs = match result {
            Ok(outputs) => outputs,
            Err(StreamError::LineTooLong(err)) => {
                // The line's end cannot be found within the bound: nothing after it can be
                // framed, so whatever the policy's action, the session ends.
                outcome.violations.push(LineViolation {
                    direction,
                    check: Check::LineTooLong,
                    reason: err.to_string(),
                    line: Vec::new(),
                    action: Some(ViolationAction::Reset),
                });
                outcome.reset = true;
                Vec::new()
            }
            Err(err) => return Err(err.into()),
        };
        if let Some(err) = released.error {
            return Err(err.into());
        }
        if self.state.tls_started() && !self.encrypted {
            // AUTH accepted: what follows is TLS, not lines.
            self.encrypted = true;
            for stream in self.streams.iter_mut().flatten() {
                stream.set_opaque();
            }
            actions.push(Action::Encrypted);
        }
        let user = self.state.user().map(str::to_owned);
        actions.extend(
            outcome
                .announced
                .into_iter()
                .map(Action::InstallExpectation),
        );
        actions.extend(
            outcome
                .outbound
                .into_iter()
                .map(Action::InstallOutboundExpectation),
        );
        actions.extend(
            outcome
                .violations
                .into_iter()
                .map(|violation| Action::Violation {
                    direction: violation.direction,
                    check: violation.check,
                    reason: violation.reason,
                    line: violation.line,
                    user: user.clone(),
                    action: violation.action,
                }),
        );
        let passed_as_tcp = outcome.not_ftp.is_some() && !outcome.reset;
        if let Some(reason) = outcome.not_ftp.take() {
            actions.push(Action::NotFtp {
                reason,
                passed: passed_as_tcp,
            });
        }
        if outcome.reset {
            actions.extend(self.reset_both());
            return Ok(actions);
        }
        if passed_as_tcp {
            // Plain TCP from here on: whatever waited goes as it is, after this segment's
            // own bytes, and nothing is framed into lines any more.
            self.not_ftp = true;
            if let Some(stream) = self.streams[at].as_mut() {
                outputs.extend(stream.release_unjudged());
            }
            for stream in self.streams.iter_mut().flatten() {
                stream.set_opaque();
            }
        }

        let Some(stream) = self.streams[at].as_mut() else {
            return Err(SessionError::NotStarted);
        };
        if segment.flags & flags::FIN != 0 {
            if stream.held_lines() > 0 {
                // The FIN follows the held lines, once they are released.
                stream.hold_fin();
                segment.flags &= !flags::FIN;
            } else {
                // The sender is done: a line it left unfinished goes out as it is, before the
                // FIN.
                outputs.extend(stream.flush());
            }
        }
        let sender_next = stream.next_seq();

        if outputs.is_empty() {
            // Nothing to carry (a pure ACK, a FIN, or data held back as part of an unfinished
            // line, or refused): the control bits and the ACK still go, positioned at the next
            // byte the receiver will get.
            segment.seq = if payload.is_empty() {
                stream.seq_to_receiver(segment.seq)
            } else {
                stream_next_seq(stream)
            };
            actions.push(Action::Emit { direction, segment });
        } else {
            let last = outputs.len() - 1;
            for (index, output) in outputs.into_iter().enumerate() {
                let mut emitted = segment.clone();
                emitted.seq = output.seq;
                emitted.payload = output.payload;
                if index != last {
                    emitted.flags &= !flags::FIN;
                }
                actions.push(Action::Emit {
                    direction,
                    segment: emitted,
                });
            }
        }

        // An unfinished line, or pipelined lines, are held back; a sender that waits for
        // their acknowledgement before sending more (Nagle) would wait forever. So the gateway
        // acknowledges them in the receiver's name, and owes their delivery from then on.
        let receiver = direction.opposite();
        let held = !payload.is_empty() && stream.holds_back();
        if held && let Some(peer) = self.streams[receiver.index()].as_ref() {
            actions.push(Action::Emit {
                direction: receiver,
                segment: TcpSegment {
                    seq: stream_next_seq(peer),
                    ack: sender_next,
                    flags: flags::ACK,
                    window: self.windows[receiver.index()],
                    window_scale: None,
                    sack: Vec::new(),
                    payload: Vec::new(),
                },
            });
            self.owed[at] = true;
        }

        // Pipelined client lines a reply released go to the server now, in the client's name;
        // the gateway acknowledged them when they came, so it owes them.
        if released.segment.is_some() || released.fin {
            let client_at = Direction::ClientToServer.index();
            let next = self.streams[client_at].as_ref().map(stream_next_seq);
            let mut segment = TcpSegment {
                seq: next.unwrap_or_default(),
                ack: self.acks[client_at],
                flags: flags::ACK,
                window: self.windows[client_at],
                window_scale: None,
                sack: Vec::new(),
                payload: Vec::new(),
            };
            if let Some(output) = released.segment {
                segment.seq = output.seq;
                segment.payload = output.payload;
                segment.flags |= flags::PSH;
                self.owed[client_at] = true;
            }
            if released.fin {
                segment.flags |= flags::FIN;
            }
            actions.push(Action::Emit {
                direction: Direction::ClientToServer,
                segment,
            });
        }

        // Rejected commands are answered in the server's name, acknowledging them; the
        // gateway owes those replies until the client acknowledges them (the server knows
        // nothing of them, so nobody else would send them again).
        let client_next = self.streams[Direction::ClientToServer.index()]
            .as_ref()
            .map_or(sender_next, StreamRewriter::next_seq);
        let server_at = Direction::ServerToClient.index();
        if !outcome.rejections.is_empty()
            && let Some(server) = self.streams[server_at].as_mut()
        {
            for reply in outcome.rejections {
                if let Some(injected) = server.inject(reply.as_bytes())? {
                    actions.push(Action::Emit {
                        direction: Direction::ServerToClient,
                        segment: TcpSegment {
                            seq: injected.seq,
                            ack: client_next,
                            flags: flags::ACK | flags::PSH,
                            window: self.windows[server_at],
                            window_scale: None,
                            sack: Vec::new(),
                            payload: injected.payload,
                        },
                    });
                    self.owed[server_at] = true;
                }
            }
        }
        Ok(actions)
    }

    /// RSTs to both sides, each at the sequence number its receiver expects next, and the
    /// end of the session.
    fn reset_both(&mut self) -> Vec<Action> {
        self.terminated = true;
        let mut actions = Vec::new();
        let [Some(client), Some(server)] = &self.streams else {
            actions.push(Action::Terminate);
            return actions;
        };
        let rst = |seq: u32, ack: u32| TcpSegment {
            seq,
            ack,
            flags: flags::RST | flags::ACK,
            window: 0,
            window_scale: None,
            sack: Vec::new(),
            payload: Vec::new(),
        };
        actions.push(Action::Emit {
            direction: Direction::ServerToClient,
            segment: rst(stream_next_seq(server), client.next_seq()),
        });
        actions.push(Action::Emit {
            direction: Direction::ClientToServer,
            segment: rst(stream_next_seq(client), server.next_seq()),
        });
        actions.push(Action::Terminate);
        actions
    }

    /// The window a segment in `direction` advertises, as the other side must see it: less
    /// the growth of rewrites in flight towards this side, so the other side never sends
    /// past this side's real right edge.
    fn window_for(&self, direction: Direction, window: u16) -> u16 {
        window.saturating_sub(self.window_shrink(direction))
    }

    /// Whether bytes the gateway acknowledged in `direction`'s receiver's name still wait for
    /// that receiver's ACK.
    fn owes(&self, direction: Direction) -> bool {
        let at = direction.index();
        self.owed[at]
            && self.streams[at]
                .as_ref()
                .is_some_and(|stream| !stream.all_acknowledged())
    }

    /// Window units (of `direction`'s sender's scale) its advertised window shrinks by: the
    /// other direction's growth still in flight.
    fn window_shrink(&self, direction: Direction) -> u16 {
        let growth = self.streams[direction.opposite().index()]
            .as_ref()
            .map_or(0, |stream| stream.seq_map().unacknowledged_growth());
        if growth == 0 {
            return 0;
        }
        // Windows are scaled only when both SYNs carried the option (RFC 7323 2.2).
        let shift = match self.window_scales {
            [Some(_), Some(_)] => self.window_scales[direction.index()].unwrap_or(0).min(14),
            _ => 0,
        };
        growth.div_ceil(1u64 << shift).min(u64::from(u16::MAX)) as u16
    }

    /// What the fast path may do with the pure ACKs `direction`'s sender sends, without this
    /// session (see `gateway_common::control_ack`). `None` while the session must see them:
    /// before both SYNs, once it is reset, while either stream holds bytes back (an
    /// unfinished or a pipelined line), and while it owes bytes it acknowledged in a
    /// receiver's name (the receiver's ACK is what settles them).
    pub fn pure_acks(&self, direction: Direction) -> Option<PureAcks> {
        if self.terminated || Direction::BOTH.iter().any(|&side| self.owes(side)) {
            return None;
        }
        let own = self.streams[direction.index()].as_ref()?;
        let other = self.streams[direction.opposite().index()].as_ref()?;
        if [own, other]
            .iter()
            .any(|stream| stream.holds_back() || stream.held_lines() > 0)
        {
            return None;
        }
        Some(PureAcks {
            seq: own.seq_map().forward_shift()?,
            ack: other.seq_map().backward_shift()?,
            window_shrink: self.window_shrink(direction),
        })
    }

    /// An ACK carried by a segment in `direction` acknowledges the opposite stream.
    fn ack_for(&mut self, direction: Direction, ack: u32) -> u32 {
        self.streams[direction.opposite().index()]
            .as_mut()
            .map_or(ack, |stream| stream.on_ack(ack))
    }
}

/// What server replies released of the client's held lines, during one server segment.
#[derive(Default)]
struct Released {
    segment: Option<crate::stream::Segment>,
    fin: bool,
    error: Option<StreamError>,
}

impl Released {
    /// Releases what the client stream holds, if the reply just read left nothing unanswered.
    fn release(&mut self, client: &mut StreamRewriter, inspector: &mut Inspector<'_>) {
        if client.held_lines() == 0 || inspector.state.awaiting_reply() || self.error.is_some() {
            return;
        }
        inspector.holding = false;
        match client.release(&mut |line| inspector.client_line(line, Arrival::Released)) {
            Ok((segment, fin)) => {
                self.fin |= fin;
                match (self.segment.as_mut(), segment) {
                    (Some(earlier), Some(segment)) => {
                        earlier.payload.extend_from_slice(&segment.payload)
                    }
                    (None, segment) => self.segment = segment,
                    (Some(_), None) => {}
                }
            }
            Err(err) => self.error = Some(err),
        }
    }
}

/// The receiver-side sequence number of the next byte the stream will send.
fn stream_next_seq(stream: &StreamRewriter) -> u32 {
    let map = stream.seq_map();
    map.base_seq()
        .wrapping_add(map.to_receiver(stream.sent_up_to()) as u32)
}

#[cfg(test)]
mod tests;
