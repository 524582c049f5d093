//! The inspection of complete lines: the policy's checks of a client's command and a server's
//! reply, the announcements (`PORT`/`EPRT`/`227`/`229`) and what they become, and the protocol
//! state they drive. The session (`session.rs`) carries the TCP side; it hands every complete
//! line here and carries out what comes back.

use std::net::SocketAddrV4;

use crate::{
    endpoints::{
        Direction, Endpoints, Expectation, MIN_DATA_PORT, OutboundExpectation, PortAllocator,
    },
    line::Line,
    parse::{self, ExtendedAddress},
    policy::{Check, NotFtpAction, Policy, TlsPolicy, ViolationAction},
    rewrite,
    state::{OUT_OF_BAND, ProtocolState},
    stream::LineAction,
};

/// What a line's checks and its announcement decided.
enum Verdict {
    Pass,
    /// An announcement from behind the gateway: the line is rewritten to the public endpoint
    /// and the expectation maps that back.
    Rewrite {
        new_line: Vec<u8>,
        expectation: Expectation,
    },
    /// An outside client's announcement to a published server: the line stays, the server's
    /// data connection gets its public source.
    Outbound(OutboundExpectation),
    Violation(Check, String),
}

/// What happened to the lines of one segment, collected while the stream runs the checks.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) announced: Vec<Expectation>,
    pub(crate) outbound: Vec<OutboundExpectation>,
    pub(crate) violations: Vec<LineViolation>,
    /// Replies for the client in the gateway's name (rejected commands), to inject now.
    pub(crate) rejections: Vec<&'static str>,
    pub(crate) reset: bool,
    /// The session turned out not to be FTP, and why.
    pub(crate) not_ftp: Option<String>,
}

/// A line that broke a rule, and what was done about it.
pub(crate) struct LineViolation {
    /// The direction of the line (a server's reply can release a client's held line).
    pub(crate) direction: Direction,
    pub(crate) check: Check,
    pub(crate) reason: String,
    pub(crate) line: Vec<u8>,
    /// `None`: reported only.
    pub(crate) action: Option<ViolationAction>,
}

/// How a client's line reaches the inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// As it arrives from the client.
    Fresh,
    /// Held as pipelined when it arrived, released now that the reply before it passed.
    Released,
}

/// Commands of RFC 959 and of the extensions clients use (RFC 775, 1639, 2228, 2389, 2428,
/// 2640, 3659, 7151, and common drafts). Before login a line with any other verb is not FTP:
/// an HTTP request's `GET`/`POST` line is what NAT slipstreaming sends to port 21.
const FTP_COMMANDS: &[&str] = &[
    "ABOR", "ACCT", "ADAT", "ALLO", "APPE", "AUTH", "AVBL", "CCC", "CDUP", "CLNT", "CONF", "CSID",
    "CWD", "DELE", "DSIZ", "ENC", "EPRT", "EPSV", "FEAT", "HASH", "HELP", "HOST", "LANG", "LIST",
    "LPRT", "LPSV", "MDTM", "MFCT", "MFF", "MFMT", "MIC", "MKD", "MLSD", "MLST", "MODE", "NLST",
    "NOOP", "OPTS", "PASS", "PASV", "PBSZ", "PORT", "PROT", "PWD", "QUIT", "REIN", "REST", "RETR",
    "RMD", "RNFR", "RNTO", "SITE", "SIZE", "SMNT", "SPSV", "STAT", "STOR", "STOU", "STRU", "SYST",
    "THMB", "TYPE", "USER", "XCUP", "XCWD", "XMKD", "XPWD", "XRMD",
];

/// Everything the inspection of one segment's lines reads and changes.
pub(crate) struct Inspector<'a> {
    pub(crate) endpoints: &'a Endpoints,
    pub(crate) ports: &'a mut dyn PortAllocator,
    pub(crate) policy: &'a Policy,
    pub(crate) state: &'a mut ProtocolState,
    /// Lines no FTP client sends, seen after login so far (the session's count).
    pub(crate) malformed_lines: &'a mut usize,
    /// The client's stream holds lines: every later line waits behind them.
    pub(crate) holding: bool,
    pub(crate) outcome: Outcome,
}

