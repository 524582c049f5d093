//! The ICMP errors the gateway's stack would send about translated packets reach their
//! *original* senders, end to end in namespaces, on both hooks and with both `forwarding`
//! settings, and the senders' own stacks take them: `ping` prints them, a UDP socket with
//! `IP_RECVERR` reads them (the kernel queues an error only on the socket whose addresses and
//! ports it quotes), a TCP connect fails at once with the error's errno.
//!
//! From inside, through the masquerade: `ping -t 1` and a UDP probe with TTL 1 get "time to
//! live exceeded" from the gateway's inside address; TTL 2 reaches the outside host, whose
//! port-unreachable comes back translated (traceroute through the gateway); an `unreachable`
//! route answers host unreachable, a `prohibit` route administratively prohibited, no route at
//! all net unreachable (from the stack, which gets the packet as it was sent), a `blackhole`
//! route nothing; the gateway's own service at its public address sees the real client, and
//! its closed port answers port unreachable; an unused address of the outside link (no host
//! answers ARP) host unreachable once the neighbour has had the time to resolve. From outside, to published
//! servers: TTL 1 gets time exceeded from the public address; a server behind an `unreachable`
//! route, and one at an unused inside address, host unreachable.
//!
//! Every error a host receives is checked: checksums, from the gateway's address on the
//! host's side, quoting byte for byte the head of a packet that host sent. Every address used
//! is the lab's: the refusing routes are for prefixes of the lab's own plan that no namespace
//! has, set in the router's namespace; nothing leaves the namespaces.

use std::{
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use gateway_tests::{
    TempFile,
    capture::{Capture, Frame},
    check_environment,
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions},
    netns::{Netns, unique_prefix},
    packet::{self, IcmpErrorFrame, audit_checksums},
};

const PUBLISHED_UDP: SocketAddrV4 = SocketAddrV4::new(lab::PUBLIC, 5353);
/// Published TCP servers the gateway cannot reach: behind the `unreachable` route, and at an
/// inside address no host has.
const PUBLISHED_UNREACHABLE: SocketAddrV4 = SocketAddrV4::new(lab::PUBLIC, 8022);
const PUBLISHED_ABSENT: SocketAddrV4 = SocketAddrV4::new(lab::PUBLIC, 8023);
const UNREACHABLE_NET: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 0);
const PROHIBITED_NET: Ipv4Addr = Ipv4Addr::new(10, 0, 10, 0);
const BLACKHOLE_NET: Ipv4Addr = Ipv4Addr::new(10, 0, 11, 0);
/// A prefix the router has no route for.
const UNROUTED: Ipv4Addr = Ipv4Addr::new(10, 0, 12, 1);
/// Addresses of the lab's links that no host has.
const ABSENT_OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);
const ABSENT_INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 77);
/// A closed UDP port of the outside host (traceroute's first).
const CLOSED_PORT: u16 = 33434;

const EHOSTUNREACH: i32 = libc::EHOSTUNREACH;
const ENETUNREACH: i32 = libc::ENETUNREACH;

fn host(net: Ipv4Addr, last: u8) -> Ipv4Addr {
    let [a, b, c, _] = net.octets();
    Ipv4Addr::new(a, b, c, last)
}

fn config(hook: &str, forwarding: &str) -> String {
    let base = lab::gateway_config(
        hook,
        &[
            (PUBLISHED_UDP, SocketAddrV4::new(lab::SERVER, 5353), "udp"),
            (
                PUBLISHED_UNREACHABLE,
                SocketAddrV4::new(host(UNREACHABLE_NET, 9), 80),
                "tcp",
            ),
            (
                PUBLISHED_ABSENT,
                SocketAddrV4::new(ABSENT_INSIDE, 80),
                "tcp",
            ),
        ],
    )
    .replacen(
        &format!("hook = \"{hook}\"\n"),
        &format!("hook = \"{hook}\"\nforwarding = \"{forwarding}\"\n"),
        1,
    );
    format!(
        "{base}\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{}\"]\nports = \"1024-65535\"\n",
        lab::PUBLIC
    )
}

