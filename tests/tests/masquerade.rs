//! Inside hosts reaching outside through the masquerade, end to end in namespaces: a 10 MiB
//! TCP transfer with every checksum recomputed, UDP with endpoint-independent mapping and
//! address-dependent filtering, ping, unsolicited traffic dropped without an answer, and the
//! gateway's own connections left alone.

use std::{
    io::ErrorKind,
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use gateway_tests::{
    TempFile,
    capture::Capture,
    check_environment,
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions},
    netns::{Netns, unique_prefix},
    packet::audit_checksums,
    transfer::tcp_transfer,
};

const BYTES: usize = 10 << 20;
/// A published UDP port with nothing listening behind it, for ICMP errors from the server.
const PUBLISHED_UDP: SocketAddrV4 = SocketAddrV4::new(lab::PUBLIC, 5353);
/// A published TCP server, reached from inside through its public address (hairpinning).
const PUBLISHED_TCP: SocketAddrV4 = SocketAddrV4::new(lab::PUBLIC, 8021);
const TIMEOUT: Duration = Duration::from_secs(30);
/// A third outside host, added by the test that needs it: one no inside endpoint ever sends
/// to.
const UNCONTACTED: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 4);

fn config(hook: &str) -> String {
    format!(
        "{}\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{}\"]\nports = \"1024-65535\"\n\n[sessions]\nmax = 65536\n",
        lab::gateway_config(
            hook,
            &[
                (PUBLISHED_UDP, SocketAddrV4::new(lab::SERVER, 5353), "udp"),
                (PUBLISHED_TCP, SocketAddrV4::new(lab::SERVER, 9000), "tcp"),
            ]
        ),
        lab::PUBLIC
    )
}

fn start(hook: &str, options: LabOptions, extra: &[&str]) -> (Lab, GatewayProcess, TempFile) {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, options).expect("lab up");
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config(hook));
    let gateway = GatewayProcess::start(&lab.router, &config.0, extra).expect("start gateway");
    (lab, gateway, config)
}

/// An inside client uploads and downloads 10 MiB to an outside server; the server sees the
/// public address and the client's own port (kept, since it was free).
fn outbound_transfer(lab: &Lab, gateway: &GatewayProcess) {
    let server = SocketAddrV4::new(lab::CLIENT, 5001);
    let server_capture = Capture::start(&lab.outside, HOST_IF).expect("capture outside");
    let client_capture = Capture::start(&lab.inside, HOST_IF).expect("capture inside");
    let report = tcp_transfer(&lab.outside, server, &lab.inside, server, BYTES, TIMEOUT);
    let outside_frames = server_capture.finish().expect("outside capture");
    let inside_frames = client_capture.finish().expect("inside capture");
    let report =
        report.unwrap_or_else(|err| panic!("transfer failed: {err:#}\n{}", gateway.output()));
    assert!(report.intact(), "sha256 mismatch: {report:?}");
    let SocketAddr::V4(client) = report.client_local else {
        panic!("not IPv4")
    };
    assert_eq!(*client.ip(), lab::SERVER);
    assert_eq!(
        report.server_saw_peer,
        SocketAddr::V4(SocketAddrV4::new(lab::PUBLIC, client.port())),
        "masqueraded to the public address, port kept"
    );
    for (name, frames) in [("outside", &outside_frames), ("inside", &inside_frames)] {
        let audit = audit_checksums(frames.iter());
        assert!(
            audit.checked > BYTES / 1500,
            "{name}: only {} frames",
            audit.checked
        );
        assert_eq!(
            audit.bad_count, 0,
            "{name}: bad checksums, e.g. {:?}",
            audit.bad
        );
    }
    for host in [&lab.inside, &lab.outside] {
        for (counter, value) in host.checksum_error_counters() {
            assert_eq!(value, 0, "{}: {counter}", host.name());
        }
    }
}

