//! The IPv4 sysctls the fast path needs on the two interfaces it serves: checked when the
//! agent starts, on every reload and when an interface comes back. With `[dataplane]
//! manage_sysctls = true` (the default) the agent sets what is wrong while it runs and puts
//! the values back when it stops, also after a crash: the values it found are recorded on
//! disk before anything is changed, and the next agent takes the record over. With `false`
//! it changes nothing and refuses to start (or to reload) while a value is wrong.
//!
//! Which sysctls, and why (Linux 6.x):
//! - `net.ipv4.conf.<if>.forwarding`: `bpf_fib_lookup` answers `BPF_FIB_LKUP_RET_FWD_DISABLED`
//!   unless the packet's *ingress* device forwards (`IN_DEV_FORWARD`: the device's own value,
//!   `all` plays no part), and the stack, for the translated packets it routes, checks the
//!   same. Translated packets arrive on both interfaces (requests on one, replies on the
//!   other), so both must forward. `net.ipv4.ip_forward` is not touched: writing it writes
//!   every interface's value, and would make the host forward between interfaces the
//!   gateway does not serve.
//! - `net.ipv4.conf.<if>.accept_local` (in force: the interface's or `all`'s): translated
//!   packets the stack still routes arrive carrying a public source address, usually the
//!   gateway's own, and are dropped as martians without it.
//! - `net.ipv4.conf.<if>.rp_filter` (in force: the larger of the interface's and `all`'s):
//!   strict (1) drops those packets too; the agent makes it loose (2), which still drops
//!   sources with no route at all.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

pub use record::{HostIdentity, record_path};
use record::{Record, RecordedInterface};
use serde::{Deserialize, Serialize};

/// One of the three sysctls, per interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Setting {
    Forwarding,
    AcceptLocal,
    RpFilter,
}

impl Setting {
    pub const ALL: [Setting; 3] = [Setting::Forwarding, Setting::AcceptLocal, Setting::RpFilter];

    /// Its name under `net.ipv4.conf.<if>`.
    pub fn key(self) -> &'static str {
        match self {
            Setting::Forwarding => "forwarding",
            Setting::AcceptLocal => "accept_local",
            Setting::RpFilter => "rp_filter",
        }
    }

    fn from_key(key: &str) -> Option<Setting> {
        Setting::ALL
            .into_iter()
            .find(|setting| setting.key() == key)
    }

    /// Whether `own` (the interface's value), with `all` (`net.ipv4.conf.all`'s), lets
    /// translated packets through, as the kernel combines the two.
    fn allows(self, own: i64, all: i64) -> bool {
        match self {
            // IN_DEV_FORWARD: the device's own value.
            Setting::Forwarding => own != 0,
            // IN_DEV_ACCEPT_LOCAL: either.
            Setting::AcceptLocal => own != 0 || all != 0,
            // IN_DEV_RPFILTER: the larger; 1 is strict.
            Setting::RpFilter => own.max(all) != 1,
        }
    }

    /// What the agent writes to the interface's own value when the one in force is wrong
    /// (for `rp_filter`, 2 is loose whatever `all` says).
    fn fix(self) -> i64 {
        match self {
            Setting::Forwarding | Setting::AcceptLocal => 1,
            Setting::RpFilter => 2,
        }
    }

    /// Whether `value` is one the kernel takes (a recorded original outside this is not
    /// written back: the record was damaged).
    fn valid(self, value: i64) -> bool {
        match self {
            Setting::Forwarding | Setting::AcceptLocal => (0..=1).contains(&value),
            Setting::RpFilter => (0..=2).contains(&value),
        }
    }

    /// What must hold, for status and refusals.
    pub fn requirement(self) -> &'static str {
        match self {
            Setting::Forwarding => "1",
            Setting::AcceptLocal => "1 (or all = 1)",
            Setting::RpFilter => "0 or 2 (and all not 1)",
        }
    }

    /// Why a wrong value breaks translated packets, for the one-line refusal.
    fn consequence(self) -> &'static str {
        match self {
            Setting::Forwarding => {
                "translated packets arriving there are not forwarded (bpf_fib_lookup answers \"forwarding disabled\")"
            }
            Setting::AcceptLocal => {
                "translated packets the kernel routes carry the gateway's own address as source and are dropped as martians"
            }
            Setting::RpFilter => {
                "strict reverse-path filtering drops the translated packets the kernel routes"
            }
        }
    }
}

