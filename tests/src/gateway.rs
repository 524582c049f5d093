//! A `gateway run` process in a namespace, stopped (and its output kept) by its guard.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};

use crate::netns::Netns;

/// The `gateway` binary under test: `$GATEWAY_BIN` if set, else the workspace's own, brought
/// up to date first (`cargo test` builds a test's library dependencies but not their binaries,
/// so a stale `gateway` would otherwise be tested).
pub fn binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os("GATEWAY_BIN") {
        return Ok(PathBuf::from(path));
    }
    BUILT
        .get_or_init(|| build_binary().map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(|err| anyhow!(err))
}

fn build_binary() -> anyhow::Result<PathBuf> {
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary is not inside a cargo target directory")?;
    let release = profile_dir
        .file_name()
        .is_some_and(|name| name == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--package",
            "gateway-user",
            "--bin",
            "gateway",
        ])
        .env_remove("RUST_BACKTRACE");
    if release {
        command.arg("--release");
    }
    crate::run(&mut command).context("building the gateway binary for the tests")?;
    let binary = profile_dir.join("gateway");
    if !binary.is_file() {
        bail!("built the gateway, but {} is missing", binary.display());
    }
    Ok(binary)
}

pub struct GatewayProcess {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// Its management socket, private to this process (tests run gateways side by side).
    socket: PathBuf,
    binary: PathBuf,
    /// The threads that read its output; they end when it exits and closes its pipes.
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// The line `gateway run` logs once everything is attached.
const READY: &str = "gateway running";

impl GatewayProcess {
    /// Starts `gateway run --config <config> <extra>` in `netns` and waits until it reports it
    /// is running (or fails with its own error output).
    pub fn start(netns: &Netns, config: &Path, extra: &[&str]) -> anyhow::Result<GatewayProcess> {
        GatewayProcess::start_binary(&binary()?, netns, config, extra)
    }

    /// As [`GatewayProcess::start`], with an explicit `gateway` binary.
    pub fn start_binary(
        binary: &Path,
        netns: &Netns,
        config: &Path,
        extra: &[&str],
    ) -> anyhow::Result<GatewayProcess> {
        GatewayProcess::start_wrapped(binary, netns, config, extra, &[])
    }

    /// As [`GatewayProcess::start_binary`], run through `wrapper` (a command that execs the
    /// rest, such as `nsenter --mount=...` to share a private bpffs mount).
    pub fn start_wrapped(
        binary: &Path,
        netns: &Netns,
        config: &Path,
        extra: &[&str],
        wrapper: &[String],
    ) -> anyhow::Result<GatewayProcess> {
        let binary_text = binary.to_str().context("binary path is not UTF-8")?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = std::process::Command::new(program);
                command
                    .args(args)
                    .args(["ip", "netns", "exec", netns.name(), binary_text]);
                command
            }
            None => netns.command(binary_text),
        };
        let socket = socket_of(netns.name());
        command
            .args(["run", "--config"])
            .arg(config)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env_remove("RUST_BACKTRACE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("spawn {command:?}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut readers = Vec::new();
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let ready_tx = ready_tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains(READY) {
                        let _ = ready_tx.send(());
                    }
                    if let Ok(mut log) = log.lock() {
                        log.push(line);
                    }
                }
            }));
        }
        drop(ready_tx);
        let mut process = GatewayProcess {
            child: Some(child),
            log,
            socket,
            binary: binary.to_owned(),
            readers,
        };
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => Ok(process),
            Err(_) => {
                let status = process.stop()?;
                bail!(
                    "gateway did not start ({status}); its output:\n{}",
                    process.output()
                )
            }
        }
    }

    /// Its process id (for memory readings).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The management socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `gateway <args> --socket <its socket>` (a management command) and returns its
    /// standard output; an error carries its standard error.
    pub fn ask(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = crate::run(
            std::process::Command::new(&self.binary)
                .args(args)
                .arg("--socket")
                .arg(&self.socket)
                .env_remove("RUST_BACKTRACE"),
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        self.log
            .lock()
            .map(|log| log.join("\n"))
            .unwrap_or_default()
    }

    /// A counter from the lines the gateway logs when it stops (`fast path detached
    /// counters=name=value ...`, `ftp alg stopped counters=...`), which list every counter,
    /// zeros included. Panics, naming the counter and showing the output, when it is not
    /// there: a misspelt counter, or a gateway that never printed its summary, must fail the
    /// test instead of reading as 0.
    pub fn final_counter(&self, name: &str) -> u64 {
        let output = self.output();
        summary_counter(&output, name).unwrap_or_else(|| {
            panic!("no counter {name} in the gateway's exit summary; its output:\n{output}")
        })
    }

    /// Asserts every one of `counters` is 0 in the exit summary (each must be there).
    pub fn assert_final_zero(&self, counters: &[&str]) {
        let output = self.output();
        for counter in counters {
            assert_eq!(self.final_counter(counter), 0, "{counter}\n{output}");
        }
    }

    /// A counter of the running gateway (`gateway stats --json`, fast path or ALG); an error
    /// when the gateway does not list it.
    pub fn counter_now(&self, name: &str) -> anyhow::Result<u64> {
        let text = self.ask(&["stats", "--json"])?;
        let stats: serde_json::Value = serde_json::from_str(&text)?;
        ["fastpath", "alg"]
            .iter()
            .filter_map(|part| stats[part].as_array())
            .flatten()
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair[1].as_u64())
            .with_context(|| format!("no counter {name} in {text}"))
    }

    /// SIGKILL, as a crash would end it; waits for it.
    pub fn kill_hard(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("gateway already stopped")
        };
        child.kill()?;
        child.wait()?;
        self.drain();
        Ok(())
    }

    /// Waits until everything the process wrote is in the log.
    fn drain(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// SIGTERM, then waits for it to exit (SIGKILL after 10 s). Returns its exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("gateway already stopped")
        };
        // `ip netns exec` execs the gateway, so the child's pid is the gateway's.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..200 {
            if let Some(status) = child.try_wait()? {
                self.drain();
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill()?;
        let status = child.wait()?;
        self.drain();
        Ok(status)
    }
}

