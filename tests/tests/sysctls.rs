//! The sysctls the fast path needs, on a router as a distribution leaves it
//! (`net.ipv4.ip_forward = 0`): the gateway sets forwarding (and `accept_local`, and a loose
//! `rp_filter`) on its two interfaces while it runs, translated traffic crosses with every
//! checksum right, and a clean exit puts the values back; after `kill -9` the next agent takes
//! the recorded originals over and puts them back when it stops; a pinned fast path keeps them
//! between two agents; a reload sets again what was changed behind the gateway's back. With
//! `[dataplane] manage_sysctls = false` the gateway changes nothing and refuses to start, or to
//! reload, in one line that names the sysctl.

use std::{net::SocketAddrV4, path::PathBuf, time::Duration};

use gateway_tests::{
    TempFile,
    bpffs::BpfMount,
    capture::Capture,
    check_environment,
    gateway::{self, GatewayProcess},
    lab::{self, HOST_IF, Lab, LabOptions, ROUTER_INSIDE_IF, ROUTER_OUTSIDE_IF},
    netns::unique_prefix,
    packet::{audit_checksums, summarize},
    transfer::tcp_transfer,
};

const PUBLIC_PORT: u16 = 8021;
const PRIVATE_PORT: u16 = 9000;
const BYTES: usize = 1 << 20;

/// The router's veths with offloads off: its kernel finishes every checksum, so the captures
/// at the end hosts check what the gateway wrote.
const OPTIONS: LabOptions = LabOptions {
    endpoint_tx_offload: true,
    router_tx_offload: false,
};

fn config(prefix: &str, dataplane: &str) -> TempFile {
    TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &format!(
            "[interfaces]\ninside = \"{ROUTER_INSIDE_IF}\"\noutside = \"{ROUTER_OUTSIDE_IF}\"\n\n\
             [dataplane]\nhook = \"tc\"\n{dataplane}\n\
             [[publish]]\npublic = \"{}\"\nprivate = \"{}\"\nprotocol = \"tcp\"\n",
            SocketAddrV4::new(lab::PUBLIC, PUBLIC_PORT),
            SocketAddrV4::new(lab::SERVER, PRIVATE_PORT),
        ),
    )
}

fn sysctl(lab: &Lab, name: &str) -> i64 {
    let text = lab.router.sh(&format!("sysctl -n {name}")).expect("sysctl");
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {text:?}"))
}

/// (forwarding, accept_local, rp_filter) of a router interface.
fn values(lab: &Lab, interface: &str) -> (i64, i64, i64) {
    (
        sysctl(lab, &format!("net.ipv4.conf.{interface}.forwarding")),
        sysctl(lab, &format!("net.ipv4.conf.{interface}.accept_local")),
        sysctl(lab, &format!("net.ipv4.conf.{interface}.rp_filter")),
    )
}

fn both(lab: &Lab) -> [(i64, i64, i64); 2] {
    [
        values(lab, ROUTER_INSIDE_IF),
        values(lab, ROUTER_OUTSIDE_IF),
    ]
}

/// What the gateway sets: forwarding, accept_local, and rp_filter loose (the lab's router
/// filters strictly through `all`).
const SET: [(i64, i64, i64); 2] = [(1, 1, 2), (1, 1, 2)];

/// The interfaces' own values as a hardened distribution leaves them (what a new device gets
/// depends on the host the namespace was made on): no accept_local, strict rp_filter.
fn strict(lab: &Lab) {
    for interface in [ROUTER_INSIDE_IF, ROUTER_OUTSIDE_IF] {
        lab.router
            .sh(&format!(
                "sysctl -qw net.ipv4.conf.{interface}.accept_local=0 net.ipv4.conf.{interface}.rp_filter=1"
            ))
            .expect("sysctl");
    }
}

/// A router that does not forward, as most distributions leave one.
fn not_forwarding(lab: &Lab) -> [(i64, i64, i64); 2] {
    strict(lab);
    lab.router
        .sh("sysctl -qw net.ipv4.ip_forward=0")
        .expect("ip_forward off");
    let found = both(lab);
    assert_eq!(
        found,
        [(0, 0, 1), (0, 0, 1)],
        "ip_forward=0 writes every interface's value"
    );
    found
}

/// Whether the agent logged that it set a sysctl.
fn set_any(output: &str) -> bool {
    output.contains("(put back when it stops)")
}

