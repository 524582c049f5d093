//! Path-MTU discovery across the gateway (RFC 5382/4787 REQ-9 applied to the gateway's own
//! errors, RFC 1191): a datagram with DF that is too big for the next link once translated is
//! answered with ICMP fragmentation-needed to its *original* sender, quoting its original
//! header, from the gateway's address on the sender's side. The sender's kernel must take it:
//! its socket reports the lower MTU and refuses the next datagram of that size.
//!
//! Both directions, both hooks, both `forwarding` settings (with `kernel` the stack would
//! answer the translated packet, to its translated source: the gateway itself): an inside
//! client masqueraded to an outside host over a 1400-byte outside link, its datagrams with
//! IPv4 options (quoted whole), and an outside client to a published UDP server over a
//! 1400-byte inside link. Then a TCP transfer across the smaller link still completes.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use gateway_tests::{
    TempFile,
    capture::{Capture, Frame},
    check_environment,
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions, ROUTER_INSIDE_IF, ROUTER_OUTSIDE_IF},
    netns::{Netns, unique_prefix},
    oracle,
    transfer::tcp_transfer,
};

const SMALL_MTU: u16 = 1400;
/// A UDP payload that makes a 1500-byte IPv4 packet: fits the sender's link, not the next.
const PAYLOAD: usize = 1500 - 28;
const PUBLISHED_UDP: SocketAddrV4 = SocketAddrV4::new(lab::PUBLIC, 5353);
const PUBLISHED_TCP: SocketAddrV4 = SocketAddrV4::new(lab::PUBLIC, 8021);

fn config(hook: &str) -> String {
    format!(
        "{}\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{}\"]\nports = \"1024-65535\"\n",
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

/// Sets the MTU of both ends of one of the router's veth pairs.
fn set_link_mtu(lab: &Lab, router_if: &str, host: &Netns, mtu: u16) {
    lab.router
        .sh(&format!("ip link set {router_if} mtu {mtu}"))
        .expect("router mtu");
    host.sh(&format!("ip link set {HOST_IF} mtu {mtu}"))
        .expect("host mtu");
}

/// What the sender saw: the MTU its socket reports after the datagram, and the error of the
/// next send of the same size.
#[derive(Debug)]
struct SenderView {
    mtu: i32,
    next_send: std::io::Result<usize>,
    sent_from: SocketAddrV4,
}

/// IPv4 options the masqueraded sender puts on its datagrams: NOP NOP NOP EOL.
const OPTIONS: [u8; 4] = [1, 1, 1, 0];

/// Sends one 1500-byte datagram with DF (and `options`) from a connected UDP socket in
/// `netns` to `to`, waits until the socket's path MTU drops (at most 3 s), and tries the same
/// size again.
fn send_too_big(netns: &Netns, to: SocketAddrV4, options: &'static [u8]) -> SenderView {
    netns
        .spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(to)?;
            let fd = socket.as_raw_fd();
            let set = |option: libc::c_int, value: libc::c_int| {
                // SAFETY: an int option on our own socket.
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_IP,
                        option,
                        (&value as *const libc::c_int).cast(),
                        4,
                    )
                }
            };
            if set(libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO) != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            // SAFETY: the options' bytes, for their length.
            if !options.is_empty()
                && unsafe {
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_IP,
                        libc::IP_OPTIONS,
                        options.as_ptr().cast(),
                        options.len() as libc::socklen_t,
                    )
                } != 0
            {
                return Err(std::io::Error::last_os_error().into());
            }
            let mtu = || {
                let mut value: libc::c_int = 0;
                let mut len: libc::socklen_t = 4;
                // SAFETY: an int out-parameter of the given size.
                unsafe {
                    libc::getsockopt(
                        fd,
                        libc::IPPROTO_IP,
                        libc::IP_MTU,
                        (&mut value as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                value
            };
            let sent_from = match socket.local_addr()? {
                std::net::SocketAddr::V4(addr) => addr,
                other => anyhow::bail!("not IPv4: {other}"),
            };
            let datagram = vec![0x5au8; PAYLOAD - options.len()];
            socket.send(&datagram)?;
            let deadline = Instant::now() + Duration::from_secs(3);
            while mtu() >= 1500 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let mtu = mtu();
            let next_send = socket.send(&datagram);
            Ok(SenderView {
                mtu,
                next_send,
                sent_from,
            })
        })
        .join()
        .expect("sender thread")
        .expect("sender")
}

