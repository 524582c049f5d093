//! Network namespaces, created with iproute2 and removed when their guard drops.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
};

use anyhow::{Context as _, bail};

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            bail!(
                "network namespace {name} already exists (left over? `cargo xtask lab down` removes the lab)"
            );
        }
        crate::run(Command::new("ip").args(["netns", "add", name]))?;
        let netns = Netns {
            name: name.to_owned(),
            owned: true,
        };
        netns.sh("ip link set lo up")?;
        Ok(netns)
    }

    /// A handle on an existing namespace that is not deleted on drop.
    pub fn existing(name: &str) -> anyhow::Result<Netns> {
        if !std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            bail!("network namespace {name} does not exist");
        }
        Ok(Netns {
            name: name.to_owned(),
            owned: false,
        })
    }

    /// Stops this guard from deleting the namespace.
    pub fn keep(mut self) {
        self.owned = false;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs a shell command line inside the namespace; fails on a non-zero exit.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        let output = crate::run(self.command("sh").args(["-ec", script]))
            .with_context(|| format!("in namespace {}", self.name))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Adds a TAP device `name`, up, in this namespace (as the agent's punt tap is); returns
    /// its ifindex.
    pub fn add_tap(&self, name: &str) -> anyhow::Result<u32> {
        let index = self.sh(&format!(
            "ip tuntap add dev {name} mode tap && ip link set {name} up && ip -o link show {name}"
        ))?;
        index
            .split(':')
            .next()
            .and_then(|index| index.trim().parse().ok())
            .with_context(|| format!("no ifindex for {name} in {index:?}"))
    }

    /// Moves the calling thread into this namespace (setns only affects the calling thread).
    pub fn enter(&self) -> anyhow::Result<()> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: a valid namespace fd; CLONE_NEWNET moves only this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
        }
        Ok(())
    }

    /// Runs `work` on a new thread inside this namespace.
    pub fn spawn<T, F>(&self, work: F) -> JoinHandle<anyhow::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        let netns = Netns {
            name: self.name.clone(),
            owned: false,
        };
        std::thread::spawn(move || {
            netns.enter()?;
            work()
        })
    }

    /// The kernel's counters of received packets with bad checksums or headers in this
    /// namespace (`/proc/net/snmp` `InCsumErrors` and `InHdrErrors` of every protocol).
    pub fn checksum_error_counters(&self) -> Vec<(String, u64)> {
        self.spawn(|| {
            let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
            let lines: Vec<&str> = snmp.lines().collect();
            let mut found = Vec::new();
            for pair in lines.chunks(2) {
                let [names, values] = pair else { continue };
                let prefix = names.split(':').next().unwrap_or_default();
                for (name, value) in names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .skip(1)
                {
                    if name == "InCsumErrors" || name == "InHdrErrors" {
                        found.push((
                            format!("{prefix}.{name}"),
                            value.parse().unwrap_or(u64::MAX),
                        ));
                    }
                }
            }
            Ok(found)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("snmp thread panicked"))
        .and_then(|result| result)
        .unwrap_or_else(|err| vec![(format!("reading snmp: {err:#}"), u64::MAX)])
    }

    /// Kills every process still in the namespace, then deletes it.
    pub fn delete(name: &str) {
        if let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a pid inside our own test namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", name]).output();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            Netns::delete(&self.name);
        }
    }
}

/// A prefix for namespace names unique to this process and call, so tests can run in parallel:
/// `gwt<pid>x<n>`. `cargo xtask test` removes prefixes whose process is gone.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "gwt{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the namespaces made under [`unique_prefix`] by processes for which `owner`
/// returns true; returns their names.
fn remove_namespaces_where(owner: impl Fn(u32) -> bool) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("gwt") else {
            continue;
        };
        let Some(pid) = rest
            .split('x')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner(pid) {
            Netns::delete(&name);
            removed.push(name);
        }
    }
    removed
}

/// Removes the namespaces of test runs whose process no longer exists (a test killed by a
/// timeout cannot run its own cleanup).
pub fn remove_stale_test_namespaces() -> Vec<String> {
    remove_namespaces_where(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes the namespaces process `pid` made (for a signal handler that is about to exit).
pub fn remove_namespaces_of(pid: u32) -> Vec<String> {
    remove_namespaces_where(|owner| owner == pid)
}
