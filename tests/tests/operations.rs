//! Operating a running gateway: the management commands checked against real sessions in the
//! lab (tables and JSON), Prometheus metrics, JSON logs, a reload that changes the FTP policy
//! while a transfer runs, a refused reload, and flushing.

use std::{net::SocketAddrV4, os::unix::fs::PermissionsExt as _, time::Duration};

use gateway_tests::{
    TempFile, check_environment,
    ftp::{self, FtpServer, Script, ServerKind},
    gateway::GatewayProcess,
    lab::{self, Lab, LabOptions},
    netns::unique_prefix,
    transfer::pattern,
};
use serde_json::Value;

fn config(extra: &str) -> String {
    format!(
        "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
         [[publish]]\npublic = \"{public}:21\"\nprivate = \"{server}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n\n\
         [masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{public}\"]\n\n\
         [metrics]\nlisten = \"127.0.0.1:9469\"\n{extra}",
        public = lab::PUBLIC,
        server = lab::SERVER,
    )
}

fn json(gateway: &GatewayProcess, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let text = gateway
        .ask(&args)
        .unwrap_or_else(|err| panic!("gateway {args:?}: {err:#}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{args:?}: {err}: {text}"))
}

#[test]
fn management_commands_show_the_real_sessions() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config(""));
    let mut gateway =
        GatewayProcess::start(&lab.router, &config.0, &["--log-format", "json"]).expect("gateway");
    let _server = FtpServer::start(ServerKind::Vsftpd, &lab.inside, lab::SERVER).expect("vsftpd");

    // An FTP control session held open after PASV, and a masqueraded ping.
    let held = Script::spawn(
        &lab.outside,
        "hold_session.py",
        &[&lab::PUBLIC.to_string(), "4"],
    )
    .expect("held session");
    lab.inside
        .sh(&format!("ping -c 2 -i 0.2 -q {} >/dev/null", lab::CLIENT))
        .expect("ping");
    std::thread::sleep(Duration::from_millis(800));

    // The socket is root's only.
    let mode = std::fs::metadata(gateway.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let ftp_sessions = json(&gateway, &["sessions", "--ftp"]);
    let rows = ftp_sessions.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{ftp_sessions}");
    let row = &rows[0];
    assert!(row["client"].as_str().unwrap().starts_with("203.0.113.2:"));
    assert_eq!(row["server"], "10.0.0.2:21");
    assert_eq!(row["server_seen"], "203.0.113.1:21");
    assert_eq!(row["user"], "anonymous");
    assert_eq!(row["state"], "logged-in");
    assert_eq!(row["pending_expectations"], 1);

    let expectations = json(&gateway, &["expectations"]);
    let rows = expectations.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{expectations}");
    assert_eq!(rows[0]["kind"], "inbound");
    assert_eq!(rows[0]["peer"], "203.0.113.2");
    let endpoint: SocketAddrV4 = rows[0]["endpoint"].as_str().unwrap().parse().unwrap();
    assert_eq!(*endpoint.ip(), lab::PUBLIC);
    assert_eq!(
        rows[0]["target"],
        format!("{}:{}", lab::SERVER, endpoint.port())
    );

    let icmp = json(
        &gateway,
        &["sessions", "--filter", "proto=icmp,addr=10.0.0.2"],
    );
    let rows = icmp.as_array().unwrap();
    assert_eq!(rows.len(), 2, "one entry per direction: {icmp}");
    assert!(rows.iter().all(|row| row["packets"].as_u64() == Some(2)));
    let outbound = rows
        .iter()
        .find(|row| row["original"].as_str().unwrap().starts_with("10.0.0.2:"))
        .expect("outbound entry");
    assert!(
        outbound["translated"]
            .as_str()
            .unwrap()
            .starts_with("203.0.113.1:"),
        "{outbound}"
    );

    // The tables, as an operator reads them.
    let table = gateway.ask(&["sessions", "--ftp"]).unwrap();
    assert!(table.starts_with("CLIENT (SEEN AS)"), "{table}");
    assert!(
        table.contains("anonymous") && table.contains("logged-in"),
        "{table}"
    );
    let status = gateway.ask(&["status"]).unwrap();
    for expected in [
        "veth-in",
        "veth-out",
        "tc (tcx ingress)",
        "gateway_tc id",
        "1 ftp control sessions",
    ] {
        assert!(status.contains(expected), "{expected}: {status}");
    }

    let stats = json(&gateway, &["stats"]);
    let counter = |part: &str, name: &str| -> u64 {
        stats[part]
            .as_array()
            .unwrap()
            .iter()
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair[1].as_u64())
            .unwrap_or(0)
    };
    assert!(counter("fastpath", "punted") > 0, "{stats}");
    assert_eq!(counter("fastpath", "session_created"), 1, "{stats}");
    assert_eq!(counter("alg", "alg_sessions_opened"), 1, "{stats}");

    let metrics = lab
        .router
        .sh("curl -sS http://127.0.0.1:9469/metrics")
        .expect("metrics");
    assert!(
        metrics.contains("# TYPE gateway_fastpath_packets_total counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_ftp_control_sessions 1"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_expectations 1"), "{metrics}");
    assert!(metrics.contains("gateway_ftp_violations_total{check=\"bounce\"} 0"));
    let missing = lab
        .router
        .sh("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9469/other")
        .expect("404");
    assert_eq!(missing, "404");

    // Flushing the ALG forgets the session (and its expectation).
    let flushed = json(&gateway, &["flush", "--ftp"]);
    assert_eq!(flushed["removed"], 1);
    assert!(
        json(&gateway, &["expectations"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let flushed = json(&gateway, &["flush"]);
    assert_eq!(flushed["removed"], 2);
    drop(held);

    gateway.stop().expect("stop");
    // JSON logs: every line is an object with a level and a message.
    let output = gateway.output();
    let mut lines = 0;
    for line in output.lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(
            value["level"].is_string() && value["fields"]["message"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 5);
    assert!(output.contains("ftp control session started"));
    assert!(!gateway.socket().exists(), "the socket goes with the agent");
}

#[test]
fn reload_applies_a_new_policy_while_a_transfer_runs() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config(""));
    let gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let server = FtpServer::start(ServerKind::Vsftpd, &lab.inside, lab::SERVER).expect("vsftpd");
    let content = pattern(5, 24 << 20);
    server.put("big", &content).expect("put");
    server.put("small", b"small file\n").expect("put");

    // A transfer slow enough to span the reloads (24 MiB at 8 MiB/s).
    let local = std::env::temp_dir().join(format!("{prefix}-big"));
    let transfer = lab
        .outside
        .command("timeout")
        .args(["60", "curl", "-sS", "--limit-rate", "8M"])
        .arg(format!("ftp://{}/big", lab::PUBLIC))
        .args(["-o", local.to_str().unwrap()])
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(500));

    // An invalid file is refused with its reason; nothing changes.
    std::fs::write(
        &config.0,
        config_text("[ftp.policy]\ndeny_commands = [\"SIZE!\"]\n"),
    )
    .unwrap();
    let refused = gateway.ask(&["reload"]).expect_err("invalid config");
    assert!(
        format!("{refused:#}").contains("not an FTP command")
            && format!("{refused:#}").contains("the running configuration stays"),
        "{refused:#}"
    );
    // A change that needs a restart is refused too.
    std::fs::write(&config.0, config_text("").replace("veth-out", "veth-x")).unwrap();
    let refused = gateway.ask(&["reload"]).expect_err("interfaces change");
    assert!(
        format!("{refused:#}").contains("needs a restart"),
        "{refused:#}"
    );

    // The new policy: RETR denied from now on.
    std::fs::write(
        &config.0,
        config_text("[ftp.policy]\ndeny_commands = [\"RETR\"]\n"),
    )
    .unwrap();
    let applied = gateway.ask(&["reload"]).expect("reload");
    assert!(
        applied.contains("ftp settings and policies applied"),
        "{applied}"
    );

    // A new session is held to it...
    let small = std::env::temp_dir().join(format!("{prefix}-small"));
    let denied = ftp::transfer(
        ftp::Client::Curl,
        ftp::Mode::Pasv,
        ftp::Direction::Download,
        &lab.outside,
        lab::CLIENT,
        SocketAddrV4::new(lab::PUBLIC, 21),
        "small",
        &small,
    );
    let message = format!("{:#}", denied.expect_err("RETR is denied now"));
    assert!(message.contains("502"), "{message}");
    // ...while the transfer that was running finishes intact.
    let status = transfer.wait_with_output().expect("curl");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(ftp::sha256_file(&local).unwrap(), ftp::sha256(&content));
    let _ = std::fs::remove_file(&local);
    let stats = json(&gateway, &["stats"]);
    assert!(
        stats
            .to_string()
            .contains("[\"alg_violation_denied_command\",1]"),
        "{stats}"
    );
}

/// The test config with `extra` appended (the reload test rewrites the file in place).
fn config_text(extra: &str) -> String {
    config(extra)
}

#[test]
fn capture_writes_the_alg_packets_as_punted_and_as_sent() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config(""));
    let gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let server = FtpServer::start(ServerKind::Vsftpd, &lab.inside, lab::SERVER).expect("vsftpd");
    server.put("file", b"captured\n").expect("put");
    let pcap = std::env::temp_dir().join(format!("{prefix}.pcap"));
    let binary = gateway_tests::gateway::binary().expect("binary");
    let capture = std::process::Command::new(&binary)
        .args(["capture", "--ftp", "--duration", "4", "-w"])
        .arg(&pcap)
        .arg("--socket")
        .arg(gateway.socket())
        .spawn()
        .expect("capture");
    std::thread::sleep(Duration::from_millis(500));
    let local = std::env::temp_dir().join(format!("{prefix}-file"));
    ftp::transfer(
        ftp::Client::Curl,
        ftp::Mode::Pasv,
        ftp::Direction::Download,
        &lab.outside,
        lab::CLIENT,
        SocketAddrV4::new(lab::PUBLIC, 21),
        "file",
        &local,
    )
    .expect("download");
    let _ = std::fs::remove_file(&local);
    let status = capture.wait_with_output().expect("capture ends");
    assert!(status.status.success());
    let file = std::fs::read(&pcap).expect("pcap");
    // tcpdump reads it.
    let read = std::process::Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&pcap)
        .output()
        .expect("tcpdump (cargo xtask setup installs it)");
    let _ = std::fs::remove_file(&pcap);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let listing = String::from_utf8_lossy(&read.stdout);
    assert!(listing.contains("10.0.0.2.21 > 203.0.113.2."), "{listing}");
    assert!(
        listing.contains("203.0.113.1.21 > 203.0.113.2."),
        "{listing}"
    );
    let packets = gateway_user::capture::packets(&file).expect("a well-formed pcap");
    assert!(packets.len() > 10, "{} packets", packets.len());
    let text: Vec<String> = packets
        .iter()
        .map(|packet| String::from_utf8_lossy(packet).into_owned())
        .collect();
    // The 227 as the server sent it and as the client got it.
    assert!(
        text.iter().any(|t| t.contains("(10,0,0,2,")),
        "the 227 as punted"
    );
    assert!(
        text.iter().any(|t| t.contains("(203,0,113,1,")),
        "the 227 as sent"
    );
    // Every record is an IPv4 packet.
    assert!(
        packets
            .iter()
            .all(|packet| packet.first().is_some_and(|b| b >> 4 == 4))
    );
}

