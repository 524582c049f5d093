//! `[ftp.policy]` and `[publish.policy]`: the file's keys, and how they lay over a base policy.

use serde::Deserialize;

use super::{NotFtpAction, Policy, TlsPolicy, ViolationAction};

/// `[ftp.policy]` and `[publish.policy]`: every key optional, so a publish names only what
/// it changes.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) allow_users: Option<Vec<String>>,
    pub(super) deny_users: Option<Vec<String>>,
    pub(super) anonymous: Option<bool>,
    pub(super) deny_commands: Option<Vec<String>>,
    pub(super) max_line: Option<usize>,
    pub(super) tls: Option<RawTls>,
    pub(super) on_violation: Option<RawViolationAction>,
    pub(super) pipelining: Option<bool>,
    pub(super) not_ftp: Option<RawNotFtp>,
    pub(super) max_malformed_lines: Option<usize>,
    pub(super) max_pending_expectations: Option<usize>,
    pub(super) max_sessions_per_client: Option<usize>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawTls {
    Deny,
    Pass,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawNotFtp {
    Reset,
    Pass,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawViolationAction {
    Drop,
    Reject,
    Reset,
}

/// `raw`'s keys over `base`, validated; `table` names the section in errors.
pub(super) fn apply_policy(base: &Policy, raw: &RawPolicy, table: &str) -> Result<Policy, String> {
    let mut policy = base.clone();
    let globs = |key: &str, list: &Option<Vec<String>>| -> Result<Option<Vec<String>>, String> {
        match list {
            Some(list) if list.iter().any(|glob| glob.is_empty()) => Err(format!(
                "{table}.{key}: an empty pattern matches no user name"
            )),
            other => Ok(other.clone()),
        }
    };
    if let Some(list) = globs("allow_users", &raw.allow_users)? {
        policy.allow_users = list;
    }
    if let Some(list) = globs("deny_users", &raw.deny_users)? {
        policy.deny_users = list;
    }
    if let Some(anonymous) = raw.anonymous {
        policy.anonymous = anonymous;
    }
    if let Some(commands) = &raw.deny_commands {
        policy.deny_commands = commands
            .iter()
            .map(|verb| {
                if (3..=4).contains(&verb.len()) && verb.chars().all(|c| c.is_ascii_alphabetic()) {
                    Ok(verb.to_ascii_uppercase())
                } else {
                    Err(format!(
                        "{table}.deny_commands: {verb:?} is not an FTP command (3 or 4 letters)"
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(max_line) = raw.max_line {
        if !(128..=65536).contains(&max_line) {
            return Err(format!(
                "{table}.max_line = {max_line}: expected 128 to 65536 bytes"
            ));
        }
        policy.max_line = max_line;
    }
    if let Some(tls) = raw.tls {
        policy.tls = match tls {
            RawTls::Deny => TlsPolicy::Deny,
            RawTls::Pass => TlsPolicy::Pass,
        };
    }
    if let Some(action) = raw.on_violation {
        policy.on_violation = match action {
            RawViolationAction::Drop => ViolationAction::Drop,
            RawViolationAction::Reject => ViolationAction::Reject,
            RawViolationAction::Reset => ViolationAction::Reset,
        };
    }
    if let Some(pipelining) = raw.pipelining {
        policy.pipelining = pipelining;
    }
    if let Some(not_ftp) = raw.not_ftp {
        policy.not_ftp = match not_ftp {
            RawNotFtp::Reset => NotFtpAction::Reset,
            RawNotFtp::Pass => NotFtpAction::Pass,
        };
    }
    if let Some(lines) = raw.max_malformed_lines {
        if !(1..=1000).contains(&lines) {
            return Err(format!(
                "{table}.max_malformed_lines = {lines}: expected 1 to 1000"
            ));
        }
        policy.max_malformed_lines = lines;
    }
    // 0 sessions per client: no limit; 0 expectations would make passive mode impossible.
    for (key, value, slot, lowest) in [
        (
            "max_pending_expectations",
            raw.max_pending_expectations,
            &mut policy.max_pending_expectations,
            1,
        ),
        (
            "max_sessions_per_client",
            raw.max_sessions_per_client,
            &mut policy.max_sessions_per_client,
            0,
        ),
    ] {
        if let Some(value) = value {
            if !(lowest..=100_000).contains(&value) {
                let meaning = if lowest == 0 { " (0: no limit)" } else { "" };
                return Err(format!(
                    "{table}.{key} = {value}: expected {lowest} to 100000{meaning}"
                ));
            }
            *slot = value;
        }
    }
    Ok(policy)
}
