//! The ALG's policy against hostile clients, in namespaces, once per action (drop, reject,
//! reset): for every check a client breaks it, and the test shows from vsftpd's own protocol
//! log that the offending line never reached the server, that the configured action happened
//! (the gateway's reply and a session that goes on; silence; a reset), that the per-check
//! counter moved, and that a legitimate session through the same gateway worked meanwhile.

use std::{net::SocketAddrV4, time::Duration};

use gateway_tests::{
    TempFile,
    capture::Capture,
    check_environment,
    ftp::{self, FtpServer, Script, ServerKind},
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions},
    netns::unique_prefix,
    packet::{audit_checksums, summarize, tcp_numbers},
    transfer::pattern,
};
use serde_json::Value;

const SESSION_LIMIT: usize = 16;
const LIMIT_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 4);

/// Every scenario of `hostile_client.py`: its check, what the server's log must not contain,
/// and the gateway's reply code under `reject` ("reset" where every action resets: a line no
/// FTP client sends before login makes the session not FTP, and an endless line cannot be
/// framed).
const SCENARIOS: &[(&str, &str, &str)] = &[
    ("out_of_state", "secret-before-login", "503"),
    ("forbidden_user", "USER root", "530"),
    ("tls", "AUTH TLS", "534"),
    ("nul_or_bare_cr", "RETR smuggled", "reset"),
    ("spoofed_direction", "203,0,113,2,200,1", "501"),
    ("denied_command", "denied-site", "502"),
    ("bounce", "203,0,113,3,200,1", "504"),
    ("low_port", "203,0,113,2,0,80", "504"),
    ("embedded", "203,0,113,2,200,2", "501"),
    ("malformed", "203,0,113,2,300,1", "501"),
    ("line_too_long", "xxxxxxxxxxxxxxxx", "reset"),
];

fn config(action: &str) -> String {
    format!(
        "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
         [[publish]]\npublic = \"{public}:21\"\nprivate = \"{server}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n\
         [publish.policy]\ndeny_users = [\"root\"]\ndeny_commands = [\"SITE\"]\nmax_line = 256\n\
         max_pending_expectations = 2\nmax_sessions_per_client = {SESSION_LIMIT}\non_violation = \"{action}\"\n",
        public = lab::PUBLIC,
        server = lab::SERVER,
    )
}

