//! What an operator allows on a control connection, and the checks that enforce it.
//!
//! The checks are named ([`Check`]) so that each has its own counter and log field; the
//! action on a violation is the operator's ([`ViolationAction`]).

/// What happens to the line that broke a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ViolationAction {
    /// The line is discarded, as the classic ALG does: the receiver never sees it, and the
    /// sender is left to its retransmissions and timeouts.
    Drop,
    /// The gateway answers the client itself with a 5xx reply; the server never sees the
    /// command; both sides' sequence numbers are kept right and the session goes on.
    #[default]
    Reject,
    /// Both sides get an RST; the session and its expectations end.
    Reset,
}

/// What to do with `AUTH TLS` / `AUTH SSL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum TlsPolicy {
    /// Refused, as a violation.
    #[default]
    Deny,
    /// Let through; once the server accepts (234), the session is no longer inspected (its
    /// lines are encrypted) and nothing in it is translated.
    Pass,
}

/// What becomes of a control session that turns out not to be FTP (see `inspect`'s
/// classification: a first line that is no FTP command, a line no FTP client sends before
/// login, or too many of them after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum NotFtpAction {
    /// Both sides get an RST; the session and its expectations end.
    #[default]
    Reset,
    /// The rest of the connection passes untouched as plain TCP: nothing in it is rewritten,
    /// no expectation is installed, and no more policy check applies to it.
    Pass,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// When not empty, only user names matching one of these globs may log in.
    pub allow_users: Vec<String>,
    /// User names matching one of these globs may not log in.
    pub deny_users: Vec<String>,
    /// Whether `anonymous` and `ftp` may log in.
    pub anonymous: bool,
    /// Commands (upper case) refused in every state.
    pub deny_commands: Vec<String>,
    /// Longest line, terminator included.
    pub max_line: usize,
    pub tls: TlsPolicy,
    pub on_violation: ViolationAction,
    /// Whether the server may see a command before the previous one is answered. Off, the
    /// gateway holds such commands (acknowledging them in the server's name) and releases
    /// each one once the reply before it has passed, judged in the state that reply made.
    /// Either way replies reach the client in command order.
    pub pipelining: bool,
    /// What happens to a session that is not FTP.
    pub not_ftp: NotFtpAction,
    /// Lines no FTP client sends (not a command, NUL or bare CR, a reply code, a data address
    /// inside another command) that a logged-in session may send before it is judged not FTP.
    /// Before login the first one is enough.
    pub max_malformed_lines: usize,
    /// Most data connections a session may have announced and not yet opened.
    pub max_pending_expectations: usize,
    /// Most control sessions one client address may hold at once (enforced by the shell, which
    /// sees all sessions; a new one beyond it is refused at its SYN); 0: no limit. One address
    /// may be a whole office or a carrier's NAT, so the default leaves room for thousands.
    pub max_sessions_per_client: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_users: Vec::new(),
            deny_users: Vec::new(),
            anonymous: true,
            deny_commands: Vec::new(),
            max_line: 1024,
            tls: TlsPolicy::Deny,
            on_violation: ViolationAction::Reject,
            pipelining: false,
            not_ftp: NotFtpAction::Reset,
            max_malformed_lines: 3,
            max_pending_expectations: 16,
            max_sessions_per_client: DEFAULT_MAX_SESSIONS_PER_CLIENT,
        }
    }
}

/// The default of [`Policy::max_sessions_per_client`]: room for an office or a carrier's NAT
/// behind one address (hundreds of users, a few control connections each) while one address
/// still cannot hold more than this many sessions of the agent's memory (about 3 KB each,
/// measured by `cargo xtask soak` at this limit: some 12 MB) or of the server's connections.
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: usize = 4096;

impl Policy {
    /// A policy that refuses only what no FTP client does: every user, command and TLS allowed,
    /// pipelining passed to the server, a stream that is not FTP passed as plain TCP. The
    /// protocol state is still followed (a `PORT` before login is out of state), and bounce
    /// and low-port announcements still get no expectation: translation needs those rules.
    pub fn permissive() -> Policy {
        Policy {
            tls: TlsPolicy::Pass,
            pipelining: true,
            not_ftp: NotFtpAction::Pass,
            max_sessions_per_client: 0,
            ..Policy::default()
        }
    }

    /// How many control sessions one client address may hold at once; `None`: no limit.
    pub fn session_limit(&self) -> Option<usize> {
        (self.max_sessions_per_client != 0).then_some(self.max_sessions_per_client)
    }

