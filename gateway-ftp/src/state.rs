//! The FTP session's protocol state (RFC 959), driven by both directions: the client's
//! commands as they are let through, and the server's replies to them.
//!
//! Replies answer commands in order, so the commands awaiting their final reply form a queue;
//! the greeting is the answer to the connection itself. Login advances only on the server's
//! word: `331` after `USER` allows `PASS`, `230` logs in, a `5xx` goes back to the start.

use std::collections::VecDeque;

use crate::policy::Check;

/// Commands allowed before login (besides USER/PASS/ACCT, which have their own rules).
const BEFORE_LOGIN: &[&str] = &[
    "FEAT", "SYST", "HELP", "NOOP", "QUIT", "OPTS", "AUTH", "PBSZ", "PROT", "CCC", "HOST", "LANG",
    "CLNT", "CSID", "REIN",
];
/// Commands a client may send while another is still unanswered (RFC 959 4.1.3: they are
/// meant to interrupt a transfer or ask about it); they pass even when pipelining is off.
pub(crate) const OUT_OF_BAND: &[&str] = &["ABOR", "STAT", "QUIT", "NOOP"];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Login {
    /// Waiting for USER.
    User,
    /// USER was accepted with 331: PASS may follow.
    Password {
        user: String,
    },
    /// 332: ACCT may follow.
    Account {
        user: String,
    },
    LoggedIn {
        user: String,
    },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProtocolState {
    login: Login,
    /// What the client waits for a final reply to, oldest first: the greeting, the commands
    /// let through, and the commands the gateway refused while an earlier one was still
    /// unanswered (their refusal is due when everything before it is answered).
    awaiting: VecDeque<Awaiting>,
    /// Inside a multi-line reply with this code.
    multiline: Option<u16>,
    /// The server accepted AUTH: the rest of the session is encrypted.
    tls_started: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Awaiting {
    Greeting,
    Command(Pending),
    /// Answered by the gateway, for this check, once its turn comes.
    Refused(Check),
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Pending {
    verb: String,
    argument: String,
}

/// Why a command is out of state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfState(pub String);

impl Default for ProtocolState {
    fn default() -> Self {
        ProtocolState::new()
    }
}

impl ProtocolState {
    pub fn new() -> ProtocolState {
        ProtocolState {
            login: Login::User,
            awaiting: VecDeque::from([Awaiting::Greeting]),
            multiline: None,
            tls_started: false,
        }
    }

    pub fn login(&self) -> &Login {
        &self.login
    }

    /// The user name given (logged in or trying to).
    pub fn user(&self) -> Option<&str> {
        match &self.login {
            Login::User => None,
            Login::Password { user } | Login::Account { user } | Login::LoggedIn { user } => {
                Some(user)
            }
        }
    }

    pub fn tls_started(&self) -> bool {
        self.tls_started
    }

    /// Whether the client waits for a reply (the greeting, or a command's final reply).
    pub fn awaiting_reply(&self) -> bool {
        !self.awaiting.is_empty()
    }

    /// Whether the client is logged in.
    pub fn logged_in(&self) -> bool {
        matches!(self.login, Login::LoggedIn { .. })
    }

    /// Whether a multi-line reply is open (the next reply line is not a reply's first).
    pub fn inside_multiline_reply(&self) -> bool {
        self.multiline.is_some()
    }

    /// A command the gateway refused while earlier ones are unanswered: its refusal is due
    /// after their replies ([`Self::on_reply_line`] returns it then).
    pub fn defer_refusal(&mut self, check: Check) {
        self.awaiting.push_back(Awaiting::Refused(check));
    }

    /// Whether the command may go to the server now.
    pub fn check_command(&self, verb: &str) -> Result<(), OutOfState> {
        let allowed = match (&self.login, verb) {
            (_, "USER") => true,
            (Login::Password { .. }, "PASS") => true,
            (Login::Account { .. }, "ACCT") => true,
            (_, "PASS") => return Err(OutOfState("PASS without an accepted USER".into())),
            (_, "ACCT") => return Err(OutOfState("ACCT not asked for".into())),
            (Login::LoggedIn { .. }, _) => true,
            (_, verb) => BEFORE_LOGIN.contains(&verb) || OUT_OF_BAND.contains(&verb),
        };
        if allowed {
            Ok(())
        } else {
            Err(OutOfState(format!("{verb} before login")))
        }
    }

    /// A command went to the server.
    pub fn on_command(&mut self, verb: &str, argument: &str) {
        if verb == "REIN" {
            self.login = Login::User;
        }
        if verb == "USER" {
            // Until the server answers, the user is the one being tried.
            self.login = Login::User;
        }
        self.awaiting.push_back(Awaiting::Command(Pending {
            verb: verb.to_owned(),
            argument: argument.to_owned(),
        }));
    }

    /// A reply line from the server (any line: continuation and text lines are recognised).
    /// Returns the refusals that are due now, in order: those of commands the gateway refused
    /// behind the one this line finally answered.
    pub fn on_reply_line(&mut self, code: Option<(u16, bool)>) -> Vec<Check> {
        let Some((code, continued)) = code else {
            return Vec::new();
        };
        if let Some(open) = self.multiline {
            // Inside a multi-line reply only its closing line (same code, space) counts.
            if code != open || continued {
                return Vec::new();
            }
            self.multiline = None;
        } else if continued {
            self.multiline = Some(code);
            return Vec::new();
        }
        if code < 200 {
            // Preliminary: the command is still running.
            return Vec::new();
        }
        let answered = self.awaiting.pop_front();
        let mut due = Vec::new();
        while let Some(Awaiting::Refused(check)) = self.awaiting.front() {
            due.push(*check);
            self.awaiting.pop_front();
        }
        match answered {
            Some(Awaiting::Command(pending)) => self.answered(pending, code),
            // The greeting (a 421 greeting closes the connection anyway), or unsolicited (421
            // before closing, say): nothing to change.
            Some(Awaiting::Greeting | Awaiting::Refused(_)) | None => {}
        }
        due
    }

    fn answered(&mut self, pending: Pending, code: u16) {
        let success = (200..400).contains(&code);
        match pending.verb.as_str() {
            "USER" => {
                let user = pending.argument;
                self.login = match code {
                    230 => Login::LoggedIn { user },
                    331 => Login::Password { user },
                    332 => Login::Account { user },
                    _ => Login::User,
                };
            }
            "PASS" | "ACCT" => {
                if let Some(user) = self.user().map(str::to_owned) {
                    self.login = match code {
                        230 | 202 => Login::LoggedIn { user },
                        332 => Login::Account { user },
                        _ if success => self.login.clone(),
                        _ => Login::User,
                    };
                }
            }
            "REIN" if success => self.login = Login::User,
            "AUTH" if code == 234 => self.tls_started = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(state: &mut ProtocolState, line: &str) {
        let parsed = crate::parse::reply_line(line.as_bytes()).map(|r| (r.code, r.continued));
        state.on_reply_line(parsed);
    }

    fn command(state: &mut ProtocolState, verb: &str, arg: &str) -> Result<(), OutOfState> {
        state.check_command(verb)?;
        state.on_command(verb, arg);
        Ok(())
    }

    #[test]
    fn login_follows_the_servers_replies() {
        let mut state = ProtocolState::new();
        assert!(state.awaiting_reply(), "the greeting is awaited");
        reply(&mut state, "220 ready");
        assert!(!state.awaiting_reply());
        assert_eq!(
            command(&mut state, "RETR", "f"),
            Err(OutOfState("RETR before login".into()))
        );
        assert!(command(&mut state, "PASS", "x").is_err());
        command(&mut state, "USER", "alice").unwrap();
        assert!(command(&mut state, "PASS", "x").is_err(), "USER unanswered");
        reply(&mut state, "331 password please");
        command(&mut state, "PASS", "x").unwrap();
        reply(&mut state, "230-Welcome");
        reply(&mut state, " text of the welcome");
        assert!(
            matches!(state.login(), Login::Password { .. }),
            "230- is not final"
        );
        reply(&mut state, "230 Logged in.");
        assert_eq!(state.user(), Some("alice"));
        command(&mut state, "PASV", "").unwrap();
        reply(&mut state, "227 Entering Passive Mode (10,0,0,2,195,80).");
        command(&mut state, "RETR", "f").unwrap();
        reply(&mut state, "150 here");
        assert!(state.awaiting_reply(), "150 is preliminary");
        command(&mut state, "ABOR", "").unwrap();
        reply(&mut state, "226 done");
        reply(&mut state, "226 aborted");
        command(&mut state, "REIN", "").unwrap();
        reply(&mut state, "220 again");
        assert!(command(&mut state, "LIST", "").is_err());
    }

    #[test]
    fn refusals_behind_unanswered_commands_are_due_after_their_replies() {
        let mut state = ProtocolState::new();
        reply(&mut state, "220 ready");
        command(&mut state, "USER", "bob").unwrap();
        state.defer_refusal(Check::OutOfState);
        command(&mut state, "NOOP", "").unwrap();
        state.defer_refusal(Check::DeniedCommand);
        state.defer_refusal(Check::Tls);
        let parsed =
            |line: &str| crate::parse::reply_line(line.as_bytes()).map(|r| (r.code, r.continued));
        assert_eq!(state.on_reply_line(parsed("331-more")), vec![]);
        assert_eq!(
            state.on_reply_line(parsed("331 password")),
            vec![Check::OutOfState]
        );
        assert_eq!(state.on_reply_line(parsed("150 not final")), vec![]);
        assert_eq!(
            state.on_reply_line(parsed("200 ok")),
            vec![Check::DeniedCommand, Check::Tls]
        );
        assert!(!state.awaiting_reply());
    }

    #[test]
    fn a_failed_password_goes_back_to_user() {
        let mut state = ProtocolState::new();
        reply(&mut state, "220 ready");
        command(&mut state, "USER", "bob").unwrap();
        command(&mut state, "PASS", "x").unwrap_err();
        reply(&mut state, "331 password please");
        command(&mut state, "PASS", "wrong").unwrap();
        reply(&mut state, "530 Login incorrect.");
        assert_eq!(state.login(), &Login::User);
        assert!(command(&mut state, "CWD", "/").is_err());
    }

    #[test]
    fn auth_accepted_means_encrypted_from_then_on() {
        let mut state = ProtocolState::new();
        reply(&mut state, "220 ready");
        command(&mut state, "AUTH", "TLS").unwrap();
        assert!(!state.tls_started());
        reply(&mut state, "234 Proceed with negotiation.");
        assert!(state.tls_started());
    }
}
