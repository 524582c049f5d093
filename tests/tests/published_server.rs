//! A published server reached through the gateway, end to end in namespaces: a 10 MiB TCP
//! transfer each way through the public address, checksums recomputed from scratch on every
//! frame both end hosts receive, and a negative control once the gateway is stopped.

use std::{net::SocketAddrV4, time::Duration};

use gateway_tests::{
    TempFile,
    capture::Capture,
    check_environment,
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions},
    netns::unique_prefix,
    packet::{audit_checksums, summarize},
    transfer::{hex, tcp_transfer},
};

const PUBLIC_PORT: u16 = 8021;
const PRIVATE_PORT: u16 = 9000;
const BYTES: usize = 10 << 20;

fn published_transfer(hook: &str, options: LabOptions, extra_args: &[&str], expect_hook_log: &str) {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, options).expect("lab up");
    let public = SocketAddrV4::new(lab::PUBLIC, PUBLIC_PORT);
    let private = SocketAddrV4::new(lab::SERVER, PRIVATE_PORT);
    let config = TempFile::write(
        &format!("{prefix}-gateway.toml"),
        &lab::gateway_config(hook, &[(public, private, "tcp")]),
    );

    // XDP forwards by redirecting to the end hosts' veths, which must be able to take that.
    let _xdp_receivers = if expect_hook_log.contains("xdp") {
        lab.accept_xdp_redirects().expect("XDP on the end hosts")
    } else {
        Vec::new()
    };
    let mut gateway =
        GatewayProcess::start(&lab.router, &config.0, extra_args).expect("start gateway");
    let server_capture = Capture::start(&lab.inside, HOST_IF).expect("capture at server");
    let client_capture = Capture::start(&lab.outside, HOST_IF).expect("capture at client");

    let report = tcp_transfer(
        &lab.inside,
        private,
        &lab.outside,
        public,
        BYTES,
        Duration::from_secs(30),
    );
    let server_frames = server_capture.finish().expect("server capture");
    let client_frames = client_capture.finish().expect("client capture");
    let report = report
        .unwrap_or_else(|err| panic!("transfer failed: {err:#}\ngateway:\n{}", gateway.output()));

    // The bytes arrived intact in both directions.
    assert!(report.intact(), "sha256 mismatch: {report:?}");
    println!(
        "{hook}: {} MiB each way in {:?}; upload sha256 {}",
        BYTES >> 20,
        report.elapsed,
        hex(&report.upload_received)
    );
    // The client spoke to the public endpoint, the server saw the client's real address on
    // its private endpoint: the destination was translated, the client's source was not.
    assert_eq!(report.client_connected_to, public.into());
    assert_eq!(report.server_local, private.into());
    assert_eq!(report.server_saw_peer, report.client_local);

    // What crossed each host's wire: only translated addresses, and every checksum right.
    for (name, frames, own, remote) in [
        ("server", &server_frames, private, report.client_local),
        (
            "client",
            &client_frames,
            report
                .client_local
                .to_string()
                .parse::<SocketAddrV4>()
                .unwrap(),
            public.into(),
        ),
    ] {
        let audit = audit_checksums(frames.iter());
        assert!(
            audit.checked > BYTES / 1500,
            "{name}: only {} TCP frames captured for a {BYTES}-byte transfer",
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
            // Linux sends with TTL 64; one router in between, whoever forwards.
            assert_eq!(summary.ttl, 63, "{name}: TTL after one hop: {summary}");
            let (src, dst) = (
                SocketAddrV4::new(summary.src, summary.src_port),
                SocketAddrV4::new(summary.dst, summary.dst_port),
            );
            assert!(
                dst == own && std::net::SocketAddr::V4(src) == remote,
                "{name} received a frame that is not of the translated connection: {summary}"
            );
        }
    }
    for host in [&lab.inside, &lab.outside] {
        for (counter, value) in host.checksum_error_counters() {
            assert_eq!(value, 0, "{}: {counter}", host.name());
        }
    }

    // The gateway reports what it attached and what it translated, then detaches cleanly.
    let status = gateway.stop().expect("stop gateway");
    let output = gateway.output();
    assert!(status.success(), "gateway exit {status}:\n{output}");
    assert!(
        output.contains(expect_hook_log),
        "expected {expect_hook_log:?} in:\n{output}"
    );
    // Both hooks forward by themselves (TC: bpf_redirect_neigh; XDP: devmap redirect).
    assert!(
        gateway.final_counter("redirected") > 0,
        "{expect_hook_log} forwards by itself:\n{output}"
    );
    for counter in ["dnat_published", "snat_published"] {
        assert!(
            gateway.final_counter(counter) > 0,
            "{counter} not counted:\n{output}"
        );
    }

    // Negative control: with the gateway gone, the public endpoint leads nowhere.
    let control = tcp_transfer(
        &lab.inside,
        private,
        &lab.outside,
        public,
        1024,
        Duration::from_secs(3),
    );
    assert!(
        control.is_err(),
        "transfer succeeded without the gateway: {control:?}"
    );
}

/// TC on veth with the end hosts' offloads on: the gateway gets TSO super-packets with partial
/// checksums, which only the kernel's checksum helpers update correctly. The router's own
/// offloads are off so its kernel completes each checksum from what the program left.
#[test]
fn tc_translates_a_published_server_with_partial_checksums() {
    published_transfer(
        "auto",
        LabOptions {
            endpoint_tx_offload: true,
            router_tx_offload: false,
        },
        &[],
        "hook=tc (tcx ingress)",
    );
}

/// Native XDP with wire-like packets (end hosts' checksum offload off): full checksums updated
/// incrementally by the program itself.
#[test]
fn xdp_native_translates_a_published_server() {
    published_transfer(
        "xdp",
        LabOptions {
            endpoint_tx_offload: false,
            router_tx_offload: false,
        },
        &[],
        "hook=xdp (native)",
    );
}

/// `--xdp-mode generic` forces generic XDP whatever the config's hook says.
#[test]
fn xdp_generic_translates_a_published_server() {
    published_transfer(
        "auto",
        LabOptions {
            endpoint_tx_offload: false,
            router_tx_offload: false,
        },
        &["--xdp-mode", "generic"],
        "hook=xdp (generic)",
    );
}
