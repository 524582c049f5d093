//! Faults while the gateway runs: an interface removed and re-added, and the agent killed
//! (SIGKILL) in the middle of a burst of new FTP sessions. (A full punt ring is in
//! `punt_testrun.rs`; an invalid config on reload in `operations.rs`; a crash during a
//! transfer in `restart.rs`.)

use std::time::Duration;

use gateway_tests::{
    TempFile,
    bpffs::BpfMount,
    check_environment,
    ftp::{FtpServer, Script, ServerKind},
    gateway::{self, GatewayProcess},
    lab::{self, HOST_IF, Lab, LabOptions, ROUTER_OUTSIDE_IF},
    netns::unique_prefix,
};

const MASQUERADE: &str = "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
     [masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"203.0.113.1\"]\n";

/// Whether a ping from the inside host reaches the outside one (it can only come back
/// translated: the outside has no route to the inside network).
fn ping_through(lab: &Lab) -> bool {
    lab.inside
        .sh(&format!("ping -c 1 -W 1 -q {} >/dev/null", lab::CLIENT))
        .is_ok()
}

/// Packets the router's own stack has forwarded (`Ip: ForwDatagrams`): what the fast path
/// forwards itself never counts here.
fn stack_forwarded(lab: &Lab) -> u64 {
    let snmp = lab.router.sh("cat /proc/net/snmp").expect("snmp");
    let mut ip = snmp.lines().filter(|line| line.starts_with("Ip:"));
    let (Some(names), Some(values)) = (ip.next(), ip.next()) else {
        panic!("no Ip lines in {snmp}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ForwDatagrams")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no ForwDatagrams in {snmp}"))
}

fn interface_removed_and_added_again(hook: &str) {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let xdp = hook == "xdp";
    let options = LabOptions {
        endpoint_tx_offload: !xdp,
        ..LabOptions::default()
    };
    let lab = Lab::up(&prefix, options).expect("lab up");
    let mut xdp_receivers = if xdp {
        lab.accept_xdp_redirects().expect("XDP on the end hosts")
    } else {
        Vec::new()
    };
    let config = TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &format!("{MASQUERADE}\n[dataplane]\nhook = \"{hook}\"\n"),
    );
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    assert!(ping_through(&lab), "masquerade works at first");

    lab.router
        .sh(&format!("ip link del {ROUTER_OUTSIDE_IF}"))
        .expect("remove the outside interface");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!ping_through(&lab));
    let status = gateway.ask(&["status"]).expect("status");
    assert!(status.contains("gone"), "{status}");

    // The same pair again, directly between the two namespaces, as the lab makes it.
    gateway_tests::run(std::process::Command::new("ip").args([
        "link",
        "add",
        ROUTER_OUTSIDE_IF,
        "netns",
        lab.router.name(),
        "type",
        "veth",
        "peer",
        "name",
        HOST_IF,
        "netns",
        lab.outside.name(),
    ]))
    .expect("add the pair again");
    lab.router
        .sh(&format!(
            "ip addr add {}/24 dev {ROUTER_OUTSIDE_IF} && ip link set {ROUTER_OUTSIDE_IF} up",
            lab::PUBLIC
        ))
        .expect("router side");
    lab.outside
        .sh(&format!(
            "ip addr add {}/24 dev {HOST_IF} && ip link set {HOST_IF} up",
            lab::CLIENT
        ))
        .expect("outside side");
    if xdp {
        // The outside host's veth is new too: it needs its XDP_PASS again.
        xdp_receivers.push(
            lab.outside
                .spawn(|| gateway_tests::xdp_pass_link(HOST_IF))
                .join()
                .expect("thread")
                .expect("XDP on the new outside veth"),
        );
    }
    let mut back = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        if ping_through(&lab) {
            back = true;
            break;
        }
    }
    assert!(
        back,
        "no translation after the interface came back:\n{}",
        gateway.output()
    );
    let output = gateway.output();
    assert!(output.contains("interface gone"), "{output}");
    assert!(
        output.contains("interface back: fast path re-attached"),
        "{output}"
    );
    if xdp {
        // The new interface (new ifindex) must be a redirect target: echo requests to it are
        // forwarded from XDP, not handed to the stack as they would be with a stale devmap.
        let before = stack_forwarded(&lab);
        lab.inside
            .sh(&format!(
                "ping -c 5 -i 0.2 -W 1 -q {} >/dev/null",
                lab::CLIENT
            ))
            .expect("pings through the re-attached interface");
        let forwarded = stack_forwarded(&lab) - before;
        assert_eq!(
            forwarded,
            0,
            "the router's stack forwarded {forwarded} packets: XDP did not redirect to the interface that came back\n{}",
            gateway.output()
        );
    }
    gateway.stop().expect("stop");
}

