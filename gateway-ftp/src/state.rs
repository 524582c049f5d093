//! The FTP session's protocol state (RFC 959), driven by both directions: the client's
//! commands as they are let through, and the server's replies to them.
//!
//! Replies answer commands in order, so the commands awaiting their final reply form a queue;
//! the greeting is the answer to the connection itself. Login advances only on the server's
//! word: `331` after `USER` allows `PASS`, `230` logs in, a `5xx` goes back to the start.

use std::collections::VecDeque;

use crate::policy::Policy;

/// Commands allowed before login (besides USER/PASS/ACCT, which have their own rules).
const BEFORE_LOGIN: &[&str] = &[
    "FEAT", "SYST", "HELP", "NOOP", "QUIT", "OPTS", "AUTH", "PBSZ", "PROT", "CCC", "HOST", "LANG",
    "CLNT", "CSID", "REIN",
];
/// Commands a client may send while another is still unanswered (RFC 959 4.1.3: they are
/// meant to interrupt a transfer or ask about it).
const OUT_OF_BAND: &[&str] = &["ABOR", "STAT", "QUIT", "NOOP"];

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
    /// Commands let through and not yet finally answered, oldest first; the first entry of
    /// a new connection is the greeting (`None`).
    awaiting: VecDeque<Option<Pending>>,
    /// Inside a multi-line reply with this code.
    multiline: Option<u16>,
    /// The server accepted AUTH: the rest of the session is encrypted.
    tls_started: bool,
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
            awaiting: VecDeque::from([None]),
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

    /// Whether the command may go to the server now.
    pub fn check_command(&self, verb: &str, policy: &Policy) -> Result<(), OutOfState> {
        if !policy.pipelining && !self.awaiting.is_empty() && !OUT_OF_BAND.contains(&verb) {
            return Err(OutOfState(match self.awaiting.front() {
                Some(Some(pending)) => format!("{verb} before {} was answered", pending.verb),
                _ => format!("{verb} before the server's greeting"),
            }));
        }
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
        self.awaiting.push_back(Some(Pending {
            verb: verb.to_owned(),
            argument: argument.to_owned(),
        }));
    }

    /// A reply line from the server (any line: continuation and text lines are recognised).
    pub fn on_reply_line(&mut self, code: Option<(u16, bool)>, content: &[u8]) {
        let Some((code, continued)) = code else {
            return;
        };
        if let Some(open) = self.multiline {
            // Inside a multi-line reply only its closing line (same code, space) counts.
            if code != open || continued {
                return;
            }
            self.multiline = None;
        } else if continued {
            self.multiline = Some(code);
            return;
        }
        let _ = content;
        if code < 200 {
            // Preliminary: the command is still running.
            return;
        }
        let Some(answered) = self.awaiting.pop_front() else {
            // Unsolicited (421 before closing, say).
            return;
        };
        let Some(pending) = answered else {
            // The greeting: nothing to change (a 421 greeting closes the connection anyway).
            return;
        };
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
        state.on_reply_line(parsed, line.as_bytes());
    }

    fn command(
        state: &mut ProtocolState,
        policy: &Policy,
        verb: &str,
        arg: &str,
    ) -> Result<(), OutOfState> {
        state.check_command(verb, policy)?;
        state.on_command(verb, arg);
        Ok(())
    }

    #[test]
    fn login_follows_the_servers_replies() {
        let policy = Policy::default();
        let mut state = ProtocolState::new();
        assert!(
            command(&mut state, &policy, "USER", "a").is_err(),
            "before the greeting"
        );
        reply(&mut state, "220 ready");
        assert_eq!(
            command(&mut state, &policy, "RETR", "f"),
            Err(OutOfState("RETR before login".into()))
        );
        assert!(command(&mut state, &policy, "PASS", "x").is_err());
        command(&mut state, &policy, "USER", "alice").unwrap();
        assert!(
            command(&mut state, &policy, "PASS", "x").is_err(),
            "USER unanswered"
        );
        reply(&mut state, "331 password please");
        command(&mut state, &policy, "PASS", "x").unwrap();
        reply(&mut state, "230-Welcome");
        reply(&mut state, " text of the welcome");
        assert!(
            matches!(state.login(), Login::Password { .. }),
            "230- is not final"
        );
        reply(&mut state, "230 Logged in.");
        assert_eq!(state.user(), Some("alice"));
        command(&mut state, &policy, "PASV", "").unwrap();
        reply(&mut state, "227 Entering Passive Mode (10,0,0,2,195,80).");
        command(&mut state, &policy, "RETR", "f").unwrap();
        reply(&mut state, "150 here");
        // A transfer is running: only ABOR, STAT, QUIT, NOOP may interrupt.
        assert!(command(&mut state, &policy, "LIST", "").is_err());
        command(&mut state, &policy, "ABOR", "").unwrap();
        reply(&mut state, "226 done");
        reply(&mut state, "226 aborted");
        command(&mut state, &policy, "REIN", "").unwrap();
        reply(&mut state, "220 again");
        assert!(command(&mut state, &policy, "LIST", "").is_err());
    }

    #[test]
    fn a_failed_password_goes_back_to_user() {
        let policy = Policy {
            pipelining: true,
            ..Policy::default()
        };
        let mut state = ProtocolState::new();
        reply(&mut state, "220 ready");
        command(&mut state, &policy, "USER", "bob").unwrap();
        command(&mut state, &policy, "PASS", "x").unwrap_err();
        reply(&mut state, "331 password please");
        command(&mut state, &policy, "PASS", "wrong").unwrap();
        reply(&mut state, "530 Login incorrect.");
        assert_eq!(state.login(), &Login::User);
        assert!(command(&mut state, &policy, "CWD", "/").is_err());
    }

    #[test]
    fn auth_accepted_means_encrypted_from_then_on() {
        let policy = Policy::default();
        let mut state = ProtocolState::new();
        reply(&mut state, "220 ready");
        command(&mut state, &policy, "AUTH", "TLS").unwrap();
        assert!(!state.tls_started());
        reply(&mut state, "234 Proceed with negotiation.");
        assert!(state.tls_started());
    }
}
