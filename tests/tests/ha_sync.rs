//! High availability, the state sync (`[ha] key_file`), in the HA lab
//! (`gateway_tests::ha_lab`), the nodes syncing over their own link:
//!
//! - a long-lived TCP connection and a UDP flow from the inside host to the outside host
//!   survive a failover (`kill -9` of the master's agent and keepalived, its links down):
//!   the standby has their sessions before (the two nodes' session tables agree), and after
//!   the takeover the same TCP connection and the same UDP flow go on, from the same
//!   public port; the longest pause each saw is printed;
//! - a standby with another key refuses the master (both count the refusal) and gets no
//!   state.
//!
//! The ALG's FTP control sessions are not synced yet (not tested here).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use gateway_tests::{
    TempFile, check_environment,
    gateway::GatewayProcess,
    ha_lab::{HaLab, INSIDE_VIP, LAN_HOST, Node, PUBLIC_VIP, WAN_HOST},
    netns::{Netns, unique_prefix},
};

const TCP_PORT: u16 = 7010;
const UDP_PORT: u16 = 7011;
/// Bound on everything the failover takes: keepalived's detection (about 3.6 s with
/// advert_int 1), the promotion, and the flows' own retries (TCP's backed-off
/// retransmission).
const FAILOVER_BOUND: Duration = Duration::from_secs(30);
const KEY: &str = "the pair's shared sync key, 48 bytes of it here\n";
const OTHER_KEY: &str = "not the pair's key: another one, long enough too\n";

/// Times of a flow's successful round trips, and why it stopped.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<Vec<Instant>>>);

