//! NAT slipstreaming against the ALG, in namespaces, on both hooks: a victim's program is made
//! to send an HTTP request whose body holds `USER`, `PASS` and a `PORT` naming a service on the
//! victim, to the attacker's FTP-port server, the `PORT` line starting a TCP segment of its own.
//! Masqueraded inside victims and outside clients of a published server alike: the session is
//! not FTP, so it is reset and nothing is opened (no expectation, the victim's service stays
//! unreachable, no `PORT` reaches the attacker rewritten); and a legitimate active-mode
//! session from the same host right after still works. Every frame the victim receives has
//! valid checksums.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use gateway_tests::{
    TempFile,
    capture::Capture,
    check_environment,
    ftp::{self, Client, Direction, FtpServer, Mode, Script, ServerKind},
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions},
    netns::{Netns, unique_prefix},
    packet::audit_checksums,
    transfer::pattern,
};
use serde_json::Value;

/// The service on the victim that the attacker wants to reach (8080 = 31 * 256 + 144).
const VICTIM_SERVICE: u16 = 8080;

#[derive(Clone, Copy, Debug)]
enum Hook {
    Tc,
    Xdp,
}

#[derive(Clone, Copy, Debug)]
enum Victim {
    /// An inside host masqueraded towards the attacker's outside server.
    Masqueraded,
    /// An outside client of a published inside server that the attacker controls.
    OutsideClient,
}

fn config(victim: Victim, hook: Hook) -> String {
    let interfaces = "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n";
    let translation = match victim {
        Victim::Masqueraded => format!(
            "[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{}\"]\n",
            lab::PUBLIC
        ),
        Victim::OutsideClient => format!(
            "[[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n",
            lab::PUBLIC,
            lab::SERVER
        ),
    };
    let hook = match hook {
        Hook::Tc => "tc",
        Hook::Xdp => "xdp",
    };
    format!("{interfaces}\n{translation}\n[dataplane]\nhook = \"{hook}\"\n")
}

fn port_argument(address: Ipv4Addr, port: u16) -> String {
    let [a, b, c, d] = address.octets();
    format!("{a},{b},{c},{d},{},{}", port >> 8, port & 0xff)
}

/// Whether a TCP connection from `netns` to `to` is accepted within two seconds.
fn connects(netns: &Netns, to: SocketAddrV4) -> bool {
    ftp::succeeds(netns.command("timeout").args([
        "3",
        "python3",
        "-c",
        &format!(
            "import socket; socket.create_connection(('{}', {}), timeout=2).close()",
            to.ip(),
            to.port()
        ),
    ]))
}