impl Inspector<'_> {
    /// A complete line from the client: classified, held while the reply before it is due
    /// (pipelining off), checked, its announcement acted on, and the state advanced.
    pub(crate) fn client_line(&mut self, line: &Line, arrival: Arrival) -> LineAction {
        if self.outcome.reset {
            // The session is being reset: nothing more of this segment goes through.
            return LineAction::Replace(Vec::new());
        }
        if self.outcome.not_ftp.is_some() || self.state.tls_started() {
            // Not inspected any more (passed through as plain TCP, or encrypted).
            return LineAction::Keep;
        }
        let policy = self.policy;
        let content = strip_telnet(line.content());
        // Whether the line is FTP at all is judged as it arrives, pipelined or not: a stream
        // that is not FTP is caught at its first such line.
        let command = match classify_command(line, content, self.state.logged_in()) {
            Ok(command) => command,
            Err((check, reason)) => return self.not_an_ftp_line(line, check, reason),
        };
        let verb = command.verb.as_str();
        if !policy.pipelining
            && (self.holding || (self.state.awaiting_reply() && !OUT_OF_BAND.contains(&verb)))
        {
            // It waits for the reply before it, so that it is judged in the state that reply
            // makes, and the server answers one command at a time.
            self.holding = true;
            return LineAction::Hold;
        }
        let pipelined = arrival == Arrival::Released || self.state.awaiting_reply();
        let verdict = match check_command(&command, self.state, policy, pipelined) {
            Ok(()) => announcement(Direction::ClientToServer, line, self.endpoints, self.ports),
            Err((check, reason)) => Verdict::Violation(check, reason),
        };
        let passes = !matches!(verdict, Verdict::Violation(..));
        let action = self.act(Direction::ClientToServer, line, verdict);
        if passes {
            let argument = String::from_utf8_lossy(command.argument);
            self.state.on_command(verb, &argument);
        }
        action
    }

    /// A complete line from the server: checked, its announcement acted on (the first line
    /// of a `227`/`229` reply only), and the state advanced. Refusals that fall due behind the
    /// reply it completes follow it, in the server's name, so the client reads every reply in
    /// the order of its commands.
    pub(crate) fn server_line(&mut self, line: &Line) -> LineAction {
        if self.outcome.reset {
            return LineAction::Replace(Vec::new());
        }
        if self.outcome.not_ftp.is_some() || self.state.tls_started() {
            return LineAction::Keep;
        }
        let content = strip_telnet(line.content());
        let first_of_reply = !self.state.inside_multiline_reply();
        let verdict = match check_reply(line, content, first_of_reply) {
            Ok(()) if first_of_reply => {
                announcement(Direction::ServerToClient, line, self.endpoints, self.ports)
            }
            Ok(()) => Verdict::Pass,
            Err((check, reason)) => Verdict::Violation(check, reason),
        };
        // The state follows what the server really said.
        let reply = parse::reply_line(content).map(|reply| (reply.code, reply.continued));
        let due = self.state.on_reply_line(reply);
        let action = self.act(Direction::ServerToClient, line, verdict);
        if due.is_empty() {
            return action;
        }
        let mut bytes = match action {
            LineAction::Replace(bytes) => bytes,
            LineAction::Keep | LineAction::Hold => line.bytes.clone(),
        };
        for check in due {
            bytes.extend_from_slice(check.reject_reply().as_bytes());
        }
        LineAction::Replace(bytes)
    }

    /// A line no FTP client sends. Before login the session is not FTP from then on; after
    /// login it is once `max_malformed_lines` of them have come; until then it is a violation
    /// like any other.
    fn not_an_ftp_line(&mut self, line: &Line, check: Check, reason: String) -> LineAction {
        let policy = self.policy;
        let logged_in = self.state.logged_in();
        if logged_in {
            *self.malformed_lines += 1;
            if *self.malformed_lines < policy.max_malformed_lines {
                return self.act(
                    Direction::ClientToServer,
                    line,
                    Verdict::Violation(check, reason),
                );
            }
        }
        let why = if logged_in {
            format!(
                "{reason}: the {} line after login that no FTP client sends",
                ordinal(*self.malformed_lines)
            )
        } else {
            format!("{reason}, before login")
        };
        let (action, logged) = match policy.not_ftp {
            NotFtpAction::Reset => {
                self.outcome.reset = true;
                (
                    LineAction::Replace(Vec::new()),
                    Some(ViolationAction::Reset),
                )
            }
            // Reported; from here on the connection is plain TCP.
            NotFtpAction::Pass => (LineAction::Keep, None),
        };
        self.outcome.violations.push(LineViolation {
            direction: Direction::ClientToServer,
            check,
            reason: why.clone(),
            line: line.bytes.clone(),
            action: logged,
        });
        self.outcome.not_ftp = Some(why);
        action
    }

    /// What the stream does with a line, given its verdict.
    fn act(&mut self, direction: Direction, line: &Line, verdict: Verdict) -> LineAction {
        match verdict {
            Verdict::Pass => LineAction::Keep,
            Verdict::Outbound(expectation) => {
                self.outcome.outbound.push(expectation);
                LineAction::Keep
            }
            Verdict::Rewrite {
                new_line,
                expectation,
            } => {
                self.outcome.announced.push(expectation);
                LineAction::Replace(new_line)
            }
            Verdict::Violation(check, reason) => self.violation(direction, line, check, reason),
        }
    }

    fn violation(
        &mut self,
        direction: Direction,
        line: &Line,
        check: Check,
        reason: String,
    ) -> LineAction {
        let action = self.policy.on_violation;
        self.outcome.violations.push(LineViolation {
            direction,
            check,
            reason,
            line: line.bytes.clone(),
            action: Some(action),
        });
        match action {
            ViolationAction::Drop => LineAction::Replace(Vec::new()),
            ViolationAction::Reset => {
                self.outcome.reset = true;
                LineAction::Replace(Vec::new())
            }
            ViolationAction::Reject => match direction {
                Direction::ClientToServer => {
                    if self.state.awaiting_reply() {
                        // Its answer waits for the replies to the commands before it.
                        self.state.defer_refusal(check);
                    } else {
                        self.outcome.rejections.push(check.reject_reply());
                    }
                    LineAction::Replace(Vec::new())
                }
                // A refused reply is replaced by a failure the client understands (a text
                // line inside a multi-line reply just goes).
                Direction::ServerToClient => {
                    let content = strip_telnet(line.content());
                    if parse::reply_line(content).is_some_and(|reply| !reply.continued) {
                        LineAction::Replace(REFUSED_REPLY.as_bytes().to_vec())
                    } else {
                        LineAction::Replace(Vec::new())
                    }
                }
            },
        }
    }
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// What the client gets instead of a server reply the policy refused.
const REFUSED_REPLY: &str = "451 Reply refused by the gateway.\r\n";

