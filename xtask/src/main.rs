//! `cargo xtask <task>`: everything a developer or CI does, from a fresh machine on.

mod bench;
mod demo;
mod fuzz;
mod setup;
mod soak;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use gateway_tests::lab::{DEFAULT_PREFIX, Lab, LabOptions};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks to build and test the gateway (idempotent).
    Setup,
    /// Set up, then build the `gateway` binary (with its BPF object embedded).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build or remove the reference lab topology (network namespaces gw-inside, gw-router,
    /// gw-outside).
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// The lab, the gateway and a real TCP transfer through a published server, explained.
    Demo,
    /// Measure the fast path beside Linux nftables NAT and plain forwarding; writes
    /// BENCHMARKS.md (needs root; a few minutes).
    Bench {
        /// Seconds per iperf3 measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Runs of every configuration (alternating); medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only the FTP rows, printed instead of written to BENCHMARKS.md.
        #[arg(long)]
        ftp_only: bool,
        /// Only the high-availability rows (failover gap, sync throughput and cost beside
        /// keepalived + conntrackd): printed, and written over their own section of
        /// BENCHMARKS.md (the other sections stay as the last full run wrote them).
        #[arg(long, conflicts_with_all = ["ftp_only", "fastpath_only"])]
        ha_only: bool,
        /// Only the lab's fast-path rows (throughput, router CPU per packet), printed instead
        /// of written to BENCHMARKS.md.
        #[arg(long)]
        fastpath_only: bool,
        /// `[ftp] busy_poll_us` for the gateway's FTP runs (the default configuration's
        /// otherwise), to measure the setting.
        #[arg(long)]
        busy_poll_us: Option<u64>,
        /// Holds idle CPUs to this wake-up latency (microseconds, a PM QoS request on
        /// /dev/cpu_dma_latency, as `[ftp] cpu_wakeup_latency_us` makes) for every setup of
        /// the FTP runs alike: a machine condition, to measure what wake-ups cost.
        #[arg(long)]
        cpu_wakeup_latency_us: Option<u32>,
    },
    /// Load and soak (needs root; bounded in time): thousands of FTP control sessions held
    /// open through the gateway and hundreds of downloads through them, then checks for
    /// failures, memory growth and state left behind.
    Soak {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        #[arg(long, default_value_t = 1_000)]
        transfers: usize,
        /// Seconds of downloads.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
    /// Run every fuzz target (after replaying past crashes) for a while each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        seconds: u32,
        /// Only these targets (`cargo fuzz list` names them); all when none is given.
        targets: Vec<String>,
    },
    /// Build the release binary and install it with its systemd unit and an example config
    /// (an existing config is never overwritten).
    Install {
        /// Where the binary goes (`<prefix>/bin/gateway`).
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Install under this directory instead of / (for packaging, or to look first).
        #[arg(long)]
        destdir: Option<PathBuf>,
    },
    /// Set up, build, and run every test (needs root). Extra arguments go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LabAction {
    Up,
    Down,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Soak {
            sessions,
            transfers,
            seconds,
        } => soak::run(sessions, transfers, seconds),
        Task::Install { prefix, destdir } => install(&prefix, destdir.as_deref()),
        Task::Build { release } => setup::run().and_then(|()| {
            build_gateway(release).map(|path| {
                println!("built {}", path.display());
            })
        }),
        Task::Lab {
            action: LabAction::Up,
        } => lab_up(),
        Task::Lab {
            action: LabAction::Down,
        } => {
            Lab::down(DEFAULT_PREFIX);
            println!("lab {DEFAULT_PREFIX} removed");
            Ok(())
        }
        Task::Demo => demo::run(),
        Task::Fuzz { seconds, targets } => fuzz::run(seconds, &targets),
        Task::Bench {
            seconds,
            runs,
            ftp_only,
            ha_only,
            fastpath_only,
            busy_poll_us,
            cpu_wakeup_latency_us,
        } => bench::run(&bench::Options {
            seconds,
            runs: runs.max(1),
            ftp_only,
            ha_only,
            fastpath_only,
            busy_poll_us,
            cpu_wakeup_latency_us,
        }),
        Task::Test { cargo_test_args } => test(&cargo_test_args),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

pub fn workspace_root() -> PathBuf {
    // xtask/ is one level below the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    // A backtrace variable in the environment buries the BPF verifier's log.
    command.env_remove("RUST_BACKTRACE");
    command
}

/// Builds the `gateway` binary and returns its path.
pub fn build_gateway(release: bool) -> anyhow::Result<PathBuf> {
    let mut command = cargo();
    command.args(["build", "--package", "gateway-user", "--bin", "gateway"]);
    if release {
        command.arg("--release");
    }
    let status = command.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("building the gateway failed ({status})");
    }
    let profile = if release { "release" } else { "debug" };
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target_dir.join(profile).join("gateway"))
}