/// The lines the agent logs at exit, each followed by `counters=` and the counters.
const SUMMARIES: [&str; 3] = [
    "fast path detached",
    "fast path left running",
    "ftp alg stopped",
];

/// `name`'s value in the exit summaries of `output`, matched by its whole name (`punted` is
/// not `alg_punted`), or `None`.
fn summary_counter(output: &str, name: &str) -> Option<u64> {
    output
        .lines()
        .filter(|line| SUMMARIES.iter().any(|summary| line.contains(summary)))
        .filter_map(|line| {
            line.split_once("counters=")
                .or_else(|| line.split_once(r#""counters":""#))
                .map(|(_, rest)| rest)
        })
        .find_map(|counters| {
            // `name=value` words up to the next field (`swept=sessions=...`), whose value is
            // not a number, or up to the quote that ends the list in a JSON log.
            counters
                .split('"')
                .next()?
                .split_whitespace()
                .map_while(|word| {
                    let (counter, value) = word.split_once('=')?;
                    Some((counter, value.parse::<u64>().ok()?))
                })
                .find(|(counter, _)| *counter == name)
                .map(|(_, value)| value)
        })
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// The management socket of the gateway a test starts in namespace `netns`.
pub fn socket_of(netns: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{netns}-gateway.sock"))
}

/// Where that gateway records the sysctls it set, for its next start to put back (named as
/// `gateway_user::sysctl::record_path` names it: this library does not link the agent's). An
/// agent that stops cleanly removes it; a killed one leaves it.
pub fn sysctl_record_of(netns: &str) -> std::path::PathBuf {
    socket_of(netns).with_extension("sysctls.json")
}

#[cfg(test)]
mod tests {
    use super::summary_counter;

    const OUTPUT: &str = "INFO gateway running hook=tc\n\
        INFO fast path detached counters=punted=0 session_hit=553 swept=sessions=3 peers=0\n\
        INFO ftp alg stopped counters=alg_packets=143 alg_punted=7";

    #[test]
    fn a_counter_is_found_by_its_whole_name_zeros_included() {
        assert_eq!(summary_counter(OUTPUT, "punted"), Some(0));
        assert_eq!(summary_counter(OUTPUT, "session_hit"), Some(553));
        assert_eq!(summary_counter(OUTPUT, "alg_packets"), Some(143));
        assert_eq!(summary_counter(OUTPUT, "alg_punted"), Some(7));
    }

    #[test]
    fn an_absent_counter_or_summary_is_none() {
        assert_eq!(summary_counter(OUTPUT, "expectation_used"), None);
        assert_eq!(summary_counter(OUTPUT, "unted"), None);
        // The sweep's figures are not counters.
        assert_eq!(summary_counter(OUTPUT, "peers"), None);
        assert_eq!(summary_counter("INFO gateway running", "punted"), None);
    }

    #[test]
    fn json_logs_are_read_too() {
        let json =
            r#"{"fields":{"message":"ftp alg stopped","counters":"alg_packets=5 alg_handled=0"}}"#;
        assert_eq!(summary_counter(json, "alg_handled"), Some(0));
    }
}