/// `net.ipv4.conf.<interface>.<key>`, as `sysctl` names it.
pub fn sysctl_name(interface: &str, setting: Setting) -> String {
    format!("net.ipv4.conf.{interface}.{}", setting.key())
}

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: i64,
        #[source]
        source: io::Error,
    },
    #[error("cannot record the original sysctl values in {path} (before changing them): {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A value is wrong and the agent may not change it: the one line that says which.
    #[error("{0}")]
    Refused(String),
}

/// An interface's index by name (`if_nametoindex`), `None` when there is none.
pub type IfindexLookup = Box<dyn Fn(&str) -> Option<u32>>;

/// Where the sysctls live and how interfaces are found: the running system's, or a test's.
pub struct Host {
    /// `/proc/sys/net/ipv4/conf` of the caller's network namespace.
    conf: PathBuf,
    ifindex: IfindexLookup,
    identity: HostIdentity,
}

impl Host {
    /// This process's network namespace, this boot.
    pub fn system() -> io::Result<Host> {
        Ok(Host {
            conf: PathBuf::from("/proc/sys/net/ipv4/conf"),
            ifindex: Box::new(crate::system::if_index),
            identity: HostIdentity::current()?,
        })
    }

    /// A host whose sysctls are files under `conf` (`<conf>/<interface>/<key>`).
    pub fn at(conf: PathBuf, ifindex: IfindexLookup, identity: HostIdentity) -> Host {
        Host {
            conf,
            ifindex,
            identity,
        }
    }

    fn path(&self, interface: &str, setting: Setting) -> PathBuf {
        self.conf.join(interface).join(setting.key())
    }

    fn read(&self, interface: &str, setting: Setting) -> Result<i64, SysctlError> {
        let path = self.path(interface, setting);
        let text = fs::read_to_string(&path).map_err(|source| SysctlError::Read {
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| SysctlError::Read {
            path,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{:?} is not a number", text.trim()),
            ),
        })
    }

    fn write(&self, interface: &str, setting: Setting, value: i64) -> Result<(), SysctlError> {
        let path = self.path(interface, setting);
        fs::write(&path, value.to_string()).map_err(|source| SysctlError::Write {
            path,
            value,
            source,
        })
    }

    /// The interface's value and `all`'s (forwarding: `all` is not read, it plays no part).
    fn values(&self, interface: &str, setting: Setting) -> Result<(i64, i64), SysctlError> {
        let own = self.read(interface, setting)?;
        let all = match setting {
            Setting::Forwarding => 0,
            _ => self.read("all", setting)?,
        };
        Ok((own, all))
    }
}

/// The values found before the agent changed them, by setting; `None`: not changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Originals([Option<i64>; 3]);

impl Originals {
    fn get(&self, setting: Setting) -> Option<i64> {
        self.0[setting as usize]
    }

    fn set(&mut self, setting: Setting, value: i64) {
        self.0[setting as usize] = Some(value);
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    fn changed(&self) -> impl Iterator<Item = (Setting, i64)> + '_ {
        Setting::ALL
            .into_iter()
            .filter_map(|setting| Some((setting, self.get(setting)?)))
    }

    fn to_map(self) -> BTreeMap<String, i64> {
        self.changed()
            .map(|(setting, value)| (setting.key().to_owned(), value))
            .collect()
    }
}

/// A served interface and what the agent changed on it.
#[derive(Debug, Clone)]
struct Served {
    name: String,
    ifindex: u32,
    originals: Originals,
}

/// One sysctl as `gateway status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlStatus {
    /// `net.ipv4.conf.<if>.<key>`.
    pub name: String,
    /// The interface's value now; `None` when it cannot be read (the interface is gone).
    pub value: Option<i64>,
    /// `net.ipv4.conf.all`'s value, where the kernel combines it with the interface's.
    pub all: Option<i64>,
    /// What must hold.
    pub required: String,
    /// Whether translated packets get through as the values are now.
    pub ok: bool,
    /// The value before the agent changed it, put back when it stops; `None`: not changed.
    pub original: Option<i64>,
}