/// The scheduling policy and real-time priority of a process (`/proc/PID/stat` fields 41, 40).
fn scheduling(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses and may hold spaces; the first
    // of them is field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| fields[n - 3].parse::<u32>().expect("number");
    (field(41), field(40))
}

#[test]
fn realtime_priority_is_applied_and_reloaded() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_FIFO: u32 = 1;
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let config = TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &config("\n[ftp]\nrealtime_priority = 7\n"),
    );
    let gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    assert_eq!(scheduling(gateway.pid()), (SCHED_FIFO, 7));

    // Out of range: refused, the priority stays.
    std::fs::write(&config.0, config_text("\n[ftp]\nrealtime_priority = 0\n")).unwrap();
    let refused = gateway.ask(&["reload"]).expect_err("priority 0");
    assert!(
        format!("{refused:#}").contains("ftp.realtime_priority = 0"),
        "{refused:#}"
    );
    assert_eq!(scheduling(gateway.pid()), (SCHED_FIFO, 7));

    // Removed: back to the ordinary scheduler.
    std::fs::write(&config.0, config_text("")).unwrap();
    let applied = gateway.ask(&["reload"]).expect("reload");
    assert!(applied.contains("agent priority ordinary"), "{applied}");
    assert_eq!(scheduling(gateway.pid()), (SCHED_OTHER, 0));

    // And the ALG still answers at its new priority: a passive download through it.
    let server = FtpServer::start(ServerKind::Vsftpd, &lab.inside, lab::SERVER).expect("vsftpd");
    server.put("small", b"small file\n").expect("put");
    let local = std::env::temp_dir().join(format!("{prefix}-small"));
    ftp::transfer(
        ftp::Client::Curl,
        ftp::Mode::Pasv,
        ftp::Direction::Download,
        &lab.outside,
        lab::CLIENT,
        SocketAddrV4::new(lab::PUBLIC, 21),
        "small",
        &local,
    )
    .expect("download");
    assert_eq!(std::fs::read(&local).unwrap(), b"small file\n");
    let _ = std::fs::remove_file(&local);
}
