//! Restart without loss: with `[dataplane] pin_path`, `kill -9` of the agent in the middle of
//! a 200 MiB FTP download. The fast path (pinned links and maps) keeps the data moving; a new
//! agent adopts it and the saved control sessions; the download completes with the right
//! sha256, the new agent lists the session, and a new FTP session works. `--detach-on-exit`
//! then leaves nothing pinned.
//!
//! The bpffs lives in a private mount namespace held by a `sleep` process: nothing is mounted
//! in the test's own (the host's) mount namespace.

use std::{net::SocketAddrV4, time::Duration};

use gateway_tests::{
    TempFile,
    bpffs::BpfMount,
    check_environment,
    ftp::{self, FtpServer, ServerKind},
    gateway::{self, GatewayProcess},
    lab::{self, Lab, LabOptions},
    netns::unique_prefix,
    transfer::pattern,
};

#[test]
fn kill_9_during_a_download_loses_nothing() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let bpf = BpfMount::new(std::env::temp_dir().join(format!("{prefix}-bpf"))).expect("bpffs");
    let state = std::env::temp_dir().join(format!("{prefix}-state"));
    let config_text = format!(
        "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
         [dataplane]\npin_path = \"{pins}\"\n\n\
         [[publish]]\npublic = \"{public}:21\"\nprivate = \"{server}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n\n\
         [ftp]\nstate_file = \"{state}/ftp.json\"\n",
        pins = bpf.dir.join("gateway").display(),
        public = lab::PUBLIC,
        server = lab::SERVER,
        state = state.display(),
    );
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config_text);
    let binary = gateway::binary().expect("binary");
    let start = |extra: &[&str]| {
        GatewayProcess::start_wrapped(&binary, &lab.router, &config.0, extra, &bpf.wrapper())
            .expect("gateway")
    };

    let server = FtpServer::start(ServerKind::Vsftpd, &lab.inside, lab::SERVER).expect("vsftpd");
    let content = pattern(200, 200 << 20);
    server.put("big", &content).expect("put");
    let local = std::env::temp_dir().join(format!("{prefix}-big"));

    let mut first = start(&[]);
    assert!(bpf.listing("gateway/links").contains("veth-in-tc"));
    let status = first.ask(&["status"]).expect("status");
    assert!(status.contains("punt        tap gwpunt"), "{status}");
    // About 4 s at 50 MiB/s: the agent dies in the middle.
    let download = lab
        .outside
        .command("timeout")
        .args(["60", "curl", "-sS", "--limit-rate", "50M"])
        .arg(format!("ftp://{}/big", lab::PUBLIC))
        .args(["-o", local.to_str().unwrap()])
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(1500));
    first.kill_hard().expect("kill -9");
    std::thread::sleep(Duration::from_millis(700));

    let mut second = start(&["--detach-on-exit"]);
    let log = second.output();
    assert!(log.contains("adopted the fast path"), "{log}");
    assert!(log.contains("restored the ftp control sessions"), "{log}");
    let sessions = second
        .ask(&["sessions", "--ftp", "--json"])
        .expect("sessions");
    let sessions: serde_json::Value = serde_json::from_str(&sessions).unwrap();
    let rows = sessions.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{sessions}");
    assert!(
        rows[0]["client"]
            .as_str()
            .unwrap()
            .starts_with("203.0.113.2:")
    );
    assert_eq!(rows[0]["server"], "10.0.0.2:21");
    // Its 227 was rewritten (a longer line) before the kill: the pure-ACK entries the new
    // agent adopted agree with the restored session, both sides' ACKs go on in the fast path.
    assert_eq!(
        rows[0]["fast_path_acks"],
        serde_json::json!([true, true]),
        "{sessions}"
    );

    let finished = download.wait_with_output().expect("curl");
    assert!(
        finished.status.success(),
        "{}\nfirst agent:\n{}\nsecond agent:\n{}",
        String::from_utf8_lossy(&finished.stderr),
        first.output(),
        second.output()
    );
    assert_eq!(ftp::sha256_file(&local).unwrap(), ftp::sha256(&content));
    let _ = std::fs::remove_file(&local);

    // A new session through the new agent.
    server.put("small", b"after the restart\n").expect("put");
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
    .expect("a new session");
    assert_eq!(std::fs::read(&local).unwrap(), b"after the restart\n");
    let _ = std::fs::remove_file(&local);
    // The new agent published its own tap into the adopted PUNT_TAP: the new session's
    // control packets came over it. (Between the two agents, punts went to the ring,
    // which the second agent drained.)
    let stats = second.ask(&["stats", "--json"]).expect("stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let from_tap = stats["alg"]
        .as_array()
        .and_then(|pairs| pairs.iter().find(|pair| pair[0] == "alg_punt_tap_packets"))
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or(0);
    assert!(from_tap >= 8, "control packets over the new tap: {stats}");

    // --detach-on-exit: nothing stays pinned.
    second.stop().expect("stop");
    assert_eq!(bpf.listing("gateway/links").trim(), "", "links unpinned");
    assert_eq!(bpf.listing("gateway/maps").trim(), "", "maps unpinned");
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn pinned_maps_of_another_layout_are_refused() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let bpf = BpfMount::new(std::env::temp_dir().join(format!("{prefix}-bpf"))).expect("bpffs");
    let pins = bpf.dir.join("gateway");
    let config = TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &format!(
            "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n[dataplane]\npin_path = \"{}\"\n",
            pins.display()
        ),
    );
    let binary = gateway::binary().expect("binary");
    // The first agent leaves its fast path pinned (no --detach-on-exit).
    let mut first =
        GatewayProcess::start_wrapped(&binary, &lab.router, &config.0, &[], &bpf.wrapper())
            .expect("gateway");
    first.stop().expect("stop");
    assert!(
        first.output().contains("left running and pinned"),
        "{}",
        first.output()
    );
    // What another version would have left there.
    let layout = pins.join("maps").join("LAYOUT");
    let mut command = bpf.wrapper();
    command.extend([
        "python3".into(),
        gateway_tests::ftp::script("set_pinned_u32.py")
            .display()
            .to_string(),
        layout.display().to_string(),
        "99".into(),
    ]);
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .status()
        .expect("python3");
    assert!(status.success());
    let refused =
        GatewayProcess::start_wrapped(&binary, &lab.router, &config.0, &[], &bpf.wrapper());
    let message = format!(
        "{:#}",
        refused.err().expect("a layout mismatch must be refused")
    );
    assert!(
        message.contains(&format!(
            "have layout 99, this agent uses {}",
            gateway_common::LAYOUT_VERSION
        )) && message.contains("--detach-on-exit"),
        "{message}"
    );
    // The first agent left its record of the sysctls for the agent that detaches; none will
    // (the namespace goes with the lab).
    let _ = std::fs::remove_file(gateway_user::sysctl::record_path(first.socket()));
}