fn hostile_clients_against(action: &str) {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config(action));
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let server = FtpServer::start(ServerKind::Vsftpd, &lab.inside, lab::SERVER).expect("vsftpd");
    let content = pattern(11, 512 * 1024);
    server.put("legit", &content).expect("put");

    // A third outside address, only for the sessions-per-client check.
    lab.outside
        .sh(&format!("ip addr add {LIMIT_CLIENT}/24 dev {HOST_IF}"))
        .expect("address");
    let hostile = Script::spawn(
        &lab.outside,
        "hostile_client.py",
        &[
            &lab::PUBLIC.to_string(),
            "21",
            &lab::CLIENT.to_string(),
            &lab::CLIENT2.to_string(),
            &SESSION_LIMIT.to_string(),
            &LIMIT_CLIENT.to_string(),
        ],
    )
    .expect("hostile clients");
    // Meanwhile, a legitimate client from the other outside address.
    std::thread::sleep(Duration::from_millis(300));
    let local = std::env::temp_dir().join(format!("{prefix}-legit"));
    let legit = lab
        .outside
        .command("timeout")
        .args([
            "30",
            "curl",
            "-sS",
            "--interface",
            &lab::CLIENT2.to_string(),
        ])
        .arg(format!(
            "ftp://{}/legit",
            SocketAddrV4::new(lab::PUBLIC, 21)
        ))
        .args(["-o", local.to_str().unwrap()])
        .output()
        .expect("curl");
    assert!(
        legit.status.success(),
        "legitimate session: {}\n{}",
        String::from_utf8_lossy(&legit.stderr),
        gateway.output()
    );
    assert_eq!(ftp::sha256_file(&local).unwrap(), ftp::sha256(&content));
    let _ = std::fs::remove_file(&local);

    let output = hostile
        .finish(Duration::from_secs(90))
        .unwrap_or_else(|err| panic!("{err:#}\ngateway:\n{}", gateway.output()));
    let results: Vec<Value> = serde_json::from_str(&output).expect("script output");
    let outcome = |name: &str| -> (String, String) {
        let result = results
            .iter()
            .find(|result| result["name"] == name)
            .unwrap_or_else(|| panic!("no result for {name}: {output}"));
        (
            result["outcome"].as_str().unwrap_or_default().to_owned(),
            result["after"].as_str().unwrap_or_default().to_owned(),
        )
    };
    gateway.stop().expect("stop gateway");
    let gateway_log = gateway.output();
    let server_log = server.log();
    assert!(
        server_log.contains("FTP command"),
        "vsftpd logs the commands it receives:\n{server_log}"
    );

    for (check, marker, code) in SCENARIOS {
        let (result, after) = outcome(check);
        // The server never saw it.
        assert!(
            !server_log.contains(marker),
            "{action} {check}: {marker:?} reached the server:\n{server_log}"
        );
        // The configured action happened.
        let expected = match (action, *code) {
            (_, "reset") | ("reset", _) => "reset".to_owned(),
            ("drop", _) => "silent".to_owned(),
            _ => format!("reply:{code}"),
        };
        assert!(
            result.starts_with(&expected),
            "{action} {check}: got {result:?}, want {expected:?}\n{gateway_log}"
        );
        if expected.starts_with("reply:") {
            // The server answers the next command: the session goes on (before login
            // vsftpd answers NOOP with 530, after it with 200).
            let answered = after.len() >= 3 && after.as_bytes()[..3].iter().all(u8::is_ascii_digit);
            assert!(
                answered,
                "{action} {check}: the session must go on after the gateway's reply, NOOP got {after:?}"
            );
        }
        // Counted under its own check, and logged with its fields.
        assert!(
            gateway.final_counter(&format!("alg_violation_{check}")) >= 1,
            "{action} {check}: counter\n{gateway_log}"
        );
        assert!(
            gateway_log.contains(&format!("check=\"{check}\""))
                || gateway_log.contains(&format!("check={check}")),
            "{action} {check}: log line\n{gateway_log}"
        );
    }

    // The third pending data connection: the server's 227 is refused.
    let (result, _) = outcome("too_many_expectations");
    let expected = match action {
        "reject" => "reply:451",
        "drop" => "silent",
        _ => "reset",
    };
    assert!(
        result.starts_with(expected),
        "{action} expectations: {result}"
    );
    assert!(gateway.final_counter("alg_violation_too_many_expectations") >= 1);
    // Sessions per client: the limit, and no more.
    let (result, _) = outcome("too_many_sessions");
    assert_eq!(result, format!("greeted:{SESSION_LIMIT}"), "{gateway_log}");
    assert!(gateway.final_counter("alg_violation_too_many_sessions") >= 1);
    if action == "reset" {
        assert!(gateway.final_counter("alg_sessions_reset") >= 1);
    }
    // The NUL line before login made its session not FTP.
    assert!(gateway.final_counter("alg_not_ftp") >= 1, "{gateway_log}");
}

#[test]
fn hostile_clients_are_rejected_and_their_sessions_go_on() {
    hostile_clients_against("reject");
}

#[test]
fn hostile_clients_are_dropped() {
    hostile_clients_against("drop");
}

#[test]
fn hostile_clients_are_reset() {
    hostile_clients_against("reset");
}

