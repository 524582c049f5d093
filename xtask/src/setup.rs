//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing when all is there.
//!
//! - the nightly toolchain's `rust-src` (the BPF target builds `core` from source);
//! - LLVM development packages whose major version matches the nightly rustc's LLVM, which
//!   bpf-linker links against (a mismatch produces objects the linker cannot read);
//! - bpf-linker itself, built against that LLVM;
//! - the tools the lab and tests drive: iproute2, ethtool, ping, iperf3, nftables, and the FTP
//!   servers and clients (vsftpd, lftp, curl from Debian; pyftpdlib from PyPI);
//! - for `cargo xtask bench` only, `perf` (linux-perf), which profiles the agent, and
//!   conntrackd and conntrack, the Linux side of the high-availability rows.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail};

/// bpf-linker release known to build against the LLVM of the machine's nightly.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the lab and tests use, besides the LLVM ones.
const TOOL_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "iputils-ping",
    "iperf3",
    "nftables",
    // FTP servers and clients of the ALG tests.
    "vsftpd",
    "lftp",
    "curl",
    // Reads the pcap files of `gateway capture` in its test.
    "tcpdump",
    // VRRP: decides which of two gateways is active, in the high-availability test and
    // the packaged example (packaging/keepalived.conf).
    "keepalived",
];
/// Debian packages only the benchmarks use: `perf`, which profiles the agent; conntrackd
/// (and the `conntrack` tool, which counts the kernel's table), Linux's state sync, which
/// the high-availability rows compare the gateway pair with.
const BENCH_PACKAGES: &[&str] = &["linux-perf", "conntrackd", "conntrack"];
/// Python packages from PyPI the tests use, pinned: (import name, pip requirement).
const PYTHON_PACKAGES: &[(&str, &str)] = &[("pyftpdlib", "pyftpdlib==2.2.0")];

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut installed = Vec::new();
    if ensure_rust_src()? {
        installed.push("rust-src (nightly)".to_owned());
    }
    let llvm = nightly_llvm_major()?;
    let mut packages: Vec<String> = [
        format!("llvm-{llvm}-dev"),
        format!("libpolly-{llvm}-dev"),
        "libzstd-dev".into(),
        "zlib1g-dev".into(),
    ]
    .into();
    packages.extend(TOOL_PACKAGES.iter().map(|name| name.to_string()));
    installed.extend(ensure_packages(&packages)?);
    if ensure_bpf_linker(llvm)? {
        installed.push(format!("bpf-linker {BPF_LINKER_VERSION} (LLVM {llvm})"));
    }
    installed.extend(ensure_python_packages()?);
    if installed.is_empty() {
        println!(
            "setup: all present (nightly rust-src, LLVM {llvm}, bpf-linker, {}) in {:.1?}",
            TOOL_PACKAGES.join(", "),
            started.elapsed()
        );
    } else {
        println!(
            "setup: installed {} in {:.1?}",
            installed.join(", "),
            started.elapsed()
        );
    }
    Ok(())
}

/// What `cargo xtask bench` needs beyond [`run`]'s.
pub fn run_for_bench() -> anyhow::Result<()> {
    run()?;
    let packages: Vec<String> = BENCH_PACKAGES.iter().map(|name| name.to_string()).collect();
    let installed = ensure_packages(&packages)?;
    if !installed.is_empty() {
        println!(
            "setup: installed {} for the benchmarks",
            installed.join(", ")
        );
    }
    Ok(())
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rustup() -> Command {
    let mut command = Command::new("rustup");
    // Never let rustup fetch a toolchain behind our back.
    command.env("RUSTUP_AUTO_INSTALL", "0");
    command
}

/// Returns true if it had to install something.
fn ensure_rust_src() -> anyhow::Result<bool> {
    let toolchains = output(rustup().args(["toolchain", "list"])).context(
        "rustup is needed to build the BPF programs with the nightly toolchain; install rustup",
    )?;
    let mut changed = false;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain");
        output(rustup().args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("the BPF programs need a nightly toolchain and it could not be installed")?;
        changed = true;
    }
    let components =
        output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        println!("setup: adding rust-src to the nightly toolchain");
        output(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context("the BPF target builds `core` from source and needs nightly's rust-src")?;
        changed = true;
    }
    Ok(changed)
}

/// The major version of the LLVM that the nightly rustc is built on.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = output(rustup().args(["run", "nightly", "rustc", "-vV"]))?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .and_then(|text| text.trim().split('.').next()?.parse().ok())
        .ok_or_else(|| anyhow!("`rustc +nightly -vV` does not say which LLVM it uses:\n{version}"))
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn ensure_packages(packages: &[String]) -> anyhow::Result<Vec<String>> {
    let missing: Vec<&String> = packages
        .iter()
        .filter(|name| !package_installed(name))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let list = missing
        .iter()
        .map(|name| name.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("missing Debian packages: {list}; run this as root, or: apt-get install -y {list}");
    }
    println!("setup: installing {list}");
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context("cannot run apt-get (this set-up expects a Debian-based machine)")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-q"]).context("cannot refresh the package lists")?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing.iter().map(|name| name.as_str()));
    apt(&install).with_context(|| format!("cannot install {list}"))?;
    Ok(missing.into_iter().cloned().collect())
}

/// Installs the pinned PyPI packages the `python3` on PATH cannot import yet.
fn ensure_python_packages() -> anyhow::Result<Vec<String>> {
    let mut installed = Vec::new();
    for (module, requirement) in PYTHON_PACKAGES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run python3 (the FTP tests need it)")?
            .success();
        if present {
            continue;
        }
        println!("setup: installing {requirement} from PyPI");
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", requirement])
            .status()
            .context("cannot run pip")?;
        if !status.success() {
            bail!("pip install {requirement} failed ({status})");
        }
        installed.push((*requirement).to_owned());
    }
    Ok(installed)
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// bpf-linker is usable when it runs and is linked against the nightly's LLVM major.
fn bpf_linker_matches(llvm: u32) -> bool {
    let linker = cargo_bin_dir().join("bpf-linker");
    let Ok(libraries) = output(Command::new("ldd").arg(&linker)) else {
        return false;
    };
    libraries.contains(&format!("libLLVM.so.{llvm}")) && !libraries.contains("not found")
        || libraries.contains(&format!("libLLVM-{llvm}")) && !libraries.contains("not found")
}

fn ensure_bpf_linker(llvm: u32) -> anyhow::Result<bool> {
    if bpf_linker_matches(llvm) {
        return Ok(false);
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (a few minutes, once)"
    );
    let prefix = format!("/usr/lib/llvm-{llvm}");
    let path = format!("{prefix}/bin:{}", std::env::var("PATH").unwrap_or_default());
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{llvm}"))
        .env("LLVM_PREFIX", &prefix)
        .env("PATH", path)
        .env_remove("RUST_BACKTRACE")
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!(
            "cargo install bpf-linker {BPF_LINKER_VERSION} with feature llvm-{llvm} failed ({status}); \
             it needs llvm-{llvm}-dev and libpolly-{llvm}-dev, and a bpf-linker release that supports LLVM {llvm}"
        );
    }
    if !bpf_linker_matches(llvm) {
        bail!(
            "bpf-linker was installed but is not linked against LLVM {llvm} (check `ldd {}`)",
            cargo_bin_dir().join("bpf-linker").display()
        );
    }
    Ok(true)
}