/// The ICMP fragmentation-needed frames a host received, checked: IPv4 and ICMP checksums
/// right, type 3 code 4. Returns (outer source, outer destination, next-hop MTU, quoted bytes).
fn frag_needed_received(frames: &[Frame]) -> Vec<(Ipv4Addr, Ipv4Addr, u16, Vec<u8>)> {
    let mut found = Vec::new();
    for frame in frames.iter().filter(|frame| !frame.outgoing) {
        let bytes = &frame.bytes;
        if bytes.len() < 14 + 20 + 8 || bytes[12..14] != [0x08, 0x00] || bytes[14 + 9] != 1 {
            continue;
        }
        let ip = &bytes[14..];
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        assert!(
            total <= ip.len() && ihl >= 20,
            "truncated ICMP frame {bytes:02x?}"
        );
        let icmp = &ip[ihl..total];
        if icmp[0] != 3 || icmp[1] != 4 {
            continue;
        }
        assert_eq!(
            oracle::ipv4_header(&ip[..ihl]),
            Ok(u16::from_be_bytes([ip[10], ip[11]])),
            "IPv4 header checksum of the ICMP message"
        );
        let (src, dst) = (
            [ip[12], ip[13], ip[14], ip[15]],
            [ip[16], ip[17], ip[18], ip[19]],
        );
        let expected = oracle::transport(src, dst, gateway_common::IPPROTO_ICMP, icmp);
        assert!(
            expected.is_ok_and(|expected| oracle::same(
                expected,
                u16::from_be_bytes([icmp[2], icmp[3]])
            )),
            "ICMP checksum of {icmp:02x?}"
        );
        found.push((
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            u16::from_be_bytes([icmp[6], icmp[7]]),
            icmp[8..].to_vec(),
        ));
    }
    found
}

/// The head (IPv4 header with its options, and 8 bytes) of the big UDP datagram the sender
/// put on its wire.
fn sent_head(frames: &[Frame], from: SocketAddrV4) -> Vec<u8> {
    frames
        .iter()
        .filter(|frame| frame.outgoing && frame.bytes.len() >= 14 + 28)
        .map(|frame| &frame.bytes[14..])
        .find_map(|ip| {
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            (ip[9] == 17
                && ip[12..16] == from.ip().octets()
                && ip.get(ihl..ihl + 2) == Some(&from.port().to_be_bytes()[..])
                && u16::from_be_bytes([ip[2], ip[3]]) == 1500)
                .then(|| ip[..ihl + 8].to_vec())
        })
        .unwrap_or_else(|| panic!("the sender's datagram from {from} was not captured"))
}