fn record_of(gateway: &GatewayProcess) -> PathBuf {
    gateway_user::sysctl::record_path(gateway.socket())
}

/// A published server's 1 MiB each way through the gateway: intact, and every frame both end
/// hosts received carries the translated addresses and right checksums.
fn crosses(lab: &Lab, gateway: &GatewayProcess) {
    let public = SocketAddrV4::new(lab::PUBLIC, PUBLIC_PORT);
    let private = SocketAddrV4::new(lab::SERVER, PRIVATE_PORT);
    let server_capture = Capture::start(&lab.inside, HOST_IF).expect("capture at server");
    let client_capture = Capture::start(&lab.outside, HOST_IF).expect("capture at client");
    let report = tcp_transfer(
        &lab.inside,
        private,
        &lab.outside,
        public,
        BYTES,
        Duration::from_secs(20),
    );
    let server_frames = server_capture.finish().expect("server capture");
    let client_frames = client_capture.finish().expect("client capture");
    let report = report
        .unwrap_or_else(|err| panic!("transfer failed: {err:#}\ngateway:\n{}", gateway.output()));
    assert!(report.intact(), "sha256 mismatch: {report:?}");
    assert_eq!(report.client_connected_to, public.into());
    assert_eq!(report.server_local, private.into());
    assert_eq!(report.server_saw_peer, report.client_local);
    for (name, frames, own, remote) in [
        (
            "server",
            &server_frames,
            std::net::SocketAddr::V4(private),
            report.client_local,
        ),
        (
            "client",
            &client_frames,
            report.client_local,
            std::net::SocketAddr::V4(public),
        ),
    ] {
        let audit = audit_checksums(frames.iter());
        assert!(
            audit.checked > BYTES / 1500,
            "{name}: only {} TCP frames captured",
            audit.checked
        );
        assert_eq!(
            audit.bad_count, 0,
            "{name}: {} frames with bad checksums, e.g. {:?}",
            audit.bad_count, audit.bad
        );
        for frame in frames.iter().filter(|frame| !frame.outgoing) {
            let Some(summary) = summarize(&frame.bytes) else {
                continue;
            };
            let (src, dst) = (
                std::net::SocketAddr::V4(SocketAddrV4::new(summary.src, summary.src_port)),
                std::net::SocketAddr::V4(SocketAddrV4::new(summary.dst, summary.dst_port)),
            );
            assert!(
                dst == own && src == remote,
                "{name} received a frame that is not of the translated connection: {summary}"
            );
        }
    }
    for host in [&lab.inside, &lab.outside] {
        for (counter, value) in host.checksum_error_counters() {
            assert_eq!(value, 0, "{}: {counter}", host.name());
        }
    }
}

#[test]
fn a_router_that_does_not_forward_forwards_while_the_gateway_runs() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, OPTIONS).expect("lab up");
    let before = not_forwarding(&lab);
    let config = config(&prefix, "");
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let record = record_of(&gateway);

    assert_eq!(both(&lab), SET, "{}", gateway.output());
    // Only the interfaces it serves: the host does not become a router elsewhere.
    assert_eq!(sysctl(&lab, "net.ipv4.ip_forward"), 0);
    assert!(record.exists(), "originals recorded before the change");
    let output = gateway.output();
    assert!(
        output.contains("net.ipv4.conf.veth-in.forwarding 0 -> 1 while the gateway runs"),
        "{output}"
    );

    // The state it manages, as status shows it.
    let status: serde_json::Value =
        serde_json::from_str(&gateway.ask(&["status", "--json"]).expect("status")).unwrap();
    let sysctls = &status["sysctls"];
    assert_eq!(sysctls["managed"], true);
    assert_eq!(sysctls["record"], record.display().to_string());
    let rows = sysctls["settings"].as_array().expect("settings");
    assert_eq!(rows.len(), 6, "{sysctls}");
    let forwarding = rows
        .iter()
        .find(|row| row["name"] == "net.ipv4.conf.veth-out.forwarding")
        .expect("veth-out forwarding");
    assert_eq!(
        (
            &forwarding["value"],
            &forwarding["original"],
            &forwarding["ok"]
        ),
        (&1.into(), &0.into(), &true.into()),
        "{forwarding}"
    );
    let text = gateway.ask(&["status"]).expect("status");
    assert!(
        text.contains("sysctl      net.ipv4.conf.veth-in.forwarding = 1 (ok, was 0: put back when the gateway stops)"),
        "{text}"
    );

    crosses(&lab, &gateway);

    let status = gateway.stop().expect("stop");
    assert!(status.success(), "{}", gateway.output());
    assert_eq!(both(&lab), before, "put back:\n{}", gateway.output());
    assert!(!record.exists(), "nothing owed, no record");
}