#[test]
fn a_hostile_server_cannot_slip_addresses_or_commands_to_the_client() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config("reject"));
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let log = std::env::temp_dir().join(format!("{prefix}-hostile-server.log"));
    let _server = Script::spawn(
        &lab.inside,
        "hostile_server.py",
        &[&lab::SERVER.to_string(), log.to_str().unwrap()],
    )
    .expect("hostile server");
    ftp::wait_listening(&lab.inside, 21, Duration::from_secs(10)).expect("listening");
    // A plain client: what does it get for USER, PASS, NOOP?
    let transcript = lab
        .outside
        .command("python3")
        .args([
            "-c",
            "import socket\n\
             s = socket.create_connection(('203.0.113.1', 21), timeout=5)\n\
             f = s.makefile('rb')\n\
             print(f.readline().decode().strip())\n\
             for c in ('USER alice', 'PASS secret', 'NOOP'):\n\
             \x20   s.sendall((c + '\\r\\n').encode())\n\
             \x20   print(f.readline().decode().strip())\n",
        ])
        .output()
        .expect("client");
    let _ = std::fs::remove_file(&log);
    let lines = String::from_utf8_lossy(&transcript.stdout).into_owned();
    gateway.stop().expect("stop");
    let gateway_log = gateway.output();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(
        lines,
        vec![
            "220 hostile server",
            "451 Reply refused by the gateway.",
            // The PORT line from the server is removed (not a reply: nothing to stand in for).
            "230 Logged in.",
            "200 OK.",
        ],
        "{gateway_log}"
    );
    assert!(!lines.iter().any(|line| line.contains("10,0,0,2")));
    assert_eq!(
        gateway.final_counter("alg_violation_embedded"),
        1,
        "{gateway_log}"
    );
    assert_eq!(
        gateway.final_counter("alg_violation_spoofed_direction"),
        1,
        "{gateway_log}"
    );
}

/// `AUTH TLS` with `tls = "pass"`: the session goes on encrypted, uninspected (and says so in
/// the log); with `tls = "deny"` the same client, which insists on TLS, is refused.
#[test]
fn tls_is_passed_or_denied_as_the_policy_says() {
    check_environment().expect("environment");
    for (tls, works) in [("pass", true), ("deny", false)] {
        let prefix = unique_prefix();
        let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
        let text = config("reject").replace(
            "on_violation = \"reject\"",
            &format!("on_violation = \"reject\"\ntls = \"{tls}\""),
        );
        let config = TempFile::write(&format!("{prefix}-gateway.toml"), &text);
        let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
        let _server = FtpServer::start_with(ServerKind::Vsftpd, &lab.inside, lab::SERVER, true)
            .expect("vsftpd with TLS");
        let output = lab
            .outside
            .command("timeout")
            .args([
                "30",
                "lftp",
                "-e",
                "set net:max-retries 1; set net:timeout 10; set ftp:ssl-force yes; \
                 set ssl:verify-certificate no; quote PWD; bye",
                &format!("ftp://anonymous:x@{}", lab::PUBLIC),
            ])
            .output()
            .expect("lftp");
        gateway.stop().expect("stop");
        let log = gateway.output();
        let said = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        if works {
            assert!(output.status.success(), "TLS session: {said}\n{log}");
            assert!(said.contains("257"), "PWD answered over TLS: {said}");
            assert_eq!(gateway.final_counter("alg_sessions_encrypted"), 1, "{log}");
            assert!(
                log.contains("switched to TLS: no longer inspected"),
                "{log}"
            );
        } else {
            assert!(!output.status.success(), "TLS must be refused: {said}");
            assert!(gateway.final_counter("alg_violation_tls") >= 1, "{log}");
            assert_eq!(gateway.final_counter("alg_sessions_encrypted"), 0, "{log}");
        }
    }
}

/// The per-client limit of the flood test, and how many connections beyond it are tried.
const FLOOD_LIMIT: usize = 8;
const FLOOD_BEYOND: usize = 12;