/// `cargo xtask install`: binary, unit, example config and README.
fn install(prefix: &std::path::Path, destdir: Option<&std::path::Path>) -> anyhow::Result<()> {
    setup::run()?;
    let binary = build_gateway(true)?;
    let root = destdir.unwrap_or(std::path::Path::new("/"));
    let under = |path: &std::path::Path| root.join(path.strip_prefix("/").unwrap_or(path));
    let packaging = workspace_root().join("packaging");
    let bin = under(&prefix.join("bin/gateway"));
    let unit = under(std::path::Path::new("/etc/systemd/system/gateway.service"));
    let config = under(std::path::Path::new("/etc/gateway/gateway.toml"));
    let doc = under(&prefix.join("share/doc/gateway/README.md"));
    let copy = |from: &std::path::Path, to: &std::path::Path, mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::copy(from, to)
            .with_context(|| format!("cannot install {} as {}", from.display(), to.display()))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
        println!("installed {}", to.display());
        Ok(())
    };
    copy(&binary, &bin, 0o755)?;
    // The unit names /usr/local/bin; another prefix gets a unit that says so.
    let unit_text = std::fs::read_to_string(packaging.join("gateway.service"))?
        .replace("/usr/local/", &format!("{}/", prefix.display()));
    let staged = std::env::temp_dir().join("gateway.service");
    std::fs::write(&staged, unit_text)?;
    copy(&staged, &unit, 0o644)?;
    copy(&workspace_root().join("README.md"), &doc, 0o644)?;
    // High availability: keepalived's notify script and the example config, both naming
    // the binary under the prefix.
    for (name, to, mode) in [
        (
            "gateway-ha-notify",
            prefix.join("lib/gateway/gateway-ha-notify"),
            0o755,
        ),
        (
            "keepalived.conf",
            prefix.join("share/doc/gateway/keepalived.conf"),
            0o644,
        ),
    ] {
        let text = std::fs::read_to_string(packaging.join(name))?
            .replace("/usr/local/", &format!("{}/", prefix.display()));
        let staged = std::env::temp_dir().join(name);
        std::fs::write(&staged, text)?;
        copy(&staged, &under(&to), mode)?;
    }
    if config.exists() {
        println!("kept {} (exists)", config.display());
    } else {
        copy(&packaging.join("gateway.toml"), &config, 0o600)?;
    }
    println!(
        "next: edit {}, then `systemctl daemon-reload && systemctl enable --now gateway`",
        config.display()
    );
    Ok(())
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (network namespaces and BPF); run it as root");
    }
    Ok(())
}

fn lab_up() -> anyhow::Result<()> {
    require_root("cargo xtask lab up")?;
    setup::run()?;
    if Lab::exists(DEFAULT_PREFIX) {
        bail!("the lab is already up (cargo xtask lab down removes it)");
    }
    Lab::up(DEFAULT_PREFIX, LabOptions::default())?.keep();
    let [inside, router, outside] = Lab::namespace_names(DEFAULT_PREFIX);
    println!(
        "lab up: {inside} (server 10.0.0.2), {router} (gateway: veth-in 10.0.0.1, veth-out 203.0.113.1), {outside} (client 203.0.113.2)\n\
         run the gateway:  ip netns exec {router} target/debug/gateway run --config gateway.toml\n\
         remove it:        cargo xtask lab down"
    );
    Ok(())
}

/// Formatting and clippy (warnings are errors) over the host crates and the BPF programs, so
/// that CI keeps the code as clean as it is reviewed.
fn lint() -> anyhow::Result<()> {
    let run = |command: &mut Command, what: &str| -> anyhow::Result<()> {
        let status = command
            .status()
            .with_context(|| format!("cannot run {what}"))?;
        if !status.success() {
            bail!("{what} failed ({status})");
        }
        Ok(())
    };
    run(
        cargo().args(["fmt", "--all", "--check"]),
        "cargo fmt --check",
    )?;
    // The fuzz crate is a workspace of its own (nightly and sanitizers for libFuzzer).
    run(
        cargo().args(["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"]),
        "cargo fmt --check (fuzz)",
    )?;
    run(
        cargo().args(["clippy", "--quiet", "--all-targets", "--", "-D", "warnings"]),
        "cargo clippy",
    )?;
    // The BPF crate needs the nightly cargo (build-std); `cargo()` is the running stable one.
    run(
        Command::new("rustup")
            .current_dir(workspace_root().join("gateway-ebpf"))
            .env_remove("RUST_BACKTRACE")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--quiet",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--bins",
                "--",
                "-D",
                "warnings",
            ]),
        "cargo clippy (BPF programs)",
    )?;
    println!("lint: fmt and clippy clean");
    Ok(())
}

fn test(cargo_test_args: &[String]) -> anyhow::Result<()> {
    gateway_tests::check_environment()?;
    for stale in gateway_tests::netns::remove_stale_test_namespaces() {
        println!("removed namespace {stale} left by an earlier, killed test run");
    }
    setup::run()?;
    lint()?;
    let gateway = build_gateway(false)?;
    let status = cargo()
        .arg("test")
        .args(cargo_test_args)
        .env("GATEWAY_BIN", &gateway)
        .status()
        .context("cannot run cargo test")?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    // Every input a fuzz target keeps (past crashes, seeds) through the target's body, on the
    // stable toolchain: a fixed crash stays fixed without a fuzzing run.
    let status = cargo()
        .args(["test", "--manifest-path", "fuzz/Cargo.toml", "--lib"])
        .status()
        .context("cannot run cargo test (fuzz)")?;
    if !status.success() {
        bail!("fuzz regression inputs failed ({status})");
    }
    Ok(())
}