    /// Whether `user` may log in.
    pub fn user_allowed(&self, user: &str) -> bool {
        if is_anonymous(user) && !self.anonymous {
            return false;
        }
        if self.deny_users.iter().any(|glob| glob_match(glob, user)) {
            return false;
        }
        self.allow_users.is_empty() || self.allow_users.iter().any(|glob| glob_match(glob, user))
    }

    pub fn command_denied(&self, verb: &str) -> bool {
        self.deny_commands.iter().any(|denied| denied == verb)
    }
}

/// The names under which FTP servers take anonymous logins.
pub fn is_anonymous(user: &str) -> bool {
    user.eq_ignore_ascii_case("anonymous") || user.eq_ignore_ascii_case("ftp")
}

/// Shell-style glob: `*` any run of characters, `?` one character; everything else literal,
/// case-sensitive (user names are).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point (the last `*`): linear in practice.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The checks a line can fail, each with its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Check {
    /// A command the session's state does not allow (before login, PASS without USER, or
    /// before the previous command was answered when pipelining is off).
    OutOfState,
    ForbiddenUser,
    DeniedCommand,
    /// `PORT`/`EPRT` naming an address other than the client's own (FTP bounce), or a
    /// `227`/`229` naming one other than the server's.
    Bounce,
    /// A data port below 1024.
    LowPort,
    /// A reply code from the client, or `PORT`/`EPRT` from the server.
    SpoofedDirection,
    /// An address/port tuple inside a line the ALG does not act on (slipstreaming).
    Embedded,
    /// Numbers out of range, wrong field count, a line that is not a command.
    Malformed,
    LineTooLong,
    NulOrBareCr,
    /// `AUTH TLS`/`AUTH SSL` when the policy denies it.
    Tls,
    TooManySessions,
    TooManyExpectations,
}

impl Check {
    pub const ALL: [Check; 13] = [
        Check::OutOfState,
        Check::ForbiddenUser,
        Check::DeniedCommand,
        Check::Bounce,
        Check::LowPort,
        Check::SpoofedDirection,
        Check::Embedded,
        Check::Malformed,
        Check::LineTooLong,
        Check::NulOrBareCr,
        Check::Tls,
        Check::TooManySessions,
        Check::TooManyExpectations,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Check::OutOfState => "out_of_state",
            Check::ForbiddenUser => "forbidden_user",
            Check::DeniedCommand => "denied_command",
            Check::Bounce => "bounce",
            Check::LowPort => "low_port",
            Check::SpoofedDirection => "spoofed_direction",
            Check::Embedded => "embedded",
            Check::Malformed => "malformed",
            Check::LineTooLong => "line_too_long",
            Check::NulOrBareCr => "nul_or_bare_cr",
            Check::Tls => "tls",
            Check::TooManySessions => "too_many_sessions",
            Check::TooManyExpectations => "too_many_expectations",
        }
    }

    /// The reply the gateway gives the client when it rejects a command for this reason.
    pub fn reject_reply(self) -> &'static str {
        match self {
            Check::OutOfState => "503 Bad sequence of commands (refused by the gateway).\r\n",
            Check::ForbiddenUser => "530 Login refused by the gateway's policy.\r\n",
            Check::DeniedCommand => "502 Command not allowed by the gateway's policy.\r\n",
            Check::Tls => "534 TLS not allowed by the gateway's policy.\r\n",
            Check::LowPort | Check::Bounce => "504 Data address refused by the gateway.\r\n",
            Check::TooManyExpectations => "425 Too many pending data connections.\r\n",
            _ => "501 Line refused by the gateway.\r\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anyone"));
        assert!(glob_match("web-*", "web-deploy"));
        assert!(!glob_match("web-*", "admin"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*x*y", "axbxcy"));
        assert!(!glob_match("*x*y", "axbxcyz"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn user_rules() {
        let policy = Policy {
            allow_users: vec!["web-*".into(), "anonymous".into()],
            deny_users: vec!["web-root".into()],
            ..Policy::default()
        };
        assert!(policy.user_allowed("web-deploy"));
        assert!(!policy.user_allowed("web-root"));
        assert!(!policy.user_allowed("root"));
        assert!(policy.user_allowed("anonymous"));
        let closed = Policy {
            anonymous: false,
            ..Policy::default()
        };
        assert!(!closed.user_allowed("ANONYMOUS"));
        assert!(!closed.user_allowed("ftp"));
        assert!(closed.user_allowed("alice"));
    }

    #[test]
    fn checks_are_named_once() {
        let names: std::collections::HashSet<_> = Check::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Check::ALL.len());
        assert!(
            Check::ALL
                .iter()
                .all(|c| c.reject_reply().ends_with("\r\n"))
        );
    }
}
