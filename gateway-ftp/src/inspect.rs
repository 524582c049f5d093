//! The inspection of complete lines: the policy's checks of a client's command and a server's
//! reply, the announcements (`PORT`/`EPRT`/`227`/`229`) and what they become, and the protocol
//! state they drive. The session (`session.rs`) carries the TCP side; it hands every complete
//! line here and carries out what comes back.

use std::net::SocketAddrV4;

use crate::{
    line::Line,
    parse::{self, ExtendedAddress},
    policy::{Check, Policy, TlsPolicy, ViolationAction},
    rewrite,
    session::{
        Direction, Endpoints, Expectation, MIN_DATA_PORT, OutboundExpectation, PortAllocator,
    },
    state::ProtocolState,
    stream::LineAction,
};

/// What a line's checks decided.
enum Verdict {
    Pass,
    Rewrite {
        new_line: Vec<u8>,
        expectation: Expectation,
    },
    Outbound(OutboundExpectation),
    Violation(Check, String),
}

/// What happened to the lines of one segment, collected while the stream runs the checks.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) announced: Vec<Expectation>,
    pub(crate) outbound: Vec<OutboundExpectation>,
    pub(crate) violations: Vec<(Check, String, Vec<u8>, Option<ViolationAction>)>,
    /// Replies for the client in the gateway's name (rejected commands).
    pub(crate) rejections: Vec<&'static str>,
    pub(crate) reset: bool,
}

/// Runs a complete line through the checks (with a policy), the announcement logic, and the
/// protocol state; returns what the stream does with it.
pub(crate) fn judge(
    direction: Direction,
    line: &Line,
    endpoints: &Endpoints,
    ports: &mut dyn PortAllocator,
    policy: Option<&Policy>,
    state: &mut ProtocolState,
    outcome: &mut Outcome,
) -> LineAction {
    if outcome.reset {
        // The session is being reset: nothing more of this segment goes through.
        return LineAction::Replace(Vec::new());
    }
    if state.tls_started() {
        return LineAction::Keep;
    }
    let content = strip_telnet(line.content());
    let mut command = None;
    let verdict = match (direction, policy) {
        (Direction::ClientToServer, Some(policy)) => {
            match check_command(line, content, state, policy) {
                Ok(parsed) => {
                    command = Some(parsed);
                    verdict_of(announcement(direction, line, endpoints, ports))
                }
                Err((check, reason)) => Verdict::Violation(check, reason),
            }
        }
        (Direction::ServerToClient, Some(_)) => match check_reply(line, content) {
            Ok(()) => verdict_of(announcement(direction, line, endpoints, ports)),
            Err((check, reason)) => Verdict::Violation(check, reason),
        },
        (_, None) => verdict_of(announcement(direction, line, endpoints, ports)),
    };
    // The state follows what the server really said, and the commands that really went.
    if direction == Direction::ServerToClient {
        let reply = parse::reply_line(content).map(|reply| (reply.code, reply.continued));
        state.on_reply_line(reply, content);
    }
    let action = match verdict {
        Verdict::Pass => LineAction::Keep,
        Verdict::Outbound(expectation) => {
            outcome.outbound.push(expectation);
            LineAction::Keep
        }
        Verdict::Rewrite {
            new_line,
            expectation,
        } => {
            outcome.announced.push(expectation);
            LineAction::Replace(new_line)
        }
        Verdict::Violation(check, reason) => {
            let Some(policy) = policy else {
                // Without a policy the line is reported, and passes as it is.
                outcome
                    .violations
                    .push((check, reason, line.bytes.clone(), None));
                return LineAction::Keep;
            };
            let action = policy.on_violation;
            outcome
                .violations
                .push((check, reason, line.bytes.clone(), Some(action)));
            return match action {
                ViolationAction::Drop => LineAction::Replace(Vec::new()),
                ViolationAction::Reset => {
                    outcome.reset = true;
                    LineAction::Replace(Vec::new())
                }
                ViolationAction::Reject => match direction {
                    Direction::ClientToServer => {
                        outcome.rejections.push(check.reject_reply());
                        LineAction::Replace(Vec::new())
                    }
                    // A refused reply is replaced by a failure the client understands (a text
                    // line inside a multi-line reply just goes).
                    Direction::ServerToClient => {
                        if parse::reply_line(content).is_some_and(|reply| !reply.continued) {
                            LineAction::Replace(REFUSED_REPLY.as_bytes().to_vec())
                        } else {
                            LineAction::Replace(Vec::new())
                        }
                    }
                },
            };
        }
    };
    if let Some((verb, argument)) = command {
        state.on_command(&verb, &argument);
    }
    action
}

