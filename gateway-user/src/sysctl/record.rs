//! The record of what the agent owes the host: for each interface, the values it found
//! before it changed them. Written durably before any change, removed once they are put
//! back; an agent that finds one (its predecessor was killed, or left a pinned fast path
//! running) takes the originals over.

use std::{
    collections::BTreeMap,
    fs, io,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{Originals, Setting, sysctl_name};

/// Which boot and which network namespace a record was written in: sysctls are per
/// namespace and start afresh at boot, so a record from elsewhere says nothing about them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIdentity {
    pub boot_id: String,
    /// Device and inode of `/proc/self/ns/net`.
    pub netns: (u64, u64),
}

impl HostIdentity {
    pub fn current() -> io::Result<HostIdentity> {
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")?
            .trim()
            .to_owned();
        let netns = fs::metadata("/proc/self/ns/net")?;
        Ok(HostIdentity {
            boot_id,
            netns: (netns.dev(), netns.ino()),
        })
    }
}

/// Where the original values are recorded: beside the management socket (one agent per
/// socket), named after it: `/run/gateway.sock` -> `/run/gateway.sysctls.json`.
pub fn record_path(socket: &Path) -> PathBuf {
    let derived = socket.with_extension("sysctls.json");
    if derived == socket {
        let mut name = socket.as_os_str().to_owned();
        name.push(".sysctls.json");
        PathBuf::from(name)
    } else {
        derived
    }
}

const RECORD_VERSION: u32 = 1;

/// The record on disk: for each interface, the values the agent found before it changed
/// them, which are put back when it stops.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    version: u32,
    #[serde(flatten)]
    identity: HostIdentity,
    pub(super) interfaces: Vec<RecordedInterface>,
}

impl Record {
    /// The record at `path` if there is one and it was written here (this boot, this
    /// network namespace); `Err` says why one that is there is not taken.
    pub(super) fn load(path: &Path, here: &HostIdentity) -> Result<Option<Record>, String> {
        // Not followed if a link, and only if nobody but this agent's user could have
        // written it: it says which sysctls to write, and may sit in a shared directory.
        let metadata = match fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
        };
        // SAFETY: geteuid cannot fail.
        let user = unsafe { libc::geteuid() };
        if !metadata.file_type().is_file() || metadata.uid() != user || metadata.mode() & 0o022 != 0
        {
            return Err(format!(
                "{} is not a regular file of user {user} that only it may write",
                path.display()
            ));
        }
        let text = fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let record: Record = serde_json::from_str(&text)
            .map_err(|err| format!("{} is not a record of sysctls ({err})", path.display()))?;
        if record.version != RECORD_VERSION {
            return Err(format!(
                "{} has version {}, not {RECORD_VERSION}",
                path.display(),
                record.version
            ));
        }
        if record.identity != *here {
            return Err(format!(
                "{} was written in another boot or network namespace (its values went with it)",
                path.display()
            ));
        }
        Ok(Some(record))
    }

    /// Writes a record of `interfaces` (or removes it when there are none), durably: a new
    /// file synced, renamed over the old, and the directory synced.
    pub(super) fn save(
        path: &Path,
        here: &HostIdentity,
        interfaces: Vec<RecordedInterface>,
    ) -> io::Result<()> {
        if interfaces.is_empty() {
            return match fs::remove_file(path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            };
        }
        let record = Record {
            version: RECORD_VERSION,
            identity: here.clone(),
            interfaces,
        };
        let text = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
        let directory = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(directory)?;
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        // A new file of our own, never through a link someone left there (the directory
        // may be shared): a stale one (a crash mid-save) is removed first, then created
        // exclusively.
        match fs::remove_file(&temporary) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        fs::File::open(directory)?.sync_all()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RecordedInterface {
    pub(super) name: String,
    /// The device the values belong to: one created again under the same name has the
    /// defaults again, not these.
    pub(super) ifindex: u32,
    pub(super) originals: BTreeMap<String, i64>,
}

impl RecordedInterface {
    pub(super) fn originals(&self) -> Result<Originals, String> {
        // A name that could leave `net/ipv4/conf` is no interface's.
        if !crate::system::valid_interface_name(&self.name) {
            return Err(format!("{:?} is not an interface name", self.name));
        }
        let mut originals = Originals::default();
        for (key, value) in &self.originals {
            let setting = Setting::from_key(key)
                .ok_or_else(|| format!("unknown sysctl {key:?} for {}", self.name))?;
            if !setting.valid(*value) {
                return Err(format!(
                    "{} = {value} is not a value the kernel takes",
                    sysctl_name(&self.name, setting)
                ));
            }
            originals.set(setting, *value);
        }
        Ok(originals)
    }
}