/// The sysctls of the served interfaces, and what the agent owes the host.
pub struct HostSettings {
    host: Host,
    record_path: PathBuf,
    manage: bool,
    served: Vec<Served>,
    /// Interfaces a killed earlier agent changed and this one does not serve: put back by
    /// `apply`.
    orphans: Vec<(String, Originals)>,
    /// What `prepare` found in an earlier agent's record, logged by `apply` (`prepare` logs
    /// nothing: a refusal after it must stay one line).
    notes: Vec<String>,
    /// On a drop without `restore` or `leave` (a start-up that failed): leave the values,
    /// because a pinned fast path is attached and outlives the agent.
    keep_on_drop: bool,
    /// A standby of a high-availability pair (managed only): its served interfaces are
    /// kept from forwarding until it is promoted (see [`HostSettings::set_standby`]).
    standby: bool,
    finished: bool,
}

impl HostSettings {
    /// Reads what is there, and the record an earlier agent left, without changing
    /// anything. With `manage` false, a wrong value is refused here (one line naming every
    /// wrong sysctl); with it true, `apply` fixes them.
    pub fn prepare(
        host: Host,
        record_path: PathBuf,
        interfaces: &[(&str, u32)],
        manage: bool,
    ) -> Result<HostSettings, SysctlError> {
        let mut settings = HostSettings {
            host,
            record_path,
            manage,
            served: interfaces
                .iter()
                .map(|(name, ifindex)| Served {
                    name: (*name).to_owned(),
                    ifindex: *ifindex,
                    originals: Originals::default(),
                })
                .collect(),
            orphans: Vec::new(),
            notes: Vec::new(),
            keep_on_drop: false,
            standby: false,
            finished: !manage,
        };
        if !manage {
            let problems = settings.problems()?;
            if !problems.is_empty() {
                return Err(SysctlError::Refused(refusal(&problems)));
            }
            return Ok(settings);
        }
        settings.take_over_record();
        Ok(settings)
    }

    /// Adopts what an earlier agent that did not stop cleanly recorded: its originals are
    /// the originals (the values now are the ones it set).
    fn take_over_record(&mut self) {
        let record = match Record::load(&self.record_path, &self.host.identity) {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(why) => {
                self.notes.push(format!("{why}; not taken over"));
                return;
            }
        };
        for recorded in record.interfaces {
            let originals = match recorded.originals() {
                Ok(originals) => originals,
                Err(why) => {
                    self.notes
                        .push(format!("{}: {why}; ignored", self.record_path.display()));
                    continue;
                }
            };
            if (self.host.ifindex)(&recorded.name) != Some(recorded.ifindex) {
                // Gone, or created again with the defaults: nothing of ours is on it.
                continue;
            }
            match self
                .served
                .iter_mut()
                .find(|served| served.name == recorded.name)
            {
                Some(served) => {
                    served.originals = originals;
                    self.notes.push(format!(
                        "{}: an earlier agent changed {} and did not put them back: their originals are taken over from {}",
                        served.name,
                        originals.changed().map(|(setting, value)| format!("{} (was {value})", setting.key())).collect::<Vec<_>>().join(", "),
                        self.record_path.display()
                    ));
                }
                None => self.orphans.push((recorded.name, originals)),
            }
        }
    }

    /// Every wrong value on the served interfaces: (interface, setting, own, all).
    fn problems(&self) -> Result<Vec<(String, Setting, i64, i64)>, SysctlError> {
        let mut problems = Vec::new();
        for served in &self.served {
            for setting in Setting::ALL {
                let (own, all) = self.host.values(&served.name, setting)?;
                if !self.allows(setting, own, all) {
                    problems.push((served.name.clone(), setting, own, all));
                }
            }
        }
        Ok(problems)
    }

    /// Puts back what a killed earlier agent changed on interfaces this one does not serve,
    /// then sets what is wrong on the served ones (recorded first). Returns what it changed.
    pub fn apply(&mut self) -> Result<Vec<String>, SysctlError> {
        if !self.manage {
            return Ok(Vec::new());
        }
        for note in std::mem::take(&mut self.notes) {
            tracing::info!("{note}");
        }
        for (name, originals) in std::mem::take(&mut self.orphans) {
            for (setting, value) in originals.changed() {
                self.host.write(&name, setting, value)?;
                tracing::info!(
                    "{} = {value} again: an earlier agent changed it and this one does not serve {name}",
                    sysctl_name(&name, setting)
                );
            }
        }
        let changes = self.fix("while the gateway runs")?;
        for change in &changes {
            tracing::info!("{change}");
        }
        Ok(changes)
    }