/// `ping -c 1` from `netns` with the given TTL; its output.
fn ping(netns: &Netns, to: Ipv4Addr, ttl: u8) -> String {
    let output = netns
        .command("ping")
        .args([
            "-n",
            "-c",
            "1",
            "-W",
            "3",
            "-t",
            &ttl.to_string(),
            &to.to_string(),
        ])
        .output()
        .expect("run ping");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A TCP connect from `netns`: its errno (None: connected) and how long it took.
fn connect(netns: &Netns, to: SocketAddrV4, timeout: Duration) -> (Option<i32>, Duration) {
    netns
        .spawn(move || {
            let start = Instant::now();
            let result = TcpStream::connect_timeout(&SocketAddr::V4(to), timeout);
            let errno = match result {
                Ok(_) => None,
                // A timeout has no errno of the kernel's: ETIMEDOUT stands for it.
                Err(err) => Some(err.raw_os_error().unwrap_or(libc::ETIMEDOUT)),
            };
            Ok((errno, start.elapsed()))
        })
        .join()
        .expect("connect thread")
        .expect("connect")
}

/// What a UDP socket's error queue got (`IP_RECVERR`): the ICMP type, code and offender.
#[derive(Debug, PartialEq, Eq)]
struct QueuedError {
    kind: u8,
    code: u8,
    offender: Ipv4Addr,
}

/// Sends one datagram with the given TTL from a connected UDP socket with `IP_RECVERR` in
/// `netns`, and returns what arrived on its error queue within 3 s.
fn udp_probe(netns: &Netns, to: SocketAddrV4, ttl: u8) -> Option<QueuedError> {
    netns
        .spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(to)?;
            let fd = socket.as_raw_fd();
            for (option, value) in [(libc::IP_RECVERR, 1), (libc::IP_TTL, ttl as libc::c_int)] {
                // SAFETY: an int option on our own socket.
                let set = unsafe {
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_IP,
                        option,
                        (&value as *const libc::c_int).cast(),
                        4,
                    )
                };
                if set != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
            }
            socket.send(b"probe")?;
            let mut poll = libc::pollfd {
                fd,
                events: 0,
                revents: 0,
            };
            // SAFETY: one pollfd of ours; POLLERR is always reported.
            if unsafe { libc::poll(&mut poll, 1, 3000) } <= 0 {
                return Ok(None);
            }
            Ok(read_error_queue(fd))
        })
        .join()
        .expect("probe thread")
        .expect("probe")
}

fn read_error_queue(fd: i32) -> Option<QueuedError> {
    let mut data = [0u8; 64];
    let mut control = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the buffers are set below and outlive the call.
    let mut message: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = control.len();
    // SAFETY: a valid socket and message.
    if unsafe { libc::recvmsg(fd, &mut message, libc::MSG_ERRQUEUE) } < 0 {
        return None;
    }
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&message);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_RECVERR {
                let error = libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err;
                if (*error).ee_origin != libc::SO_EE_ORIGIN_ICMP {
                    return None;
                }
                let offender = error.add(1) as *const libc::sockaddr_in;
                return Some(QueuedError {
                    kind: (*error).ee_type,
                    code: (*error).ee_code,
                    offender: Ipv4Addr::from(u32::from_be((*offender).sin_addr.s_addr)),
                });
            }
            cmsg = libc::CMSG_NXTHDR(&message, cmsg);
        }
    }
    None
}

/// The ICMP errors a host received, every one checked (checksums right); with the heads
/// (IPv4 header and 8 bytes) of every packet it sent.
fn errors_and_heads(frames: &[Frame], what: &str) -> (Vec<IcmpErrorFrame>, Vec<Vec<u8>>) {
    let audit = audit_checksums(frames);
    assert!(audit.bad.is_empty(), "{what}: {audit:?}");
    let errors = frames
        .iter()
        .filter(|frame| !frame.outgoing)
        .filter_map(|frame| {
            packet::icmp_error(&frame.bytes).unwrap_or_else(|err| panic!("{what}: {err}"))
        })
        .collect();
    let heads = frames
        .iter()
        .filter(|frame| frame.outgoing && frame.bytes.len() > 14 + 28)
        .filter(|frame| frame.bytes[12..14] == [0x08, 0x00])
        .map(|frame| {
            let ihl = ((frame.bytes[14] & 0x0f) as usize) * 4;
            frame.bytes[14..(14 + ihl + 8).min(frame.bytes.len())].to_vec()
        })
        .collect();
    (errors, heads)
}

/// Asserts the host got exactly `expected` errors (type, code) from `from`, each quoting
/// byte for byte the head of a packet it sent; from a later hop (`hops_on`), its protocol,
/// addresses and ports (that hop saw a lower TTL, and checksums the router finished).
fn assert_errors_from(
    errors: &[IcmpErrorFrame],
    heads: &[Vec<u8>],
    from: Ipv4Addr,
    hops_on: bool,
    expected: &mut Vec<(u8, u8)>,
    what: &str,
) {
    let masked = |head: &[u8]| {
        if !hops_on {
            return head.to_vec();
        }
        let ihl = ((head[0] & 0x0f) as usize) * 4;
        [&head[9..10], &head[12..20], &head[ihl..ihl + 4]].concat()
    };
    let mut got: Vec<(u8, u8)> = errors
        .iter()
        .filter(|error| error.src == from)
        .map(|error| {
            let quoted = error
                .quoted_head()
                .unwrap_or_else(|| panic!("{what}: short quote in {error:?}"));
            assert!(
                heads.iter().any(|head| masked(head) == masked(quoted)),
                "{what}: {error:?} quotes nothing this host sent"
            );
            (error.kind, error.code)
        })
        .collect();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(&got, expected, "{what}: errors from {from}");
}