#[test]
fn an_interface_removed_and_added_again_is_taken_back() {
    interface_removed_and_added_again("auto");
}

/// XDP redirects through a devmap keyed by ifindex: the agent must put the returning
/// interface's new ifindex there.
#[test]
fn xdp_redirects_to_an_interface_that_came_back() {
    interface_removed_and_added_again("xdp");
}

#[test]
fn sigkill_during_a_burst_of_new_ftp_sessions() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let bpf = BpfMount::new(std::env::temp_dir().join(format!("{prefix}-bpf"))).expect("bpffs");
    let state = std::env::temp_dir().join(format!("{prefix}-state"));
    let config = TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &format!(
            "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
             [dataplane]\npin_path = \"{}\"\n\n\
             [[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n\n\
             [ftp]\nstate_file = \"{}/ftp.json\"\n",
            bpf.dir.join("gateway").display(),
            lab::PUBLIC,
            lab::SERVER,
            state.display()
        ),
    );
    let binary = gateway::binary().expect("binary");
    let start = |extra: &[&str]| {
        GatewayProcess::start_wrapped(&binary, &lab.router, &config.0, extra, &bpf.wrapper())
            .expect("gateway")
    };
    let server = FtpServer::start(ServerKind::Vsftpd, &lab.inside, lab::SERVER).expect("vsftpd");
    server.put("f", b"burst\n").expect("put");

    let mut first = start(&[]);
    // 40 sessions, 8 at a time, each: login, PASV, RETR, QUIT; each logs its start and end.
    let times = std::env::temp_dir().join(format!("{prefix}-burst-times"));
    let _ = std::fs::remove_file(&times);
    let times_text = times.to_str().expect("path").to_owned();
    let burst = Script::spawn(
        &lab.outside,
        "ftp_burst.py",
        &[&lab::PUBLIC.to_string(), "40", "8", &times_text],
    )
    .expect("burst");
    // The kill comes once the first sessions have ended: the pool then has the next ones
    // under way.
    let waiting = std::time::Instant::now();
    while burst_sessions(&times).len() < 8 {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "the burst did not get going: {:?}\n{}",
            burst_sessions(&times),
            first.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed_at = now_seconds();
    first.kill_hard().expect("kill -9");
    std::thread::sleep(Duration::from_millis(300));
    let mut second = start(&["--detach-on-exit"]);
    let during = burst
        .finish(Duration::from_secs(120))
        .expect("the burst script ends");
    let sessions = burst_sessions(&times);
    let _ = std::fs::remove_file(&times);
    assert_eq!(sessions.len(), 40, "{during}");
    // Proof that the kill hit the burst: sessions that had started before it and ended after.
    let in_flight = sessions
        .iter()
        .filter(|(start, end, _)| *start < killed_at && *end > killed_at)
        .count();
    assert!(
        in_flight >= 1,
        "no session was in flight at the kill ({killed_at}): {sessions:?}"
    );
    // None may fail: the fast path (pinned) and the control sessions (saved state) outlive
    // the agent, and a client's retransmissions bridge the gap until the next one runs.
    assert_eq!(
        counts(&during),
        (40, 0),
        "{in_flight} sessions in flight at the kill\n{during}\nsecond agent:\n{}",
        second.output()
    );
    println!("{in_flight} of 40 sessions in flight when the agent was killed; all completed");

    // After the restart every new session works.
    let after = Script::spawn(
        &lab.outside,
        "ftp_burst.py",
        &[&lab::PUBLIC.to_string(), "20", "5"],
    )
    .expect("burst")
    .finish(Duration::from_secs(120))
    .expect("second burst");
    assert_eq!(counts(&after), (20, 0), "{after}\n{}", second.output());
    second.stop().expect("stop");
    let _ = std::fs::remove_dir_all(&state);
}