/// What the client gets instead of a server reply the policy refused.
const REFUSED_REPLY: &str = "451 Reply refused by the gateway.\r\n";

fn verdict_of(announcement: Announcement) -> Verdict {
    match announcement {
        Announcement::None => Verdict::Pass,
        Announcement::Outbound(expectation) => Verdict::Outbound(expectation),
        Announcement::Rewrite {
            new_line,
            expectation,
        } => Verdict::Rewrite {
            new_line,
            expectation,
        },
        Announcement::Refused(check, reason) => Verdict::Violation(check, reason),
    }
}

/// The checks of a client's line, in order; the command's verb and argument when it passes.
fn check_command(
    line: &Line,
    content: &[u8],
    state: &ProtocolState,
    policy: &Policy,
) -> Result<(String, String), (Check, String)> {
    if line.has_nul_or_bare_cr() {
        return Err((Check::NulOrBareCr, "NUL or bare CR inside a command".into()));
    }
    if parse::reply_line(content).is_some() {
        return Err((
            Check::SpoofedDirection,
            "a reply code from the client".into(),
        ));
    }
    let Some(command) = parse::command_line(content) else {
        return Err((Check::Malformed, "not a command".into()));
    };
    let verb = command.verb.clone();
    let argument = String::from_utf8_lossy(command.argument).into_owned();
    if policy.command_denied(&verb) {
        return Err((Check::DeniedCommand, format!("{verb} is denied")));
    }
    if verb == "AUTH" && policy.tls == TlsPolicy::Deny {
        return Err((Check::Tls, format!("AUTH {argument} while TLS is denied")));
    }
    state
        .check_command(&verb, policy)
        .map_err(|why| (Check::OutOfState, why.0))?;
    if verb == "USER" && !policy.user_allowed(&argument) {
        return Err((
            Check::ForbiddenUser,
            format!("user {argument:?} is not allowed"),
        ));
    }
    if verb != "PORT" && verb != "EPRT" && embedded_address(command.argument) {
        return Err((
            Check::Embedded,
            format!("a data address inside {verb}'s argument"),
        ));
    }
    Ok((verb, argument))
}

/// The checks of a server's line.
fn check_reply(line: &Line, content: &[u8]) -> Result<(), (Check, String)> {
    if line.has_nul_or_bare_cr() {
        return Err((Check::NulOrBareCr, "NUL or bare CR inside a reply".into()));
    }
    if let Some(command) = parse::command_line(content)
        && matches!(command.verb.as_str(), "PORT" | "EPRT")
    {
        return Err((
            Check::SpoofedDirection,
            format!("{} from the server", command.verb),
        ));
    }
    let announcing = parse::reply_line(content)
        .is_some_and(|reply| !reply.continued && matches!(reply.code, 227 | 229));
    if !announcing && embedded_address(content) {
        return Err((
            Check::Embedded,
            "a data address inside a reply that announces none".into(),
        ));
    }
    Ok(())
}

/// Leading Telnet commands (IAC IP, IAC DM, as clients send before ABOR), which are not part of
/// the command.
fn strip_telnet(content: &[u8]) -> &[u8] {
    let mut rest = content;
    loop {
        match rest {
            [0xff, 0xff, ..] => return rest,
            [0xff, _, tail @ ..] => rest = tail,
            [0xf2, tail @ ..] => rest = tail,
            _ => return rest,
        }
    }
}

/// Whether `text` holds something a lax ALG would take for a data address: six comma-separated
/// numbers (`h1,h2,h3,h4,p1,p2`) or an extended `|1|addr|port|` / `|2|addr|port|`.
pub fn embedded_address(text: &[u8]) -> bool {
    if text.windows(3).any(|w| w == b"|1|" || w == b"|2|") {
        return true;
    }
    let mut fields = 0;
    let mut digits = 0;
    for &byte in text {
        match byte {
            b'0'..=b'9' => {
                digits += 1;
                if digits > 3 {
                    fields = 0;
                }
            }
            b',' if (1..=3).contains(&digits) => {
                fields += 1;
                digits = 0;
            }
            _ => {
                if (1..=3).contains(&digits) && fields >= 5 {
                    return true;
                }
                fields = 0;
                digits = 0;
            }
        }
    }
    (1..=3).contains(&digits) && fields >= 5
}

enum Announcement {
    None,
    Outbound(OutboundExpectation),
    Rewrite {
        new_line: Vec<u8>,
        expectation: Expectation,
    },
    Refused(Check, String),
}