/// One sender behind a smaller next link: it must learn the MTU from the gateway's message.
fn sender_learns_the_mtu(
    gateway: &GatewayProcess,
    sender: &Netns,
    (to, options): (SocketAddrV4, &'static [u8]),
    gateway_address: Ipv4Addr,
    what: &str,
) {
    let capture = Capture::start(sender, HOST_IF).expect("capture at the sender");
    let view = send_too_big(sender, to, options);
    let frames = capture.finish().expect("capture");
    assert_eq!(
        view.mtu,
        SMALL_MTU as i32,
        "{what}: the sender's socket did not learn the path MTU ({view:?})\n{}",
        gateway.output()
    );
    assert_eq!(
        view.next_send.as_ref().map_err(|err| err.raw_os_error()),
        Err(Some(libc::EMSGSIZE)),
        "{what}: the next datagram of that size must be refused"
    );
    let messages = frag_needed_received(&frames);
    let [(source, destination, mtu, quote)] = messages.as_slice() else {
        panic!("{what}: expected one fragmentation-needed, got {messages:?}");
    };
    assert_eq!(
        *source, gateway_address,
        "{what}: from the gateway's address"
    );
    assert_eq!(*destination, *view.sent_from.ip(), "{what}: to the sender");
    assert_eq!(*mtu, SMALL_MTU, "{what}: next-hop MTU");
    let original = sent_head(&frames, view.sent_from);
    assert_eq!(
        original.len(),
        20 + options.len() + 8,
        "{what}: the datagram's header"
    );
    assert_eq!(
        &quote[..],
        &original[..],
        "{what}: the quote must be the original, untranslated header and 8 bytes"
    );
    let header_len = original.len() - 8;
    assert_eq!(
        oracle::ipv4_header(&quote[..header_len]),
        Ok(u16::from_be_bytes([quote[10], quote[11]])),
        "{what}: quoted header checksum"
    );
}

fn path_mtu_discovery(hook: &str, forwarding: &str, options: LabOptions) {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(&prefix, options).expect("lab up");
    let _xdp_receivers = if hook == "xdp" {
        lab.accept_xdp_redirects().expect("XDP on the end hosts")
    } else {
        Vec::new()
    };
    let config = config(hook).replacen(
        &format!("hook = \"{hook}\"\n"),
        &format!("hook = \"{hook}\"\nforwarding = \"{forwarding}\"\n"),
        1,
    );
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config);
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("start gateway");

    // Masquerade: the inside client's datagram leaves through a 1400-byte outside link. A
    // listener makes the outside host a normal peer (no port-unreachable in the way).
    let _listener = lab
        .outside
        .spawn(|| Ok(UdpSocket::bind(SocketAddrV4::new(lab::CLIENT, 7000))?))
        .join()
        .expect("thread")
        .expect("outside listener");
    set_link_mtu(&lab, ROUTER_OUTSIDE_IF, &lab.outside, SMALL_MTU);
    sender_learns_the_mtu(
        &gateway,
        &lab.inside,
        (SocketAddrV4::new(lab::CLIENT, 7000), &OPTIONS),
        lab::ROUTER_INSIDE,
        "masqueraded inside client, IPv4 options",
    );

    // Published server: the outside client's datagram enters through a 1400-byte inside link.
    set_link_mtu(&lab, ROUTER_OUTSIDE_IF, &lab.outside, 1500);
    set_link_mtu(&lab, ROUTER_INSIDE_IF, &lab.inside, SMALL_MTU);
    let _server = lab
        .inside
        .spawn(|| Ok(UdpSocket::bind(SocketAddrV4::new(lab::SERVER, 5353))?))
        .join()
        .expect("thread")
        .expect("inside server");
    sender_learns_the_mtu(
        &gateway,
        &lab.outside,
        (PUBLISHED_UDP, &[]),
        lab::PUBLIC,
        "outside client of a published server",
    );

    // TCP across the smaller link still works both ways.
    let report = tcp_transfer(
        &lab.inside,
        SocketAddrV4::new(lab::SERVER, 9000),
        &lab.outside,
        PUBLISHED_TCP,
        1 << 20,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|err| {
        panic!(
            "TCP across the 1400-byte link: {err:#}\n{}",
            gateway.output()
        )
    });
    assert!(report.intact(), "{report:?}");

    let status = gateway.stop().expect("stop");
    assert!(status.success(), "{}", gateway.output());
    assert_eq!(
        gateway.final_counter("frag_needed_sent"),
        2,
        "{}",
        gateway.output()
    );
}

/// TC with the end hosts' offloads on: the datagrams arrive with partial checksums, which the
/// kernel finishes only at transmission, after the program has replaced the packet.
#[test]
fn tc_tells_senders_the_path_mtu() {
    path_mtu_discovery("tc", "bpf", OFFLOADED_ENDPOINTS);
}

/// With the stack forwarding, the stack would answer the translated packet, to the
/// translated source (the gateway itself for the masqueraded sender): the program answers
/// first.
#[test]
fn tc_kernel_forwarding_tells_senders_the_path_mtu() {
    path_mtu_discovery("tc", "kernel", OFFLOADED_ENDPOINTS);
}

#[test]
fn xdp_tells_senders_the_path_mtu() {
    path_mtu_discovery("xdp", "bpf", WIRE_LIKE_ENDPOINTS);
}

#[test]
fn xdp_kernel_forwarding_tells_senders_the_path_mtu() {
    path_mtu_discovery("xdp", "kernel", WIRE_LIKE_ENDPOINTS);
}

const OFFLOADED_ENDPOINTS: LabOptions = LabOptions {
    endpoint_tx_offload: true,
    router_tx_offload: false,
};
const WIRE_LIKE_ENDPOINTS: LabOptions = LabOptions {
    endpoint_tx_offload: false,
    router_tx_offload: false,
};
