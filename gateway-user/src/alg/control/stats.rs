//! The ALG's counters, for `gateway stats` and the metrics.

use gateway_ftp::policy::Check;

/// What the ALG did, for the log and the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlgStats {
    pub packets: u64,
    pub emitted: u64,
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    pub expectations: u64,
    pub violations: u64,
    pub drop_malformed: u64,
    pub drop_no_session: u64,
    pub drop_no_port: u64,
    pub drop_stream_error: u64,
    pub drop_ttl: u64,
    pub expectation_install_failed: u64,
    /// Sessions ended by a violation under `reset`.
    pub sessions_reset: u64,
    /// Sessions that switched to TLS (`tls = "pass"`).
    pub sessions_encrypted: u64,
    /// Sessions whose client stream turned out not to be FTP (reset, or passed as plain TCP).
    #[serde(default)]
    pub not_ftp: u64,
    /// Segments the ALG sent again because it had acknowledged them for their receiver.
    pub resent: u64,
    /// Violations by check, in `Check::ALL` order.
    pub violations_by_check: [u64; Check::ALL.len()],
}

impl AlgStats {
    /// Every total by its bare name (`packets`, ...): `gateway stats` shows `alg_<name>`, the
    /// metrics `gateway_ftp_<name>_total`.
    pub fn totals(&self) -> [(&'static str, u64); 16] {
        [
            ("packets", self.packets),
            ("emitted", self.emitted),
            ("sessions_opened", self.sessions_opened),
            ("sessions_closed", self.sessions_closed),
            ("expectations", self.expectations),
            ("violations", self.violations),
            ("drop_malformed", self.drop_malformed),
            ("drop_no_session", self.drop_no_session),
            ("drop_no_port", self.drop_no_port),
            ("drop_stream_error", self.drop_stream_error),
            ("drop_ttl", self.drop_ttl),
            (
                "expectation_install_failed",
                self.expectation_install_failed,
            ),
            ("sessions_reset", self.sessions_reset),
            ("sessions_encrypted", self.sessions_encrypted),
            ("not_ftp", self.not_ftp),
            ("resent", self.resent),
        ]
    }

    /// Violations by check, in `Check::ALL` order.
    pub fn violations(&self) -> impl Iterator<Item = (Check, u64)> {
        Check::ALL.into_iter().zip(self.violations_by_check)
    }

    /// Every counter as `gateway stats` names it (violations by check as
    /// `alg_violation_<check>`).
    pub fn pairs(&self) -> Vec<(String, u64)> {
        self.totals()
            .into_iter()
            .map(|(name, value)| (format!("alg_{name}"), value))
            .chain(
                self.violations()
                    .map(|(check, value)| (format!("alg_violation_{}", check.name()), value)),
            )
            .collect()
    }
}

pub(super) fn check_index(check: Check) -> usize {
    Check::ALL
        .iter()
        .position(|candidate| *candidate == check)
        .unwrap_or(0)
}