/// The sessions the burst script has logged so far: (start, end, ok), wall-clock seconds.
fn burst_sessions(times: &std::path::Path) -> Vec<(f64, f64, bool)> {
    std::fs::read_to_string(times)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((
                words.next()?.parse().ok()?,
                words.next()?.parse().ok()?,
                words.next()? == "ok",
            ))
        })
        .collect()
}

/// Wall-clock seconds, the clock of the burst script's times.
fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// "ok N failed M" from the burst script.
fn counts(output: &str) -> (usize, usize) {
    let words: Vec<&str> = output.split_whitespace().collect();
    let find = |key: &str| {
        words
            .windows(2)
            .find(|pair| pair[0] == key)
            .and_then(|pair| pair[1].parse().ok())
            .unwrap_or(usize::MAX)
    };
    (find("ok"), find("failed"))
}

#[test]
fn a_burst_that_overflows_the_punt_ring_is_counted_and_recovered() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    // A ring of 16 KiB holds seven MTU-sized packets: 40 sessions opening at once overflow it.
    // TC punts to the agent's tap by default; `punt = "ring"` makes it use the ring (as XDP
    // always does, and TC while no tap is published).
    let config = TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &format!(
            "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n\
             [dataplane]\npunt_ring_bytes = 16384\npunt = \"ring\"\n\n\
             [[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n",
            lab::PUBLIC,
            lab::SERVER
        ),
    );
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let server = FtpServer::start(ServerKind::Pyftpdlib, &lab.inside, lab::SERVER).expect("server");
    server.put("f", b"burst\n").expect("put");
    let output = Script::spawn(
        &lab.outside,
        "ftp_burst.py",
        &[&lab::PUBLIC.to_string(), "40", "40"],
    )
    .expect("burst")
    .finish(Duration::from_secs(120))
    .expect("burst ends");
    gateway.stop().expect("stop");
    let log = gateway.output();
    // Dropped and counted, never forwarded untranslated: every session still got through,
    // its lost packets retransmitted.
    assert!(gateway.final_counter("drop_punt_failed") > 0, "{log}");
    assert_eq!(counts(&output), (40, 0), "{output}\n{log}");
    assert!(gateway.final_counter("alg_punt_ring_packets") > 0, "{log}");
    assert_eq!(gateway.final_counter("alg_punt_tap_packets"), 0, "{log}");
}

#[test]
fn a_full_session_table_evicts_warns_and_leaks_nothing() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, LabOptions::default()).expect("lab up");
    let config = TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &format!("{MASQUERADE}\n[sessions]\nmax = 1024\nsweep_interval = 1\n"),
    );
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let capture = gateway_tests::capture::Capture::start(&lab.outside, HOST_IF).expect("capture");
    // 800 UDP flows, two entries each: far more than 1024.
    lab.inside
        .sh(&format!(
            "python3 -c \"
import socket
for port in range(40000, 40800):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('{server}', port))
    s.sendto(b'x', ('{client}', 9))
    s.close()
\"",
            server = lab::SERVER,
            client = lab::CLIENT
        ))
        .expect("udp flows");
    // The warning comes with a sweep (every second), which a loaded machine may delay: wait
    // for it, for a bounded time.
    let warned = |gateway: &GatewayProcess| gateway.output().contains("session table nearly full");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    std::thread::sleep(Duration::from_millis(2500));
    while !warned(&gateway) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let frames = capture.finish().expect("capture");
    // Still answering, and still translating.
    gateway.ask(&["status"]).expect("status");
    assert!(ping_through(&lab));
    gateway.stop().expect("stop");
    let log = gateway.output();
    assert!(log.contains("session table nearly full"), "{log}");
    let udp: Vec<_> = frames
        .iter()
        .filter(|frame| !frame.outgoing)
        .filter_map(|frame| gateway_tests::packet::summarize(&frame.bytes))
        .filter(|summary| summary.proto == 17 && summary.dst_port == 9)
        .collect();
    assert!(udp.len() >= 790, "{} datagrams arrived", udp.len());
    assert!(
        udp.iter().all(|summary| summary.src == lab::PUBLIC),
        "an untranslated datagram left: {:?}",
        udp.iter().find(|summary| summary.src != lab::PUBLIC)
    );
}