#[test]
fn unmanaged_sysctls_are_checked_and_never_changed() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, OPTIONS).expect("lab up");
    let before = not_forwarding(&lab);
    let config = config(&prefix, "manage_sysctls = false\n");

    // Refused, in one line naming the sysctl and the interface; nothing changed.
    let output = lab
        .router
        .command(gateway::binary().expect("binary").to_str().unwrap())
        .args(["run", "--config"])
        .arg(&config.0)
        .arg("--socket")
        .arg(std::env::temp_dir().join(format!("{prefix}-refused.sock")))
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run gateway");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    assert!(
        lines[0].starts_with(
            "gateway: error: net.ipv4.conf.veth-in.forwarding is 0: translated packets arriving there are not forwarded"
        ),
        "{stderr}"
    );
    for named in [
        "net.ipv4.conf.veth-out.forwarding is 0",
        "net.ipv4.conf.veth-in.accept_local is 0",
        "net.ipv4.conf.veth-in.rp_filter is 1 (net.ipv4.conf.all.rp_filter = 1)",
        "manage_sysctls = false",
    ] {
        assert!(lines[0].contains(named), "{named:?} in {stderr}");
    }
    assert_eq!(both(&lab), before, "untouched");

    // Set right by the operator: it runs, and changes nothing.
    lab.router
        .sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=2 \
             net.ipv4.conf.{ROUTER_INSIDE_IF}.accept_local=1 net.ipv4.conf.{ROUTER_OUTSIDE_IF}.accept_local=1"
        ))
        .expect("operator's sysctls");
    let operators = both(&lab);
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    assert!(!record_of(&gateway).exists());
    let status = gateway.ask(&["status"]).expect("status");
    assert!(
        status.contains("sysctls     checked only (manage_sysctls = false)"),
        "{status}"
    );
    crosses(&lab, &gateway);

    // Forwarding turned off behind its back: a reload is refused with the same line, and
    // the gateway changes nothing.
    lab.router
        .sh(&format!(
            "sysctl -qw net.ipv4.conf.{ROUTER_OUTSIDE_IF}.forwarding=0"
        ))
        .expect("forwarding off");
    let refused = format!(
        "{:#}",
        gateway.ask(&["reload"]).expect_err("reload refused")
    );
    assert!(
        refused.contains(
            "gateway: error: net.ipv4.conf.veth-out.forwarding is 0: translated packets arriving there are not forwarded"
        ) && refused.contains("nothing was applied"),
        "{refused}"
    );
    assert_eq!(values(&lab, ROUTER_OUTSIDE_IF).0, 0, "not managed: left");
    let status = gateway.ask(&["status"]).expect("status");
    assert!(
        status.contains("net.ipv4.conf.veth-out.forwarding = 0 (WRONG: must be 1)"),
        "{status}"
    );
    lab.router
        .sh(&format!(
            "sysctl -qw net.ipv4.conf.{ROUTER_OUTSIDE_IF}.forwarding=1"
        ))
        .expect("forwarding on");
    gateway.ask(&["reload"]).expect("reload once right");

    let status = gateway.stop().expect("stop");
    assert!(status.success(), "{}", gateway.output());
    assert_eq!(both(&lab), operators, "still the operator's");
    assert!(!set_any(&gateway.output()), "{}", gateway.output());
}