/// A 4000-byte UDP datagram (three fragments on a 1500-byte MTU) out through the masquerade
/// and the same back: every fragment must be translated, or reassembly fails on either side.
fn fragmented_round_trip(lab: &Lab) {
    let inside = udp_socket(&lab.inside, SocketAddrV4::new(lab::SERVER, 6100));
    let outside = udp_socket(&lab.outside, SocketAddrV4::new(lab::CLIENT, 7100));
    let big: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
    inside.send_to(&big, outside.local_addr().unwrap()).unwrap();
    let mut buffer = vec![0u8; 8192];
    let (len, from) = outside
        .recv_from(&mut buffer)
        .expect("fragmented datagram out");
    assert_eq!(&buffer[..len], &big[..]);
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(lab::PUBLIC, 6100)));
    outside.send_to(&big, from).unwrap();
    let (len, _) = inside
        .recv_from(&mut buffer)
        .expect("fragmented datagram back");
    assert_eq!(&buffer[..len], &big[..]);
}

fn ping(from: &Netns, to: std::net::Ipv4Addr) -> bool {
    from.command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "2", &to.to_string()])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}

fn udp_socket(netns: &Netns, bind: SocketAddrV4) -> UdpSocket {
    netns
        .spawn(move || {
            let socket = UdpSocket::bind(bind)?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok(socket)
        })
        .join()
        .expect("thread")
        .expect("bind udp")
}

/// Receives one datagram, or `None` on timeout.
fn receive(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buffer = [0u8; 1500];
    match socket.recv_from(&mut buffer) {
        Ok((len, from)) => Some((buffer[..len].to_vec(), from)),
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(err) => panic!("recv: {err}"),
    }
}