    /// Checks again (a reload): with `manage`, sets what someone changed behind the agent's
    /// back and says so; without, refuses with the same line as at start.
    pub fn recheck(&mut self) -> Result<Vec<String>, SysctlError> {
        if !self.manage {
            let problems = self.problems()?;
            if !problems.is_empty() {
                return Err(SysctlError::Refused(refusal(&problems)));
            }
            return Ok(Vec::new());
        }
        let fixed = self.fix("again: it was changed behind the gateway's back")?;
        for change in &fixed {
            tracing::warn!("{change}");
        }
        Ok(fixed)
    }

    /// An interface came back as a new device (`ifindex`), with the host's defaults: what
    /// was recorded for the old one no longer applies (called again for the same device,
    /// as when attaching it failed, it keeps what it recorded). Returns what it changed, or
    /// (not managing) the refusal line to warn with.
    pub fn interface_back(&mut self, name: &str, ifindex: u32) -> Result<Vec<String>, SysctlError> {
        if let Some(served) = self.served.iter_mut().find(|served| served.name == name)
            && served.ifindex != ifindex
        {
            served.ifindex = ifindex;
            served.originals = Originals::default();
        }
        if !self.manage {
            let problems: Vec<_> = self
                .problems()?
                .into_iter()
                .filter(|(interface, ..)| interface == name)
                .collect();
            if !problems.is_empty() {
                return Err(SysctlError::Refused(refusal(&problems)));
            }
            return Ok(Vec::new());
        }
        let changes = self.fix("while the gateway runs")?;
        for change in &changes {
            tracing::info!(interface = name, "{change}");
        }
        Ok(changes)
    }

    /// Sets every wrong value, after recording the value it replaces (unless an original is
    /// recorded already: that one is what goes back).
    fn fix(&mut self, why: &str) -> Result<Vec<String>, SysctlError> {
        let problems = self.problems()?;
        for (name, setting, own, _) in &problems {
            if let Some(served) = self.served.iter_mut().find(|served| served.name == *name)
                && served.originals.get(*setting).is_none()
            {
                served.originals.set(*setting, *own);
            }
        }
        self.save_record()?;
        let mut changes = Vec::new();
        for (name, setting, own, _) in problems {
            let (target, why) = match self.standby_rule(setting) {
                true => (0, "while this node is a standby"),
                false => (setting.fix(), why),
            };
            self.host.write(&name, setting, target)?;
            changes.push(format!(
                "{} {own} -> {target} {why} (put back when it stops)",
                sysctl_name(&name, setting),
            ));
        }
        Ok(changes)
    }

    /// Records what the agent owes (or removes the record when it owes nothing).
    fn save_record(&self) -> Result<(), SysctlError> {
        let interfaces: Vec<RecordedInterface> = self
            .served
            .iter()
            .filter(|served| !served.originals.is_empty())
            .map(|served| RecordedInterface {
                name: served.name.clone(),
                ifindex: served.ifindex,
                originals: served.originals.to_map(),
            })
            .collect();
        Record::save(&self.record_path, &self.host.identity, interfaces).map_err(|source| {
            SysctlError::Record {
                path: self.record_path.clone(),
                source,
            }
        })
    }

    /// A node of a high-availability pair changes role. A standby's served interfaces do
    /// not forward: its programs are detached, and its kernel would otherwise route what
    /// still reaches it (a host whose ARP entry for a virtual address is stale for a
    /// moment after a failover) untranslated, private addresses and all. On promotion
    /// `forwarding` is set again before the programs attach, so the first translated
    /// packet finds it (`bpf_fib_lookup` honours it). Managed sysctls only: with
    /// `manage_sysctls = false` the values are the operator's and nothing changes. Returns
    /// what it changed (logged).
    pub fn set_standby(&mut self, standby: bool) -> Result<Vec<String>, SysctlError> {
        if !self.manage || self.standby == standby {
            return Ok(Vec::new());
        }
        self.standby = standby;
        let changes = self.fix("on promotion to master")?;
        for change in &changes {
            tracing::info!("{change}");
        }
        Ok(changes)
    }