fn slipstream(victim: Victim, hook: Hook) {
    check_environment().expect("environment");
    let case = format!("{victim:?} {hook:?}");
    let prefix = unique_prefix();
    // Wire-like end hosts (XDP cannot finish partial checksums; the capture then shows real
    // ones), with the router's kernel finishing what the gateway leaves to it.
    let lab = Lab::up(
        &prefix,
        LabOptions {
            endpoint_tx_offload: false,
            router_tx_offload: false,
        },
    )
    .expect("lab up");
    let _receivers = match hook {
        Hook::Xdp => Some(
            lab.accept_xdp_redirects()
                .expect("XDP_PASS on the end hosts"),
        ),
        Hook::Tc => None,
    };
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config(victim, hook));
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("gateway");

    // Who is where: the victim (with its unpublished service), the attacker's server, and the
    // address the victim's program connects to.
    let (victim_ns, victim_addr, attacker_ns, attacker_addr, target) = match victim {
        Victim::Masqueraded => (
            &lab.inside,
            lab::SERVER,
            &lab.outside,
            lab::CLIENT,
            SocketAddrV4::new(lab::CLIENT, 21),
        ),
        Victim::OutsideClient => (
            &lab.outside,
            lab::CLIENT,
            &lab.inside,
            lab::SERVER,
            SocketAddrV4::new(lab::PUBLIC, 21),
        ),
    };
    let scratch = std::env::temp_dir().join(format!("{prefix}-slipstream"));
    std::fs::create_dir_all(&scratch).expect("scratch");
    let attacker_log = scratch.join("attacker.log");
    let service_log = scratch.join("service.log");
    let attacker = Script::spawn(
        attacker_ns,
        "slipstream_server.py",
        &[
            &attacker_addr.to_string(),
            "21",
            attacker_log.to_str().expect("path"),
        ],
    )
    .expect("attacker's server");
    let service = Script::spawn(
        victim_ns,
        "listener.py",
        &[
            &victim_addr.to_string(),
            &VICTIM_SERVICE.to_string(),
            service_log.to_str().expect("path"),
        ],
    )
    .expect("victim's service");
    ftp::wait_listening(attacker_ns, 21, Duration::from_secs(5)).expect("attacker listening");
    ftp::wait_listening(victim_ns, VICTIM_SERVICE, Duration::from_secs(5))
        .expect("service listening");
    let capture = Capture::start(victim_ns, HOST_IF).expect("capture");

    let result = Script::spawn(
        victim_ns,
        "slipstream_client.py",
        &[
            &target.ip().to_string(),
            &target.port().to_string(),
            &port_argument(victim_addr, VICTIM_SERVICE),
        ],
    )
    .expect("victim's program")
    .finish(Duration::from_secs(20))
    .unwrap_or_else(|err| panic!("{case}: {err:#}\n{}", gateway.output()));
    let result: Value = serde_json::from_str(&result).expect("client output");

    // Nothing was opened: no expectation, and the service is out of the attacker's reach both
    // where a rewritten PORT would have pointed and where the PORT itself pointed.
    let expectations = gateway
        .ask(&["expectations", "--json"])
        .expect("gateway expectations");
    let expectations: Value = serde_json::from_str(&expectations).expect("json");
    assert_eq!(
        expectations.as_array().map(Vec::len),
        Some(0),
        "{case}: {expectations}"
    );
    let reachable_at = match victim {
        Victim::Masqueraded => SocketAddrV4::new(lab::PUBLIC, VICTIM_SERVICE),
        Victim::OutsideClient => SocketAddrV4::new(lab::CLIENT, VICTIM_SERVICE),
    };
    assert!(
        !connects(attacker_ns, reachable_at),
        "{case}: the attacker reached {reachable_at}"
    );
    let accepted = std::fs::read_to_string(&service_log).unwrap_or_default();
    assert!(
        accepted.is_empty(),
        "{case}: the victim's service accepted: {accepted}"
    );
    // What reached the attacker: the request's first line at most (the gateway judges each
    // line complete before it passes), never a PORT, let alone a rewritten one.
    let seen = std::fs::read_to_string(&attacker_log).unwrap_or_default();
    assert!(!seen.contains("PORT"), "{case}: the attacker got {seen:?}");
    assert!(
        !seen.contains(&port_argument(lab::PUBLIC, VICTIM_SERVICE)[..11]),
        "{case}: {seen:?}"
    );
    // And the session itself was reset (the default for a stream that is not FTP).
    assert_eq!(
        result["outcome"],
        "reset",
        "{case}: the session is reset: {result}\n{}",
        gateway.output()
    );
    drop(attacker);

    // A legitimate active-mode session from the same host right after.
    let server_addr = match victim {
        Victim::Masqueraded => lab::CLIENT2,
        Victim::OutsideClient => lab::SERVER,
    };
    let server_ns = match victim {
        Victim::Masqueraded => &lab.outside,
        Victim::OutsideClient => &lab.inside,
    };
    let server = FtpServer::start(ServerKind::Vsftpd, server_ns, server_addr).expect("vsftpd");
    let content = pattern(5, 256 * 1024);
    server.put("file", &content).expect("put");
    let local = scratch.join("download");
    let connect_to = match victim {
        Victim::Masqueraded => SocketAddrV4::new(lab::CLIENT2, 21),
        Victim::OutsideClient => SocketAddrV4::new(lab::PUBLIC, 21),
    };
    ftp::transfer(
        Client::Curl,
        Mode::Port,
        Direction::Download,
        victim_ns,
        victim_addr,
        connect_to,
        "file",
        &local,
    )
    .unwrap_or_else(|err| panic!("{case}: legitimate session: {err:#}\n{}", gateway.output()));
    assert_eq!(
        ftp::sha256_file(&local).expect("sha256"),
        ftp::sha256(&content),
        "{case}"
    );
    drop(service);

    let frames = capture.finish().expect("capture");
    let audit = audit_checksums(frames.iter());
    assert!(audit.checked > 10, "{case}: {} frames", audit.checked);
    assert!(audit.bad.is_empty(), "{case}: {:?}", audit.bad);
    gateway.stop().expect("stop gateway");
    let output = gateway.output();
    assert!(
        gateway.final_counter("alg_not_ftp") >= 1,
        "{case}\n{output}"
    );
    assert!(
        output.contains("not FTP") && output.contains(&victim_addr.to_string()),
        "{case}: logged with the client\n{output}"
    );
    assert!(
        gateway.final_counter("expectation_used") >= 1,
        "{case}: the legitimate session's data connection\n{output}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn slipstreaming_a_masqueraded_client_opens_nothing_tc() {
    slipstream(Victim::Masqueraded, Hook::Tc);
}

#[test]
fn slipstreaming_a_masqueraded_client_opens_nothing_xdp() {
    slipstream(Victim::Masqueraded, Hook::Xdp);
}

#[test]
fn slipstreaming_an_outside_client_of_a_published_server_opens_nothing_tc() {
    slipstream(Victim::OutsideClient, Hook::Tc);
}

#[test]
fn slipstreaming_an_outside_client_of_a_published_server_opens_nothing_xdp() {
    slipstream(Victim::OutsideClient, Hook::Xdp);
}