/// Whether a client's line is an FTP command at all: no NUL or bare CR, not a reply code, a
/// verb and its argument, a verb FTP knows (before login; after it, servers answer unknown
/// verbs themselves), and no data address hidden in another command's argument.
fn classify_command<'a>(
    line: &Line,
    content: &'a [u8],
    logged_in: bool,
) -> Result<parse::CommandLine<'a>, (Check, String)> {
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
    if !logged_in && !FTP_COMMANDS.contains(&command.verb.as_str()) {
        return Err((
            Check::Malformed,
            format!("{} is not an FTP command", command.verb),
        ));
    }
    if command.verb != "PORT" && command.verb != "EPRT" && embedded_address(command.argument) {
        return Err((
            Check::Embedded,
            format!("a data address inside {}'s argument", command.verb),
        ));
    }
    Ok(command)
}

/// The policy's checks of an FTP command, in order.
fn check_command(
    command: &parse::CommandLine<'_>,
    state: &ProtocolState,
    policy: &Policy,
    pipelined: bool,
) -> Result<(), (Check, String)> {
    let verb = command.verb.as_str();
    if policy.command_denied(verb) {
        return Err((Check::DeniedCommand, format!("{verb} is denied")));
    }
    if verb == "AUTH" && policy.tls == TlsPolicy::Deny {
        let argument = String::from_utf8_lossy(command.argument);
        return Err((Check::Tls, format!("AUTH {argument} while TLS is denied")));
    }
    state
        .check_command(verb)
        .map_err(|why| (Check::OutOfState, why.0))?;
    if verb == "USER" {
        let argument = String::from_utf8_lossy(command.argument);
        if !policy.user_allowed(&argument) {
            return Err((
                Check::ForbiddenUser,
                format!("user {argument:?} is not allowed"),
            ));
        }
    }
    if pipelined && (verb == "PORT" || verb == "EPRT") {
        // A data address is only taken from a client that waited for the reply to its last
        // command: one that arrives in the same flight as other lines is what an attacker who
        // controls part of a non-FTP stream can place (NAT slipstreaming).
        return Err((
            Check::OutOfState,
            format!("{verb} sent while an earlier command was unanswered (pipelined)"),
        ));
    }
    Ok(())
}

