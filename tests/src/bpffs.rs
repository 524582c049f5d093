//! A bpffs for pinning tests, mounted in a private mount namespace (never the host's), held
//! by a `sleep` for as long as the value lives. Programs that must see it run through
//! [`BpfMount::wrapper`] (`nsenter` into that namespace).

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use anyhow::{Context as _, bail};

pub struct BpfMount {
    holder: Child,
    pub dir: PathBuf,
}

impl BpfMount {
    /// Mounts a fresh bpffs at `dir` (created if missing) in a new private mount namespace.
    pub fn new(dir: PathBuf) -> anyhow::Result<BpfMount> {
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "mount -t bpf bpf {} && exec sleep 3600",
                dir.display()
            ))
            .spawn()
            .context("unshare")?;
        // Wait until the mount is there, as seen from inside the namespace.
        for _ in 0..100 {
            let mounted = Command::new("nsenter")
                .args([
                    "-t",
                    &holder.id().to_string(),
                    "-m",
                    "--",
                    "mountpoint",
                    "-q",
                ])
                .arg(&dir)
                .status()
                .is_ok_and(|status| status.success());
            if mounted {
                return Ok(BpfMount { holder, dir });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = holder.kill();
        let _ = holder.wait();
        bail!("bpffs did not appear at {}", dir.display())
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        ["nsenter", "-t", &self.holder.id().to_string(), "-m", "--"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// The names in `<dir>/<sub>`, as seen inside the namespace.
    pub fn listing(&self, sub: &str) -> String {
        Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-m", "--", "ls"])
            .arg(self.dir.join(sub))
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for BpfMount {
    fn drop(&mut self) {
        // The namespace, and with it the bpffs and anything still pinned there, goes with its
        // last process.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
