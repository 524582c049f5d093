//! The route lookup's refusals are counted by reason and shown by `gateway stats`: forwarding
//! turned off on the router's inside interface while the gateway runs
//! (`net.ipv4.conf.veth-in.forwarding=0`). The lookup then answers "forwarding disabled" for
//! every translated packet from inside; the program hands each to the stack translated, as
//! it does whatever it does not forward itself, and the stack drops it (its `InAddrErrors`
//! counts them): nothing leaves, nothing is answered. Turned on again, traffic flows.

use std::{
    net::{SocketAddrV4, UdpSocket},
    time::Duration,
};

use gateway_tests::{
    TempFile,
    capture::Capture,
    check_environment,
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions, ROUTER_INSIDE_IF},
    netns::{Netns, unique_prefix},
    packet::{audit_checksums, icmp_error},
};

const LISTENER: SocketAddrV4 = SocketAddrV4::new(lab::CLIENT, 7000);

fn config(hook: &str, forwarding: &str) -> String {
    format!(
        "{}\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{}\"]\n",
        lab::gateway_config(hook, &[]).replacen(
            &format!("hook = \"{hook}\"\n"),
            &format!("hook = \"{hook}\"\nforwarding = \"{forwarding}\"\n"),
            1,
        ),
        lab::PUBLIC
    )
}

/// The fast path's counter `name`, from `gateway stats --json`.
fn stat(gateway: &GatewayProcess, name: &str) -> u64 {
    let text = gateway.ask(&["stats", "--json"]).expect("stats");
    let stats: serde_json::Value = serde_json::from_str(&text).expect("stats JSON");
    stats["fastpath"]
        .as_array()
        .and_then(|pairs| pairs.iter().find(|pair| pair[0] == name))
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The router's `Ip: InAddrErrors` (`/proc/net/snmp`).
fn in_addr_errors(router: &Netns) -> u64 {
    let snmp = router.sh("cat /proc/net/snmp").expect("snmp");
    let mut ip = snmp.lines().filter(|line| line.starts_with("Ip:"));
    let (Some(names), Some(values)) = (ip.next(), ip.next()) else {
        panic!("no Ip lines in {snmp}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "InAddrErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no InAddrErrors in {snmp}"))
}

/// Sends `count` datagrams from inside to the outside listener, one socket; returns what the
/// listener got within a second of the last.
fn send_through(lab: &Lab, listener: &UdpSocket, count: usize, tag: &str) -> Vec<String> {
    let tag = tag.to_owned();
    lab.inside
        .spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:5000")?;
            for index in 0..count {
                socket.send_to(format!("{tag} {index}").as_bytes(), LISTENER)?;
            }
            Ok(())
        })
        .join()
        .expect("sender thread")
        .expect("send");
    let mut received = Vec::new();
    let mut buffer = [0u8; 64];
    while let Ok(len) = listener.recv(&mut buffer) {
        received.push(String::from_utf8_lossy(&buffer[..len]).into_owned());
    }
    received
}

fn forwarding_disabled_is_counted(hook: &str, forwarding: &str) {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(
        &prefix,
        LabOptions {
            endpoint_tx_offload: hook == "tc",
            router_tx_offload: false,
        },
    )
    .expect("lab up");
    let _xdp_receivers = if hook == "xdp" {
        lab.accept_xdp_redirects().expect("XDP on the end hosts")
    } else {
        Vec::new()
    };
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config(hook, forwarding));
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("start gateway");
    let listener = lab
        .outside
        .spawn(|| {
            let socket = UdpSocket::bind(LISTENER)?;
            socket.set_read_timeout(Some(Duration::from_secs(1)))?;
            Ok(socket)
        })
        .join()
        .expect("thread")
        .expect("outside listener");
    let outside_capture = Capture::start(&lab.outside, HOST_IF).expect("capture outside");
    let inside_capture = Capture::start(&lab.inside, HOST_IF).expect("capture inside");

    assert_eq!(
        send_through(&lab, &listener, 1, "before"),
        ["before 0"],
        "{}",
        gateway.output()
    );
    assert_eq!(stat(&gateway, "fib_forwarding_disabled"), 0);

    lab.router
        .sh(&format!(
            "sysctl -qw net.ipv4.conf.{ROUTER_INSIDE_IF}.forwarding=0"
        ))
        .expect("forwarding off");
    let dropped_before = in_addr_errors(&lab.router);
    let received = send_through(&lab, &listener, 5, "while off");
    assert!(received.is_empty(), "forwarded while off: {received:?}");
    assert_eq!(
        stat(&gateway, "fib_forwarding_disabled"),
        5,
        "{}",
        gateway.ask(&["stats"]).unwrap_or_default()
    );
    assert!(
        in_addr_errors(&lab.router) >= dropped_before + 5,
        "the stack drops them"
    );

    lab.router
        .sh(&format!(
            "sysctl -qw net.ipv4.conf.{ROUTER_INSIDE_IF}.forwarding=1"
        ))
        .expect("forwarding on");
    assert_eq!(send_through(&lab, &listener, 1, "after"), ["after 0"]);
    assert_eq!(stat(&gateway, "fib_forwarding_disabled"), 5);

    let outside = outside_capture.finish().expect("capture");
    let inside = inside_capture.finish().expect("capture");
    let audit = audit_checksums(&outside);
    assert!(audit.checked >= 2 && audit.bad.is_empty(), "{audit:?}");
    let answered: Vec<_> = inside
        .iter()
        .filter(|frame| !frame.outgoing)
        .filter_map(|frame| icmp_error(&frame.bytes).expect("a valid ICMP error"))
        .collect();
    assert!(answered.is_empty(), "nothing is answered: {answered:?}");
    let status = gateway.stop().expect("stop");
    assert!(status.success(), "{}", gateway.output());
}

#[test]
fn tc_counts_forwarding_disabled() {
    forwarding_disabled_is_counted("tc", "bpf");
}

#[test]
fn xdp_kernel_forwarding_counts_forwarding_disabled() {
    forwarding_disabled_is_counted("xdp", "kernel");
}