/// The checks of a server's line.
fn check_reply(line: &Line, content: &[u8], first_of_reply: bool) -> Result<(), (Check, String)> {
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
    // A 227/229 announces in its own first line (`227 ...`, or `227-...` opening a multi-line
    // reply); an address anywhere else is text that a lax ALG would take for one.
    let announcing = first_of_reply
        && parse::reply_line(content).is_some_and(|reply| matches!(reply.code, 227 | 229));
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

/// Reads a complete line that passed its checks: is it an announcement, and if so what it
/// becomes (a refused announcement is a violation).
fn announcement(
    direction: Direction,
    line: &Line,
    endpoints: &Endpoints,
    ports: &mut dyn PortAllocator,
) -> Verdict {
    let content = line.content();
    // (announced endpoint, span to replace, how to write the replacement, sender's real and
    // seen addresses, the peer that will connect)
    let (endpoint, span, form) = match direction {
        Direction::ServerToClient => match parse::reply_line(content) {
            Some(reply) if reply.code == 227 => match parse::passive_reply(content) {
                Ok(announced) => (announced.endpoint, announced.span, Form::HostPort),
                Err(err) => {
                    return Verdict::Violation(Check::Malformed, format!("malformed 227: {err}"));
                }
            },
            Some(reply) if reply.code == 229 => match parse::extended_passive_reply(content) {
                Ok((port, span)) => (
                    SocketAddrV4::new(endpoints.server_real, port),
                    span,
                    Form::PortOnly,
                ),
                Err(err) => {
                    return Verdict::Violation(Check::Malformed, format!("malformed 229: {err}"));
                }
            },
            _ => return Verdict::Pass,
        },
        Direction::ClientToServer => {
            let Some(command) = parse::command_line(content) else {
                return Verdict::Pass;
            };
            match command.verb.as_str() {
                "PORT" => match parse::port_argument(&command) {
                    Ok(announced) => (announced.endpoint, announced.span, Form::HostPort),
                    Err(err) => {
                        return Verdict::Violation(
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
                        return Verdict::Violation(
                            Check::Malformed,
                            "EPRT with an IPv6 address through a NAT44".into(),
                        );
                    }
                    Err(err) => {
                        return Verdict::Violation(
                            Check::Malformed,
                            format!("malformed EPRT: {err}"),
                        );
                    }
                },
                _ => return Verdict::Pass,
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
        return Verdict::Violation(
            Check::Bounce,
            format!("announces {} but the sender is {real}", endpoint.ip()),
        );
    }
    if endpoint.port() < MIN_DATA_PORT {
        return Verdict::Violation(
            Check::LowPort,
            format!("data port {} is below {MIN_DATA_PORT}", endpoint.port()),
        );
    }
    if (real != seen || peer != peer_seen) && !ports.may_expect() {
        return Verdict::Violation(
            Check::TooManyExpectations,
            "too many data connections announced and not yet opened".into(),
        );
    }
    if real == seen {
        // The announcer is not behind the gateway: nothing to translate in the line. If the
        // other side is, it will open the data connection from behind, and needs its source
        // translated on the way out.
        return if peer != peer_seen {
            Verdict::Outbound(OutboundExpectation {
                opener: peer,
                to: endpoint,
                source: peer_seen,
            })
        } else {
            Verdict::Pass
        };
    }
    let Some(public_port) = ports.allocate(seen, endpoint) else {
        return Verdict::Violation(
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
    Verdict::Rewrite {
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