#[test]
fn a_reload_sets_forwarding_again_after_it_was_turned_off_behind_the_gateways_back() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, OPTIONS).expect("lab up");
    // The lab's router forwards: only rp_filter and accept_local are the gateway's doing.
    strict(&lab);
    let config = config(&prefix, "");
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    assert_eq!(both(&lab), SET);

    lab.router
        .sh(&format!(
            "sysctl -qw net.ipv4.conf.{ROUTER_INSIDE_IF}.forwarding=0"
        ))
        .expect("forwarding off");
    // Control: the server's replies arrive on veth-in, which no longer forwards; they die.
    let control = tcp_transfer(
        &lab.inside,
        SocketAddrV4::new(lab::SERVER, PRIVATE_PORT),
        &lab.outside,
        SocketAddrV4::new(lab::PUBLIC, PUBLIC_PORT),
        BYTES,
        Duration::from_secs(3),
    );
    assert!(control.is_err(), "crossed without forwarding: {control:?}");
    let answer = gateway.ask(&["reload"]).expect("reload");
    assert!(
        answer.contains(
            "net.ipv4.conf.veth-in.forwarding 0 -> 1 again: it was changed behind the gateway's back"
        ),
        "{answer}"
    );
    assert_eq!(values(&lab, ROUTER_INSIDE_IF).0, 1);
    crosses(&lab, &gateway);
    let output = gateway.output();
    assert!(
        output.contains("WARN") && output.contains("changed behind the gateway's back"),
        "warned:\n{output}"
    );

    let status = gateway.stop().expect("stop");
    assert!(status.success(), "{}", gateway.output());
    // What the operator set last goes back; what the gateway found at start too.
    assert_eq!(values(&lab, ROUTER_INSIDE_IF).0, 0);
    assert_eq!(values(&lab, ROUTER_OUTSIDE_IF).0, 1);
    assert_eq!(values(&lab, ROUTER_INSIDE_IF), (0, 0, 1));
}

#[test]
fn after_kill_9_the_next_agent_puts_the_originals_back() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, OPTIONS).expect("lab up");
    let before = not_forwarding(&lab);
    let config = config(&prefix, "");
    let mut first = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let record = record_of(&first);
    first.kill_hard().expect("kill -9");
    assert_eq!(both(&lab), SET, "left as the killed agent set them");
    assert!(record.exists());

    let mut second = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");
    let output = second.output();
    assert!(
        output.contains("an earlier agent changed forwarding (was 0), accept_local (was 0), rp_filter (was 1) and did not put them back"),
        "{output}"
    );
    assert!(!set_any(&output), "nothing to set again:\n{output}");
    assert_eq!(both(&lab), SET);
    crosses(&lab, &second);

    let status = second.stop().expect("stop");
    assert!(status.success(), "{}", second.output());
    assert_eq!(
        both(&lab),
        before,
        "the originals, not the killed agent's values:\n{}",
        second.output()
    );
    assert!(!record.exists());
}

#[test]
fn a_pinned_fast_path_keeps_them_between_agents_and_the_last_one_puts_them_back() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, OPTIONS).expect("lab up");
    let bpf = BpfMount::new(std::env::temp_dir().join(format!("{prefix}-bpf"))).expect("bpffs");
    let state = std::env::temp_dir().join(format!("{prefix}-state"));
    let before = not_forwarding(&lab);
    let config = config(
        &prefix,
        &format!(
            "pin_path = \"{}\"\n\n[ftp]\nstate_file = \"{}/ftp.json\"\n",
            bpf.dir.join("gateway").display(),
            state.display()
        ),
    );
    let binary = gateway::binary().expect("binary");
    let start = |extra: &[&str]| {
        GatewayProcess::start_wrapped(&binary, &lab.router, &config.0, extra, &bpf.wrapper())
            .expect("gateway")
    };

    let mut first = start(&[]);
    let record = record_of(&first);
    assert_eq!(both(&lab), SET);
    first.stop().expect("stop");
    let output = first.output();
    assert!(output.contains("left running and pinned"), "{output}");
    assert!(
        output.contains("sysctls left as the fast path needs them"),
        "{output}"
    );
    // No agent runs; the pinned fast path translates, and the host still forwards for it.
    assert_eq!(both(&lab), SET);
    assert!(record.exists());
    crosses(&lab, &first);

    // The next agent finds them right: it writes nothing (nothing breaks for a moment).
    let mut second = start(&["--detach-on-exit"]);
    let output = second.output();
    assert!(output.contains("adopted the fast path"), "{output}");
    assert!(!set_any(&output), "{output}");
    crosses(&lab, &second);
    second.stop().expect("stop");
    assert_eq!(both(&lab), before, "{}", second.output());
    assert!(!record.exists());
    let _ = std::fs::remove_dir_all(&state);
}
