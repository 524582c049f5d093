//! `gateway run` refuses what it cannot do with exactly one line that names the problem.

use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use gateway_tests::{
    gateway::binary,
    netns::{Netns, unique_prefix},
};

const GOOD: &str = r#"
[interfaces]
inside = "veth-in"
outside = "veth-out"

[dataplane]
hook = "auto"

[[publish]]
public = "203.0.113.1:21"
private = "10.0.0.2:21"
protocol = "tcp"
"#;

struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("{}-cli.toml", unique_prefix()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `gateway run --config <text>` (through `wrap`), expects failure, returns its one line.
fn run_error(text: &str, wrap: impl FnOnce(&mut Command)) -> String {
    let config = TempFile::new(text);
    let mut command = Command::new(binary().expect("gateway binary"));
    command
        .args(["run", "--config"])
        .arg(&config.0)
        .env_remove("RUST_BACKTRACE");
    wrap(&mut command);
    let output = command.output().expect("run gateway");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit status; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line expected:\n{stderr}");
    assert!(lines[0].starts_with("gateway: error: "), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn bad_configs_are_named_in_one_line() {
    let cases = [
        (
            GOOD.replace("hook = \"auto\"", "hook = \"auto\"\nturbo = true"),
            "unknown field `turbo`",
        ),
        (
            GOOD.replace("10.0.0.2:21", "10.0.0.2"),
            "publish #1: private = \"10.0.0.2\"",
        ),
        (
            format!(
                "{GOOD}\n[[publish]]\npublic = \"203.0.113.1:21\"\nprivate = \"10.0.0.3:21\"\nprotocol = \"tcp\"\n"
            ),
            "publish #2 repeats public 203.0.113.1:21/tcp",
        ),
        (
            GOOD.replace("inside = \"veth-in\"\n", ""),
            "missing field `inside`",
        ),
        ("[interfaces\n".to_owned(), "line 1"),
    ];
    for (text, expected) in cases {
        let line = run_error(&text, |_| {});
        assert!(line.contains(expected), "expected {expected:?} in {line:?}");
    }
    let output = Command::new(binary().unwrap())
        .args(["run", "--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "gateway: error: cannot read config /nonexistent/gateway.toml: No such file or directory (os error 2)"
    );
}

#[test]
fn a_missing_interface_is_named() {
    let netns = Netns::create(&format!("{}-cli", unique_prefix())).expect("netns");
    let config = TempFile::new(GOOD);
    let output = netns
        .command(binary().expect("binary").to_str().unwrap())
        .args(["run", "--config"])
        .arg(&config.0)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run gateway");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "gateway: error: interface \"veth-in\" (interfaces.inside) does not exist in this network namespace"
    );
}

#[test]
fn missing_privileges_are_named() {
    let line = run_error(GOOD, |command| {
        // nobody: no capabilities at all.
        command.uid(65534).gid(65534);
    });
    assert_eq!(
        line,
        "gateway: error: insufficient privileges: missing CAP_BPF and CAP_NET_ADMIN (run as root)"
    );
}

#[test]
fn xdp_mode_flag_conflicts_with_a_tc_hook() {
    let line = run_error(
        &GOOD.replace("hook = \"auto\"", "hook = \"tc\""),
        |command| {
            command.args(["--xdp-mode", "native"]);
        },
    );
    assert!(
        line.contains("--xdp-mode conflicts with dataplane.hook = \"tc\""),
        "{line}"
    );
}

#[test]
fn check_accepts_a_good_config() {
    let config = TempFile::new(GOOD);
    let output = Command::new(binary().unwrap())
        .args(["check", "--config"])
        .arg(&config.0)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "ok: 1 publish entry"
    );
}