/// Reads a complete candidate line: is it an announcement this side makes from behind the
/// gateway, and if so what it becomes.
fn announcement(
    direction: Direction,
    line: &Line,
    endpoints: &Endpoints,
    ports: &mut dyn PortAllocator,
) -> Announcement {
    let content = line.content();
    // (announced endpoint, span to replace, how to write the replacement, sender's real and
    // seen addresses, the peer that will connect)
    let (endpoint, span, form) = match direction {
        Direction::ServerToClient => match parse::reply_line(content) {
            Some(reply) if reply.code == 227 => match parse::passive_reply(content) {
                Ok(announced) => (announced.endpoint, announced.span, Form::HostPort),
                Err(err) => {
                    return Announcement::Refused(
                        Check::Malformed,
                        format!("malformed 227: {err}"),
                    );
                }
            },
            Some(reply) if reply.code == 229 => match parse::extended_passive_reply(content) {
                Ok((port, span)) => (
                    SocketAddrV4::new(endpoints.server_real, port),
                    span,
                    Form::PortOnly,
                ),
                Err(err) => {
                    return Announcement::Refused(
                        Check::Malformed,
                        format!("malformed 229: {err}"),
                    );
                }
            },
            _ => return Announcement::None,
        },
        Direction::ClientToServer => {
            let Some(command) = parse::command_line(content) else {
                return Announcement::None;
            };
            match command.verb.as_str() {
                "PORT" => match parse::port_argument(&command) {
                    Ok(announced) => (announced.endpoint, announced.span, Form::HostPort),
                    Err(err) => {
                        return Announcement::Refused(
                            Check::Malformed,
                            format!("malformed PORT: {err}"),
                        );
                    }
                },
                "EPRT" => match parse::eprt_argument(&command) {
                    Ok(ExtendedAddress::V4 {
                        announced,
                        delimiter,
                    }) => (announced.endpoint, announced.span, Form::Eprt(delimiter)),
                    Ok(ExtendedAddress::V6 { .. }) => {
                        return Announcement::Refused(
                            Check::Malformed,
                            "EPRT with an IPv6 address through a NAT44".into(),
                        );
                    }
                    Err(err) => {
                        return Announcement::Refused(
                            Check::Malformed,
                            format!("malformed EPRT: {err}"),
                        );
                    }
                },
                _ => return Announcement::None,
            }
        }
    };
    let (real, seen, peer, peer_seen) = match direction {
        Direction::ServerToClient => (
            endpoints.server_real,
            endpoints.server_seen,
            endpoints.client_real,
            endpoints.client_seen,
        ),
        Direction::ClientToServer => (
            endpoints.client_real,
            endpoints.client_seen,
            endpoints.server_real,
            endpoints.server_seen,
        ),
    };
    if *endpoint.ip() != real {
        return Announcement::Refused(
            Check::Bounce,
            format!("announces {} but the sender is {real}", endpoint.ip()),
        );
    }
    if endpoint.port() < MIN_DATA_PORT {
        return Announcement::Refused(
            Check::LowPort,
            format!("data port {} is below {MIN_DATA_PORT}", endpoint.port()),
        );
    }
    if (real != seen || peer != peer_seen) && !ports.may_expect() {
        return Announcement::Refused(
            Check::TooManyExpectations,
            "too many data connections announced and not yet opened".into(),
        );
    }
    if real == seen {
        // The announcer is not behind the gateway: nothing to translate in the line. If the
        // other side is, it will open the data connection from behind, and needs its source
        // translated on the way out.
        return if peer != peer_seen {
            Announcement::Outbound(OutboundExpectation {
                opener: peer,
                to: endpoint,
                source: peer_seen,
            })
        } else {
            Announcement::None
        };
    }
    let Some(public_port) = ports.allocate(seen, endpoint) else {
        return Announcement::Refused(
            Check::TooManyExpectations,
            "no public port free for the data connection".into(),
        );
    };
    let public = SocketAddrV4::new(seen, public_port);
    let text = match form {
        Form::HostPort => rewrite::host_port_text(public),
        Form::Eprt(delimiter) => rewrite::eprt_text(public, delimiter),
        Form::PortOnly => public_port.to_string(),
    };
    Announcement::Rewrite {
        new_line: rewrite::splice(&line.bytes, span, text.as_bytes()),
        expectation: Expectation {
            peer,
            public,
            private: endpoint,
        },
    }
}

enum Form {
    HostPort,
    Eprt(u8),
    PortOnly,
}
