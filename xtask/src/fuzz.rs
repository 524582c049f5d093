//! `cargo xtask fuzz --seconds N`: every fuzz target in fuzz/, each for N seconds, after
//! replaying the inputs that once crashed it (fuzz/regressions/<target>). New corpus entries
//! go to a scratch directory; the in-tree corpus (fuzz/corpus/<target>) only seeds.

use std::process::Command;

use anyhow::{Context as _, bail};

const TARGETS: &[&str] = &["ftp_lines", "ftp_session", "ftp_session_policy", "config"];

pub fn run(seconds: u32) -> anyhow::Result<()> {
    crate::setup::run()?;
    ensure_cargo_fuzz()?;
    let fuzz_dir = crate::workspace_root().join("fuzz");
    for target in TARGETS {
        let regressions = fuzz_dir.join("regressions").join(target);
        if let Ok(entries) = std::fs::read_dir(&regressions) {
            for entry in entries.flatten() {
                println!("fuzz: {target}: replaying {}", entry.path().display());
                fuzz_command(&fuzz_dir, target)
                    .arg(entry.path())
                    .status_ok()?;
            }
        }
        let scratch = std::env::temp_dir().join(format!("gateway-fuzz-{target}"));
        std::fs::create_dir_all(&scratch).context("scratch corpus")?;
        println!("fuzz: {target}: {seconds} s");
        fuzz_command(&fuzz_dir, target)
            .arg(&scratch)
            .arg(fuzz_dir.join("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .status_ok()?;
    }
    println!("fuzz: no crash in {} targets", TARGETS.len());
    Ok(())
}

fn fuzz_command(fuzz_dir: &std::path::Path, target: &str) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(fuzz_dir)
        .env_remove("RUST_BACKTRACE")
        .env("RUSTUP_TOOLCHAIN", "nightly")
        .args(["fuzz", "run", target]);
    command
}

trait StatusOk {
    fn status_ok(&mut self) -> anyhow::Result<()>;
}

impl StatusOk for Command {
    fn status_ok(&mut self) -> anyhow::Result<()> {
        let status = self
            .status()
            .with_context(|| format!("cannot run {self:?}"))?;
        if !status.success() {
            bail!("{self:?} failed ({status}); a crashing input is in fuzz/artifacts");
        }
        Ok(())
    }
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if present {
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}