    /// Marks a node that starts as a standby before [`HostSettings::apply`], so that its
    /// interfaces never forward before a promotion (managed sysctls only).
    pub fn start_as_standby(&mut self) {
        self.standby = self.manage;
    }

    /// Whether `setting` follows the standby's rule (forwarding off) rather than its own.
    fn standby_rule(&self, setting: Setting) -> bool {
        self.standby && setting == Setting::Forwarding
    }

    fn allows(&self, setting: Setting, own: i64, all: i64) -> bool {
        match self.standby_rule(setting) {
            true => own == 0,
            false => setting.allows(own, all),
        }
    }

    /// Whether the agent sets wrong values (`manage_sysctls`).
    pub fn managed(&self) -> bool {
        self.manage
    }

    pub fn record_path(&self) -> &Path {
        &self.record_path
    }

    /// The served interfaces' sysctls as they are now.
    pub fn status(&self) -> Vec<SysctlStatus> {
        let mut rows = Vec::new();
        for served in &self.served {
            for setting in Setting::ALL {
                let own = self.host.read(&served.name, setting).ok();
                let all = match setting {
                    Setting::Forwarding => None,
                    _ => self.host.read("all", setting).ok(),
                };
                rows.push(SysctlStatus {
                    name: sysctl_name(&served.name, setting),
                    value: own,
                    all,
                    required: match self.standby_rule(setting) {
                        true => "0 while a standby".to_owned(),
                        false => setting.requirement().to_owned(),
                    },
                    ok: own.is_some_and(|own| self.allows(setting, own, all.unwrap_or(0))),
                    original: served.originals.get(setting),
                });
            }
        }
        rows
    }

    /// From now on a failed start leaves the values as they are (a pinned fast path is
    /// attached: it outlives the agent and needs them).
    pub fn keep_on_failure(&mut self, keep: bool) {
        self.keep_on_drop = keep;
    }

    /// Puts back every value the agent changed (on devices that are still the ones it
    /// changed) and removes the record.
    pub fn restore(mut self) {
        self.put_back();
    }

    fn put_back(&mut self) {
        self.finished = true;
        let mut failed = false;
        for served in &self.served {
            if (self.host.ifindex)(&served.name) != Some(served.ifindex) {
                continue;
            }
            for (setting, value) in served.originals.changed() {
                match self.host.write(&served.name, setting, value) {
                    Ok(()) => {
                        tracing::info!("{} = {value} again", sysctl_name(&served.name, setting))
                    }
                    Err(err) => {
                        failed = true;
                        tracing::warn!("could not put a sysctl back: {err}");
                    }
                }
            }
        }
        if !failed
            && let Err(err) = fs::remove_file(&self.record_path)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {err}", self.record_path.display());
        }
    }

    /// Leaves the values as set, and the record for the next agent (the fast path stays
    /// attached and needs them; the next agent puts them back when it stops for good).
    pub fn leave(mut self) {
        self.finished = true;
        if self
            .served
            .iter()
            .any(|served| !served.originals.is_empty())
        {
            tracing::info!(
                record = %self.record_path.display(),
                "sysctls left as the fast path needs them; the agent that detaches it puts them back"
            );
        }
    }
}

impl Drop for HostSettings {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if self.keep_on_drop {
            self.finished = true;
        } else {
            self.put_back();
        }
    }
}

/// The one line that refuses wrong values: each sysctl, its value, and why it matters.
fn refusal(problems: &[(String, Setting, i64, i64)]) -> String {
    let parts: Vec<String> = problems
        .iter()
        .map(|(interface, setting, own, all)| {
            let value = match setting {
                Setting::Forwarding => own.to_string(),
                _ => format!("{own} (net.ipv4.conf.all.{} = {all})", setting.key()),
            };
            format!(
                "{} is {value}: {}; it must be {}",
                sysctl_name(interface, *setting),
                setting.consequence(),
                setting.requirement()
            )
        })
        .collect();
    format!(
        "{}; [dataplane] manage_sysctls = false: set {} yourself, or remove that key to let the gateway set {} while it runs",
        parts.join("; "),
        if problems.len() == 1 { "it" } else { "them" },
        if problems.len() == 1 { "it" } else { "them" },
    )
}

mod record;
#[cfg(test)]
mod tests;