fn errors_reach_the_original_sender(hook: &str, forwarding: &str) {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = Lab::up(
        &prefix,
        LabOptions {
            // TC: local senders' partial checksums, which the messages must leave room for.
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
    lab.router
        .sh(&format!(
            "ip route add unreachable {UNREACHABLE_NET}/24
             ip route add prohibit {PROHIBITED_NET}/24
             ip route add blackhole {BLACKHOLE_NET}/24"
        ))
        .expect("routes");
    let config = TempFile::write(&format!("{prefix}-gateway.toml"), &config(hook, forwarding));
    let mut gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("start gateway");
    let inside_capture = Capture::start(&lab.inside, HOST_IF).expect("capture inside");
    let outside_capture = Capture::start(&lab.outside, HOST_IF).expect("capture outside");
    let fast = Duration::from_secs(1);
    let output = || {
        let stats = gateway.ask(&["stats"]).unwrap_or_default();
        format!("{stats}\n{}", gateway.output())
    };

    // Inside, through the masquerade.
    let printed = ping(&lab.inside, lab::CLIENT, 1);
    assert!(
        printed.contains("From 10.0.0.1 icmp_seq=1 Time to live exceeded"),
        "ping -t 1: {printed}\n{}",
        output()
    );
    let probe = SocketAddrV4::new(lab::CLIENT, CLOSED_PORT);
    assert_eq!(
        udp_probe(&lab.inside, probe, 1),
        Some(QueuedError {
            kind: 11,
            code: 0,
            offender: lab::ROUTER_INSIDE
        }),
        "UDP, TTL 1\n{}",
        output()
    );
    // The next hop is the outside host itself: its port-unreachable, translated back.
    assert_eq!(
        udp_probe(&lab.inside, probe, 2),
        Some(QueuedError {
            kind: 3,
            code: 3,
            offender: lab::CLIENT
        }),
        "UDP, TTL 2"
    );
    let printed = ping(&lab.inside, host(UNREACHABLE_NET, 1), 64);
    assert!(
        printed.contains("From 10.0.0.1 icmp_seq=1 Destination Host Unreachable"),
        "ping behind an unreachable route: {printed}"
    );
    let (errno, took) = connect(
        &lab.inside,
        SocketAddrV4::new(host(UNREACHABLE_NET, 1), 80),
        fast,
    );
    assert_eq!(
        (errno, took < fast),
        (Some(EHOSTUNREACH), true),
        "unreachable route"
    );
    let (errno, took) = connect(
        &lab.inside,
        SocketAddrV4::new(host(PROHIBITED_NET, 1), 80),
        fast,
    );
    assert_eq!(
        (errno, took < fast),
        (Some(EHOSTUNREACH), true),
        "prohibit route"
    );
    // No route: the stack answers the packet as it was sent.
    let printed = ping(&lab.inside, UNROUTED, 64);
    assert!(
        printed.contains("From 10.0.0.1 icmp_seq=1 Destination Net Unreachable"),
        "ping with no route: {printed}"
    );
    let (errno, took) = connect(&lab.inside, SocketAddrV4::new(UNROUTED, 80), fast);
    assert_eq!((errno, took < fast), (Some(ENETUNREACH), true), "no route");
    // For the gateway itself: its own sockets see the real sender, its port unreachable
    // reaches it.
    let service = SocketAddrV4::new(lab::PUBLIC, 2222);
    let listener = lab
        .router
        .spawn(move || Ok(TcpListener::bind(service)?))
        .join()
        .expect("thread")
        .expect("the gateway's own service");
    let (errno, _) = connect(&lab.inside, service, fast);
    assert_eq!(errno, None, "the gateway's own service");
    let (_, peer) = listener.accept().expect("accept");
    assert_eq!(
        peer.ip(),
        lab::SERVER,
        "the gateway's own service sees its real client"
    );
    assert_eq!(
        udp_probe(&lab.inside, SocketAddrV4::new(lab::PUBLIC, 9), 64),
        Some(QueuedError {
            kind: 3,
            code: 3,
            offender: lab::PUBLIC
        }),
        "a closed port of the gateway"
    );
    let (errno, _) = connect(
        &lab.inside,
        SocketAddrV4::new(host(BLACKHOLE_NET, 1), 80),
        fast,
    );
    assert_eq!(errno, Some(libc::ETIMEDOUT), "blackhole route: no answer");
    // Nobody answers ARP: SYNs go out at 0, 1 and 3 s; the kernel gives up resolving at
    // 3 s, and from then on the gateway answers.
    let (errno, took) = connect(
        &lab.inside,
        SocketAddrV4::new(ABSENT_OUTSIDE, 80),
        Duration::from_secs(15),
    );
    assert_eq!(errno, Some(EHOSTUNREACH), "unused outside address");
    assert!(
        took < Duration::from_secs(5),
        "unused outside address: {took:?}"
    );

    // Outside, to published servers.
    assert_eq!(
        udp_probe(&lab.outside, PUBLISHED_UDP, 1),
        Some(QueuedError {
            kind: 11,
            code: 0,
            offender: lab::PUBLIC
        }),
        "published UDP server, TTL 1"
    );
    let (errno, took) = connect(&lab.outside, PUBLISHED_UNREACHABLE, fast);
    assert_eq!(
        (errno, took < fast),
        (Some(EHOSTUNREACH), true),
        "published server behind an unreachable route"
    );
    let (errno, took) = connect(&lab.outside, PUBLISHED_ABSENT, Duration::from_secs(15));
    assert_eq!(
        errno,
        Some(EHOSTUNREACH),
        "published server at an unused address"
    );
    assert!(
        took < Duration::from_secs(5),
        "published server at an unused address: {took:?}"
    );

    let (inside_errors, inside_heads) =
        errors_and_heads(&inside_capture.finish().expect("capture"), "inside");
    let (outside_errors, outside_heads) =
        errors_and_heads(&outside_capture.finish().expect("capture"), "outside");
    let status = gateway.stop().expect("stop");
    assert!(status.success(), "{}", gateway.output());
    assert_errors_from(
        &inside_errors,
        &inside_heads,
        lab::ROUTER_INSIDE,
        false,
        &mut vec![
            (11, 0),
            (11, 0),
            (3, 1),
            (3, 1),
            (3, 13),
            (3, 0),
            (3, 0),
            (3, 1),
        ],
        "inside host",
    );
    assert_errors_from(
        &inside_errors,
        &inside_heads,
        lab::PUBLIC,
        false,
        &mut vec![(3, 3)],
        "inside host",
    );
    assert_errors_from(
        &inside_errors,
        &inside_heads,
        lab::CLIENT,
        true,
        &mut vec![(3, 3)],
        "inside host",
    );
    // The kernel's own host-unreachable for the SYNs it was resolving the absent inside
    // host for quotes the translated SYN and goes to its translated source: with the stack
    // forwarding (XDP, or `forwarding = "kernel"`) that is the client, who ignores it (it
    // quotes the private address); TC's `bpf_redirect_neigh` drops them without a word.
    let leaked: Vec<&IcmpErrorFrame> = outside_errors
        .iter()
        .filter(|error| error.quote.get(16..20) == Some(&ABSENT_INSIDE.octets()[..]))
        .collect();
    let public_errors: Vec<IcmpErrorFrame> = outside_errors
        .iter()
        .filter(|error| error.quote.get(16..20) != Some(&ABSENT_INSIDE.octets()[..]))
        .cloned()
        .collect();
    assert_errors_from(
        &public_errors,
        &outside_heads,
        lab::PUBLIC,
        false,
        &mut vec![(11, 0), (3, 1), (3, 1)],
        "outside host",
    );
    if hook == "tc" && forwarding == "bpf" {
        assert!(leaked.is_empty(), "{leaked:?}");
    }
    assert!(
        leaked
            .iter()
            .all(|error| (error.src, error.kind, error.code) == (lab::PUBLIC, 3, 1)),
        "{leaked:?}"
    );
    for (name, value) in [
        ("time_exceeded_sent", 3),
        ("fib_unreachable", 3),
        ("fib_prohibit", 1),
        ("fib_frag_needed", 0),
    ] {
        assert_eq!(
            gateway.final_counter(name),
            value,
            "{name}\n{}",
            gateway.output()
        );
    }
    for (name, at_least) in [
        ("unreachable_sent", 5),
        ("fib_blackhole", 1),
        ("fib_not_forwarded", 5),
        ("passed_untranslated", 5),
        ("fib_no_neighbour", 4),
    ] {
        assert!(
            gateway.final_counter(name) >= at_least,
            "{name} < {at_least}\n{}",
            gateway.output()
        );
    }
}

#[test]
fn tc_errors_reach_the_original_sender() {
    errors_reach_the_original_sender("tc", "bpf");
}

#[test]
fn tc_kernel_forwarding_errors_reach_the_original_sender() {
    errors_reach_the_original_sender("tc", "kernel");
}

#[test]
fn xdp_errors_reach_the_original_sender() {
    errors_reach_the_original_sender("xdp", "bpf");
}

#[test]
fn xdp_kernel_forwarding_errors_reach_the_original_sender() {
    errors_reach_the_original_sender("xdp", "kernel");
}