#[test]
fn tc_masquerades_inside_clients() {
    let (lab, mut gateway, _config) = start(
        "auto",
        LabOptions {
            endpoint_tx_offload: true,
            router_tx_offload: false,
        },
        &[],
    );
    outbound_transfer(&lab, &gateway);
    delivers_after_neighbour_flush(&lab, 6200);
    assert!(
        ping(&lab.inside, lab::CLIENT),
        "ping through the masquerade"
    );

    // UDP: one inside endpoint, two outside hosts. Sockets are created inside their
    // namespaces and then used from this thread (a socket keeps its namespace).
    let inside = udp_socket(&lab.inside, SocketAddrV4::new(lab::SERVER, 6000));
    let host_a = udp_socket(&lab.outside, SocketAddrV4::new(lab::CLIENT, 7000));
    let host_b = udp_socket(&lab.outside, SocketAddrV4::new(lab::CLIENT2, 7000));
    let public = SocketAddr::V4(SocketAddrV4::new(lab::PUBLIC, 6000));
    for host in [&host_a, &host_b] {
        inside
            .send_to(b"hello", host.local_addr().unwrap())
            .unwrap();
        let (data, from) = receive(host).expect("datagram through the masquerade");
        assert_eq!(data, b"hello");
        // REQ-1 (RFC 4787): the same public endpoint towards both hosts.
        assert_eq!(from, public, "endpoint-independent mapping");
        host.send_to(b"reply", from).unwrap();
        let (data, from) = receive(&inside).expect("reply through the masquerade");
        assert_eq!(
            (data.as_slice(), from),
            (&b"reply"[..], host.local_addr().unwrap())
        );
    }
    // Address-dependent filtering: host A from another port gets through...
    let host_a_other = udp_socket(&lab.outside, SocketAddrV4::new(lab::CLIENT, 7001));
    host_a_other.send_to(b"other port", public).unwrap();
    assert_eq!(
        receive(&inside).map(|(data, _)| data),
        Some(b"other port".to_vec())
    );
    // ...a host the inside endpoint never sent to does not, on the very public port it uses
    // (a full-cone NAT would let it through)...
    lab.outside
        .sh(&format!("ip addr add {UNCONTACTED}/24 dev {HOST_IF}"))
        .expect("a third outside address");
    let stranger = udp_socket(&lab.outside, SocketAddrV4::new(UNCONTACTED, 7000));
    stranger.send_to(b"stranger", public).unwrap();
    assert_eq!(
        receive(&inside).map(|(data, _)| data),
        None,
        "a host never contacted reached the mapping: endpoint-independent filtering"
    );
    // ...while the mapping is alive: host A still reaches it.
    host_a.send_to(b"still open", public).unwrap();
    assert_eq!(
        receive(&inside).map(|(data, _)| data),
        Some(b"still open".to_vec())
    );

    // ...but nothing reaches a public port no inside endpoint has used, and a TCP SYN to it
    // gets no answer at all (RFC 5382 REQ-4): the connect times out instead of being refused.
    let unsolicited = SocketAddrV4::new(lab::PUBLIC, 6001);
    let result = lab
        .outside
        .spawn(move || {
            Ok(TcpStream::connect_timeout(&unsolicited.into(), Duration::from_secs(2)).map(|_| ()))
        })
        .join()
        .expect("thread")
        .expect("spawn");
    let err = result.expect_err("unsolicited connection must fail");
    assert_eq!(
        err.kind(),
        ErrorKind::TimedOut,
        "dropped silently, not refused: {err}"
    );

    fragmented_round_trip(&lab);

    // ICMP errors cross the gateway translated (RFC 5382 REQ-9): a port-unreachable from the
    // outside host reaches the inside client's connected socket, and one from the published
    // server reaches the outside client's, each as ECONNREFUSED.
    for (from, to) in [
        (&lab.inside, SocketAddrV4::new(lab::CLIENT, 9)),
        (&lab.outside, PUBLISHED_UDP),
    ] {
        let refused = from
            .spawn(move || {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.connect(to)?;
                socket.set_read_timeout(Some(Duration::from_secs(2)))?;
                socket.send(b"anyone?")?;
                let mut buffer = [0u8; 64];
                Ok(socket
                    .recv(&mut buffer)
                    .map(|_| ())
                    .map_err(|err| err.kind()))
            })
            .join()
            .expect("thread")
            .expect("udp");
        assert_eq!(
            refused,
            Err(ErrorKind::ConnectionRefused),
            "port unreachable from {to}"
        );
    }

    // A packet from outside claiming an inside source address is a spoof: dropped, and never
    // given a mapping of its own.
    lab.outside
        .sh("ip addr add 10.0.0.9/32 dev eth0 && ip route add 198.51.100.0/24 via 203.0.113.1")
        .expect("spoofing route");
    let spoofer = udp_socket(
        &lab.outside,
        SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, 9), 5555),
    );
    spoofer
        .send_to(
            b"spoof",
            SocketAddrV4::new(std::net::Ipv4Addr::new(198, 51, 100, 7), 53),
        )
        .unwrap();

    // The gateway's own connections use ports of the masquerade range too; they still work.
    let listener = lab
        .outside
        .spawn(|| Ok(TcpListener::bind(SocketAddrV4::new(lab::CLIENT, 5002))?))
        .join()
        .expect("thread")
        .expect("listen");
    let own = lab
        .router
        .spawn(|| {
            Ok(TcpStream::connect_timeout(
                &SocketAddrV4::new(lab::CLIENT, 5002).into(),
                Duration::from_secs(3),
            )
            .is_ok())
        })
        .join()
        .expect("thread")
        .expect("connect");
    assert!(own, "the gateway host's own outgoing connection");
    drop(listener);

    let status = gateway.stop().expect("stop");
    assert!(status.success(), "{}", gateway.output());
    for counter in [
        "session_created",
        "session_hit",
        "drop_unsolicited",
        "icmp_error_translated",
        "fragment_translated",
        "redirected",
        "drop_spoofed",
    ] {
        assert!(
            gateway.final_counter(counter) > 0,
            "{counter} not counted:\n{}",
            gateway.output()
        );
    }

    // Negative control: without the gateway the inside network cannot reach outside.
    let server = SocketAddrV4::new(lab::CLIENT, 5003);
    let control = tcp_transfer(
        &lab.outside,
        server,
        &lab.inside,
        server,
        1024,
        Duration::from_secs(3),
    );
    assert!(control.is_err(), "transfer succeeded without the gateway");
    assert!(
        !ping(&lab.inside, lab::CLIENT),
        "ping succeeded without the gateway"
    );
}

