//! High availability: the role this node plays in an active/standby pair, as keepalived
//! (VRRP) decides it and tells the agent through its notify hooks (`gateway ha
//! master|backup|fault`, over the management API).
//!
//! Only the master translates and forwards. The standby loads the fast path and fills its
//! maps (publishes, NAT settings) like the master, but its programs are not attached: they
//! are attached when it is told `master` and detached again on `backup` or `fault`. That is
//! the "attach on promotion" choice; [`RoleState::promoted`] records how long each
//! promotion took (request to attached), which `gateway status` and the metrics show.
//!
//! With `[ha] key_file`, the master streams its fast path's state to the standby ([`sync`]):
//! established flows go on through the standby after a failover. The FTP ALG's control
//! sessions are not synced yet.

pub mod sync;

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

/// What keepalived says this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the virtual addresses: translates and forwards.
    Master,
    /// The peer is master: passes nothing, ready to take over.
    Backup,
    /// keepalived found this node unfit (a tracked interface or script failed, or it
    /// stopped): passes nothing.
    Fault,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Master, Role::Backup, Role::Fault];

    pub fn name(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Backup => "backup",
            Role::Fault => "fault",
        }
    }

    /// Whether the fast path is attached in this role.
    pub fn passes_traffic(self) -> bool {
        self == Role::Master
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a change of role asks of the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The same role again (keepalived repeats itself, or an operator did): nothing to do.
    Unchanged,
    /// From a standby role to master: attach the programs.
    Attach,
    /// From master to a standby role: detach them.
    Detach,
    /// Between the two standby roles: they stay detached.
    StandbyToStandby,
}

/// The agent's role, since when, and how its changes went.
#[derive(Debug, Clone)]
pub struct RoleState {
    role: Role,
    /// Wall-clock time of the last change (or of the start), for an operator to compare
    /// with keepalived's log.
    since: SystemTime,
    transitions: u64,
    promotions: u64,
    last_promotion: Option<Duration>,
}

impl RoleState {
    /// A node starts as backup: it passes nothing until keepalived makes it master.
    pub fn starting() -> RoleState {
        RoleState {
            role: Role::Backup,
            since: SystemTime::now(),
            transitions: 0,
            promotions: 0,
            last_promotion: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn since(&self) -> SystemTime {
        self.since
    }

    /// Role changes since the start (a repeated role is not one).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    pub fn promotions(&self) -> u64 {
        self.promotions
    }

    /// How long the last promotion took, from the `master` request to programs attached.
    pub fn last_promotion(&self) -> Option<Duration> {
        self.last_promotion
    }

    /// Takes the new role; says what the fast path must do for it.
    pub fn change(&mut self, role: Role) -> Transition {
        let transition = match (self.role.passes_traffic(), role.passes_traffic()) {
            _ if role == self.role => return Transition::Unchanged,
            (false, true) => Transition::Attach,
            (true, false) => Transition::Detach,
            _ => Transition::StandbyToStandby,
        };
        self.role = role;
        self.since = SystemTime::now();
        self.transitions += 1;
        transition
    }

    /// Records a promotion's duration (request to attached).
    pub fn promoted(&mut self, took: Duration) {
        self.promotions += 1;
        self.last_promotion = Some(took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_starts_standby_and_attaches_only_on_master() {
        let mut state = RoleState::starting();
        assert_eq!(state.role(), Role::Backup);
        assert!(!state.role().passes_traffic());
        assert_eq!(state.change(Role::Backup), Transition::Unchanged);
        assert_eq!(state.transitions(), 0);
        assert_eq!(state.change(Role::Fault), Transition::StandbyToStandby);
        assert_eq!(state.change(Role::Master), Transition::Attach);
        assert_eq!(state.change(Role::Master), Transition::Unchanged);
        assert_eq!(state.change(Role::Backup), Transition::Detach);
        assert_eq!(state.change(Role::Master), Transition::Attach);
        assert_eq!(state.change(Role::Fault), Transition::Detach);
        assert_eq!(state.transitions(), 5);
        assert_eq!(state.role(), Role::Fault);
    }

    #[test]
    fn promotions_are_counted_with_the_last_duration() {
        let mut state = RoleState::starting();
        assert_eq!(state.last_promotion(), None);
        state.promoted(Duration::from_millis(3));
        state.promoted(Duration::from_millis(5));
        assert_eq!(state.promotions(), 2);
        assert_eq!(state.last_promotion(), Some(Duration::from_millis(5)));
    }

    #[test]
    fn roles_read_as_keepalived_states_lowercased() {
        for role in Role::ALL {
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{role}\""));
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
        }
        assert!(serde_json::from_str::<Role>("\"MASTER\"").is_err());
    }
}