impl Progress {
    fn record(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Instant::now());
    }

    fn times(&self) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn count_after(&self, since: Instant) -> usize {
        self.times().iter().filter(|time| **time > since).count()
    }

    /// The longest pause between two round trips.
    fn longest_gap(&self) -> Duration {
        self.times()
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }

    fn wait_for(&self, count: usize, since: Instant, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.count_after(since) >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// The outside host's echo servers: TCP (one connection, echoed until it ends) and UDP;
/// both record who they saw (after translation).
struct Servers {
    stop: Arc<AtomicBool>,
    tcp_peers: Arc<Mutex<Vec<SocketAddr>>>,
    udp_peers: Arc<Mutex<BTreeSet<SocketAddr>>>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Servers {
    fn start(wan: &Netns) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_peers = Arc::new(Mutex::new(Vec::new()));
        let udp_peers = Arc::new(Mutex::new(BTreeSet::new()));
        let (ready, listening) = std::sync::mpsc::channel();
        let (stopped, peers, tcp_ready) = (stop.clone(), tcp_peers.clone(), ready.clone());
        let tcp = wan.spawn(move || {
            let listener = TcpListener::bind(SocketAddrV4::new(WAN_HOST, TCP_PORT))?;
            listener.set_nonblocking(true)?;
            let _ = tcp_ready.send(());
            while !stopped.load(Ordering::Relaxed) {
                let (mut stream, peer) = match listener.accept() {
                    Ok(accepted) => accepted,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(err) => return Err(err.into()),
                };
                peers.lock().expect("peers").push(peer);
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_millis(200)))?;
                let mut buffer = [0; 256];
                while !stopped.load(Ordering::Relaxed) {
                    match stream.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(read) => stream.write_all(&buffer[..read])?,
                        Err(err)
                            if matches!(
                                err.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            Ok(())
        });
        let (stopped, peers) = (stop.clone(), udp_peers.clone());
        let udp = wan.spawn(move || {
            let socket = UdpSocket::bind(SocketAddrV4::new(WAN_HOST, UDP_PORT))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = ready.send(());
            let mut buffer = [0; 256];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((read, peer)) = socket.recv_from(&mut buffer) {
                    peers.lock().expect("peers").insert(peer);
                    socket.send_to(&buffer[..read], peer)?;
                }
            }
            Ok(())
        });
        for _ in 0..2 {
            listening
                .recv_timeout(Duration::from_secs(5))
                .expect("servers listening");
        }
        Servers {
            stop,
            tcp_peers,
            udp_peers,
            threads: vec![tcp, udp],
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread
                .join()
                .expect("server thread")
                .expect("server ran without error");
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The inside host's flows: one TCP connection and one UDP socket, a numbered 16-byte
/// message every 50 ms each, the echo checked.
struct Flows {
    stop: Arc<AtomicBool>,
    tcp: Progress,
    udp: Progress,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

fn message(number: u64) -> [u8; 16] {
    let mut message = [0; 16];
    message[..8].copy_from_slice(b"ha-sync:");
    message[8..].copy_from_slice(&number.to_be_bytes());
    message
}

impl Flows {
    fn start(lan: &Netns, tcp: bool) -> Flows {
        let stop = Arc::new(AtomicBool::new(false));
        let mut flows = Flows {
            stop: stop.clone(),
            tcp: Progress::default(),
            udp: Progress::default(),
            threads: Vec::new(),
        };
        if tcp {
            let (stopped, progress) = (stop.clone(), flows.tcp.clone());
            flows.threads.push(lan.spawn(move || {
                let mut stream = TcpStream::connect_timeout(
                    &SocketAddr::V4(SocketAddrV4::new(WAN_HOST, TCP_PORT)),
                    Duration::from_secs(5),
                )?;
                // Longer than any failover: TCP retransmits meanwhile.
                stream.set_read_timeout(Some(FAILOVER_BOUND))?;
                let mut number = 0;
                while !stopped.load(Ordering::Relaxed) {
                    stream.write_all(&message(number))?;
                    let mut echo = [0; 16];
                    stream.read_exact(&mut echo)?;
                    anyhow::ensure!(echo == message(number), "echo {number} differs");
                    progress.record();
                    number += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(())
            }));
        }
        let (stopped, progress) = (stop, flows.udp.clone());
        flows.threads.push(lan.spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(SocketAddrV4::new(WAN_HOST, UDP_PORT))?;
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut number = 0;
            while !stopped.load(Ordering::Relaxed) {
                // Lost during the failover, refused (ICMP) meanwhile: the flow goes on.
                let _ = socket.send(&message(number));
                let mut echo = [0; 16];
                if let Ok(16) = socket.recv(&mut echo)
                    && echo == message(number)
                {
                    progress.record();
                }
                number += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        }));
        flows
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("flow thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn status(gateway: &GatewayProcess) -> serde_json::Value {
    let text = gateway.ask(&["status", "--json"]).expect("status");
    serde_json::from_str(&text).expect("status json")
}

fn sync_status(gateway: &GatewayProcess) -> serde_json::Value {
    let status = status(gateway);
    assert!(status["ha"]["sync"].is_object(), "no ha.sync in {status}");
    status["ha"]["sync"].clone()
}

/// The inside host's sessions on a node: (original, translated) of each.
fn lan_sessions(gateway: &GatewayProcess) -> BTreeSet<(String, String)> {
    let text = gateway
        .ask(&[
            "sessions",
            "--json",
            "--filter",
            &format!("addr={LAN_HOST}"),
        ])
        .expect("sessions");
    let rows: serde_json::Value = serde_json::from_str(&text).expect("sessions json");
    rows.as_array()
        .into_iter()
        .flatten()
        .map(|row| (row["original"].to_string(), row["translated"].to_string()))
        .collect()
}

fn start_gateway(lab: &HaLab, node: &Node, key: &str) -> (GatewayProcess, [TempFile; 2]) {
    let key_file = TempFile::write(&format!("{}-gw{}.key", lab.prefix, node.id), key);
    let config = TempFile::write(
        &format!("{}-gw{}.toml", lab.prefix, node.id),
        &lab.synced_gateway_config(node, &key_file.0),
    );
    let gateway = GatewayProcess::start(&node.netns, &config.0, &[]).expect("gateway");
    (gateway, [key_file, config])
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {timeout:?}");
}

#[test]
fn established_flows_survive_a_failover_with_their_public_ports() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = HaLab::up(&prefix).expect("ha lab up");
    let dir = std::env::temp_dir().join(format!("{prefix}-ha"));
    let _cleanup = RemoveDir(dir.clone());
    let [first, second] = &lab.nodes;
    let (mut one, _one_files) = start_gateway(&lab, first, KEY);
    let (two, _two_files) = start_gateway(&lab, second, KEY);
    let mut one_keepalived = lab
        .start_keepalived(first, &one, 150, &dir)
        .expect("keepalived");
    wait_until("gw1 master", Duration::from_secs(15), || {
        status(&one)["ha"]["role"] == "master"
    });
    let two_keepalived = lab
        .start_keepalived(second, &two, 100, &dir)
        .expect("keepalived");
    two_keepalived
        .wait_for_log("Entering BACKUP STATE", Duration::from_secs(10))
        .expect("gw2 backup");

    let mut servers = Servers::start(&lab.wan);
    let mut flows = Flows::start(&lab.lan, true);
    let start = Instant::now();
    assert!(
        flows.tcp.wait_for(10, start, Duration::from_secs(10)),
        "tcp flow through gw1"
    );
    assert!(
        flows.udp.wait_for(10, start, Duration::from_secs(10)),
        "udp flow through gw1"
    );

    // The standby holds what the master holds: both directions of both flows, the same
    // public ports.
    let master_sessions = lan_sessions(&one);
    assert_eq!(master_sessions.len(), 4, "{master_sessions:?}");
    wait_until("gw2 has gw1's sessions", Duration::from_secs(5), || {
        lan_sessions(&two) == master_sessions
    });
    let active = sync_status(&one);
    assert_eq!(active["link"], "sending");
    // The flows began after the snapshot: their entries were named by the fast path's
    // change events (both sessions of both flows at least).
    assert!(active["counters"]["events"].as_u64() >= Some(4), "{active}");
    let standby = sync_status(&two);
    assert_eq!(standby["link"], "receiving", "{standby}");
    assert!(
        standby["counters"]["records_applied"].as_u64() > Some(0),
        "{standby}"
    );
    assert_eq!(standby["counters"]["refused"], 0, "{standby}");
    let text = two.ask(&["status"]).expect("status");
    assert!(text.contains("sync receiving"), "{text}");

    // The master dies: links first, as a machine's go silent at once (killed first, its
    // kernel would answer the flows' packets for a moment, untranslated, with resets).
    let died = Instant::now();
    lab.cut_links(first).expect("links down");
    one.kill_hard().expect("kill -9 the agent");
    one_keepalived.kill_hard();
    let tcp_on = flows.tcp.wait_for(20, died, FAILOVER_BOUND);
    let udp_on = flows.udp.wait_for(20, died, FAILOVER_BOUND);
    let tcp_gap = flows.tcp.longest_gap();
    let udp_gap = flows.udp.longest_gap();
    let ended = flows.stop();
    assert!(
        tcp_on && udp_on,
        "flows after the failover: tcp {tcp_on}, udp {udp_on} ({ended:?})\n{}\n{}",
        two.output(),
        two_keepalived.log()
    );
    ended.expect("the TCP connection went on through the new master");
    println!(
        "failover gap (longest pause between round trips every 50 ms): tcp {:.2} s, udp {:.2} s",
        tcp_gap.as_secs_f64(),
        udp_gap.as_secs_f64()
    );
    let now = status(&two);
    assert_eq!(now["ha"]["role"], "master", "{now}");
    servers.stop();

    // One TCP connection from the public address, one UDP source throughout: the same
    // public ports before and after.
    let tcp_peers = servers.tcp_peers.lock().expect("peers").clone();
    assert_eq!(tcp_peers.len(), 1, "{tcp_peers:?}");
    let udp_peers = servers.udp_peers.lock().expect("peers").clone();
    assert_eq!(udp_peers.len(), 1, "{udp_peers:?}");
    for peer in tcp_peers.iter().chain(&udp_peers) {
        assert_eq!(peer.ip(), std::net::IpAddr::V4(PUBLIC_VIP), "{peer}");
    }
    for host in [&lab.lan, &lab.wan] {
        for (counter, value) in host.checksum_error_counters() {
            assert_eq!(value, 0, "{}: {counter}", host.name());
        }
    }
}

#[test]
fn a_standby_with_another_key_refuses_the_master_and_gets_no_state() {
    check_environment().expect("environment");
    let prefix = unique_prefix();
    let lab = HaLab::up(&prefix).expect("ha lab up");
    let [first, second] = &lab.nodes;
    let (one, _one_files) = start_gateway(&lab, first, KEY);
    let (two, _two_files) = start_gateway(&lab, second, OTHER_KEY);
    // No keepalived: node 1 takes the addresses and is told it is master, as keepalived
    // would.
    first
        .netns
        .sh(&format!(
            "ip addr add {INSIDE_VIP}/24 dev veth-in\nip addr add {PUBLIC_VIP}/24 dev veth-out"
        ))
        .expect("virtual addresses");
    one.ask(&["ha", "master"]).expect("gw1 master");

    let mut servers = Servers::start(&lab.wan);
    let mut flows = Flows::start(&lab.lan, false);
    assert!(
        flows.udp.wait_for(
            5,
            Instant::now() - Duration::from_secs(1),
            Duration::from_secs(10)
        ),
        "udp flow through gw1"
    );
    wait_until("both refuse", Duration::from_secs(10), || {
        sync_status(&one)["counters"]["refused"].as_u64() > Some(0)
            && sync_status(&two)["counters"]["refused"].as_u64() > Some(0)
    });
    // Another round of attempts while the flow goes on.
    std::thread::sleep(Duration::from_secs(1));
    flows.stop().expect("udp flow");
    servers.stop();
    assert!(!lan_sessions(&one).is_empty());
    assert!(lan_sessions(&two).is_empty(), "{:?}", lan_sessions(&two));
    let (active, standby) = (sync_status(&one), sync_status(&two));
    assert_eq!(active["link"], "idle", "{active}");
    assert_eq!(active["counters"]["snapshots_sent"], 0, "{active}");
    assert_eq!(standby["link"], "idle", "{standby}");
    assert_eq!(standby["counters"]["records_applied"], 0, "{standby}");
    assert_eq!(standby["counters"]["connections"], 0, "{standby}");
    assert!(
        two.output().contains("refused the active node"),
        "{}",
        two.output()
    );
    for host in [&lab.lan, &lab.wan] {
        for (counter, value) in host.checksum_error_counters() {
            assert_eq!(value, 0, "{}: {counter}", host.name());
        }
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