/// UDP out and back through the masquerade right after the router forgot its neighbours:
/// the first datagram each way finds no neighbour entry (XDP hands it to the stack, which
/// resolves it; TC's bpf_redirect_neigh resolves it itself), and nothing may be lost.
fn delivers_after_neighbour_flush(lab: &Lab, port: u16) {
    let inside = udp_socket(&lab.inside, SocketAddrV4::new(lab::SERVER, port));
    let outside = udp_socket(&lab.outside, SocketAddrV4::new(lab::CLIENT, port + 1000));
    for round in 0..3 {
        lab.router
            .sh("ip neigh flush all")
            .expect("flush neighbours");
        let message = format!("round {round}");
        inside
            .send_to(message.as_bytes(), outside.local_addr().unwrap())
            .unwrap();
        let (data, from) = receive(&outside).expect("datagram out with no neighbour entry");
        assert_eq!(data, message.as_bytes());
        lab.router
            .sh("ip neigh flush all")
            .expect("flush neighbours");
        outside.send_to(b"back", from).unwrap();
        let (data, _) = receive(&inside).expect("datagram back with no neighbour entry");
        assert_eq!(data, b"back");
    }
}

#[test]
fn xdp_masquerades_inside_clients() {
    let (lab, mut gateway, _config) = start(
        "xdp",
        LabOptions {
            endpoint_tx_offload: false,
            router_tx_offload: false,
        },
        &[],
    );
    // XDP forwards by redirecting to the end hosts' veths, which must be able to take that.
    let _xdp_receivers = lab.accept_xdp_redirects().expect("XDP on the end hosts");
    outbound_transfer(&lab, &gateway);
    delivers_after_neighbour_flush(&lab, 6200);
    assert!(
        ping(&lab.inside, lab::CLIENT),
        "ping through the masquerade"
    );
    fragmented_round_trip(&lab);
    let status = gateway.stop().expect("stop");
    assert!(status.success(), "{}", gateway.output());
    assert!(
        gateway.final_counter("session_created") > 0,
        "{}",
        gateway.output()
    );
    assert!(
        gateway.final_counter("fragment_translated") > 0,
        "{}",
        gateway.output()
    );
    // Forwarded from XDP itself (devmap redirect), not only through the stack.
    assert!(
        gateway.final_counter("redirected") > BYTES as u64 / 1500,
        "{}",
        gateway.output()
    );
}

/// RFC 5382 REQ-8: an inside host reaches a published server through the public address. The
/// lab's only inside host is the server itself, which makes the case sharper: it connects to
/// its own public address and must see the connection arrive from a public endpoint.
#[test]
fn tc_hairpins_inside_hosts_to_published_servers() {
    let (lab, mut gateway, _config) = start(
        "auto",
        LabOptions {
            endpoint_tx_offload: true,
            router_tx_offload: false,
        },
        &[],
    );
    let private = SocketAddrV4::new(lab::SERVER, 9000);
    let report = tcp_transfer(
        &lab.inside,
        private,
        &lab.inside,
        PUBLISHED_TCP,
        1 << 20,
        TIMEOUT,
    )
    .unwrap_or_else(|err| panic!("hairpinned transfer failed: {err:#}\n{}", gateway.output()));
    assert!(report.intact());
    assert_eq!(report.client_connected_to, SocketAddr::V4(PUBLISHED_TCP));
    let SocketAddr::V4(seen) = report.server_saw_peer else {
        panic!("not IPv4")
    };
    assert_eq!(
        *seen.ip(),
        lab::PUBLIC,
        "the server sees the client at the public address"
    );
    let status = gateway.stop().expect("stop");
    assert!(status.success(), "{}", gateway.output());
    assert_eq!(
        gateway.final_counter("hairpin_created"),
        1,
        "{}",
        gateway.output()
    );
}