#[test]
fn sessions_beyond_the_per_client_limit_are_refused_at_once() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    // Router offloads off: what the end hosts capture carries finished checksums.
    let options = LabOptions {
        endpoint_tx_offload: true,
        router_tx_offload: false,
    };
    let lab = Lab::up(&prefix, options).expect("lab up");
    let config = TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &format!(
            "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
             [[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n\
             [publish.policy]\nmax_sessions_per_client = {FLOOD_LIMIT}\n",
            lab::PUBLIC,
            lab::SERVER,
        ),
    );
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let _server =
        FtpServer::start(ServerKind::Pyftpdlib, &lab.inside, lab::SERVER).expect("pyftpdlib");
    let client_capture = Capture::start(&lab.outside, HOST_IF).expect("capture at client");
    let server_capture = Capture::start(&lab.inside, HOST_IF).expect("capture at server");
    let total = FLOOD_LIMIT + FLOOD_BEYOND;
    let output = Script::spawn(
        &lab.outside,
        "session_flood.py",
        &[
            &lab::PUBLIC.to_string(),
            "21",
            &lab::CLIENT.to_string(),
            &total.to_string(),
        ],
    )
    .expect("flood")
    .finish(Duration::from_secs(60))
    .unwrap_or_else(|err| panic!("{err:#}\ngateway:\n{}", gateway.output()));
    let client_frames = client_capture.finish().expect("client capture");
    let server_frames = server_capture.finish().expect("server capture");
    let results: Vec<Value> = serde_json::from_str(&output).expect("script output");
    let ports = |outcome: &str| -> Vec<u16> {
        results
            .iter()
            .filter(|result| result["outcome"] == outcome)
            .filter_map(|result| result["port"].as_u64())
            .map(|port| port as u16)
            .collect()
    };
    let (served, refused) = (ports("served"), ports("refused"));
    println!("outcomes: {output}");
    // Exactly the limit served; every other connection refused (an RST, not a time-out).
    assert_eq!(served.len(), FLOOD_LIMIT, "{output}\n{}", gateway.output());
    assert_eq!(
        refused.len(),
        FLOOD_BEYOND,
        "{output}\n{}",
        gateway.output()
    );

    // Counted, and visible in `gateway stats`.
    let stats: Value =
        serde_json::from_str(&gateway.ask(&["stats", "--json"]).expect("stats")).unwrap();
    let too_many = stats["alg"]
        .as_array()
        .and_then(|pairs| {
            pairs
                .iter()
                .find(|pair| pair[0] == "alg_violation_too_many_sessions")
        })
        .and_then(|pair| pair[1].as_u64());
    assert_eq!(too_many, Some(FLOOD_BEYOND as u64), "{stats}");

    // The client's side: each refused connection sent one SYN (no retransmission: it was
    // answered at once) and got one RST|ACK from the public endpoint it called, with
    // sequence number 0 acknowledging the SYN.
    let tcp = |frame: &gateway_tests::capture::Frame| {
        summarize(&frame.bytes).filter(|summary| summary.proto == 6)
    };
    for port in &refused {
        let syns: Vec<u32> = client_frames
            .iter()
            .filter(|frame| frame.outgoing)
            .filter(|frame| {
                tcp(frame).is_some_and(|summary| {
                    summary.src_port == *port && summary.tcp_flags & 0x12 == 0x02
                })
            })
            .filter_map(|frame| tcp_numbers(&frame.bytes).map(|(seq, _)| seq))
            .collect();
        assert_eq!(syns.len(), 1, "port {port}: SYNs {syns:?}");
        let resets: Vec<(u32, u32)> = client_frames
            .iter()
            .filter(|frame| !frame.outgoing)
            .filter(|frame| {
                tcp(frame).is_some_and(|summary| {
                    summary.dst_port == *port
                        && summary.src == lab::PUBLIC
                        && summary.src_port == 21
                        && summary.tcp_flags & 0x14 == 0x14
                })
            })
            .filter_map(|frame| tcp_numbers(&frame.bytes))
            .collect();
        assert_eq!(resets, vec![(0, syns[0].wrapping_add(1))], "port {port}");
    }
    // The server's side: only the served connections ever reached it.
    let mut reached: Vec<u16> = server_frames
        .iter()
        .filter(|frame| !frame.outgoing)
        .filter_map(tcp)
        .filter(|summary| summary.src == lab::CLIENT && summary.dst_port == 21)
        .map(|summary| summary.src_port)
        .collect();
    reached.sort_unstable();
    reached.dedup();
    let mut expected = served.clone();
    expected.sort_unstable();
    assert_eq!(reached, expected, "only the served reached the server");
    for (name, frames) in [("client", &client_frames), ("server", &server_frames)] {
        let audit = audit_checksums(frames.iter());
        assert!(audit.checked >= total, "{name}: {} checked", audit.checked);
        assert_eq!(audit.bad_count, 0, "{name}: {:?}", audit.bad);
    }

    gateway.stop().expect("stop");
    let log = gateway.output();
    assert!(
        log.contains("ftp control session refused")
            && log.contains("check=\"too_many_sessions\"")
            && log.contains("action=\"reset\""),
        "{log}"
    );
}
