//! `cargo xtask fuzz [--seconds N] [TARGET...]`: every fuzz target in fuzz/ (`cargo fuzz
//! list`), or those named, each for N seconds (default 600), after replaying the inputs that
//! once crashed it (fuzz/regressions/<target>). New corpus entries go to a scratch directory;
//! the in-tree corpus (fuzz/corpus/<target>) only seeds. A crash stops the run; its input is
//! in fuzz/artifacts/<target>/: fix the bug, then keep the input in fuzz/regressions/<target>/,
//! which `cargo xtask test` replays (fuzz/src/lib.rs).

use std::process::Command;

use anyhow::{Context as _, bail};

pub fn run(seconds: u32, only: &[String]) -> anyhow::Result<()> {
    crate::setup::run()?;
    ensure_cargo_fuzz()?;
    let fuzz_dir = crate::workspace_root().join("fuzz");
    let all = targets(&fuzz_dir)?;
    if let Some(unknown) = only.iter().find(|target| !all.contains(target)) {
        bail!("no fuzz target {unknown}: there are {}", all.join(", "));
    }
    let targets: Vec<&String> = all
        .iter()
        .filter(|target| only.is_empty() || only.contains(target))
        .collect();
    for target in &targets {
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
    println!("fuzz: no crash in {} targets", targets.len());
    Ok(())
}

/// The targets fuzz/Cargo.toml declares.
fn targets(fuzz_dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let output = cargo_fuzz(fuzz_dir)
        .arg("list")
        .output()
        .context("cannot run cargo fuzz list")?;
    if !output.status.success() {
        bail!(
            "cargo fuzz list failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let targets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("cargo fuzz list names no target");
    }
    Ok(targets)
}

fn fuzz_command(fuzz_dir: &std::path::Path, target: &str) -> Command {
    let mut command = cargo_fuzz(fuzz_dir);
    command.args(["run", target]);
    command
}

fn cargo_fuzz(fuzz_dir: &std::path::Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(fuzz_dir)
        .env_remove("RUST_BACKTRACE")
        .env("RUSTUP_TOOLCHAIN", "nightly")
        .arg("fuzz");
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
