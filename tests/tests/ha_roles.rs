//! High availability, first slice: two gateways under keepalived (VRRP) in the HA lab
//! (`gateway_tests::ha_lab`). keepalived's notify hook runs the packaged script
//! (packaging/gateway-ha-notify), which tells each agent its role.
//!
//! - Both agents start detached; the first keepalived takes the virtual addresses and its
//!   agent attaches; the second stays backup, detached: connections from inside reach the
//!   outside host through the virtual address, translated to the public one, via the master
//!   only; one sent through the backup's own address is not translated (and goes nowhere).
//! - `kill -9` of the master's agent and keepalived, and its links down: the backup becomes
//!   master, attaches, and new connections work through it, within a bound; the time is
//!   printed with the agent's own promotion time (request to attached).
//! - The old node comes back (addresses gone, as after a reboot): it stays backup and
//!   detached (nopreempt), and traffic stays on the new master.
//! - keepalived's FAULT (the packaged script run as keepalived runs it) detaches the master:
//!   nothing is translated; MASTER attaches it again.
//!
//! State sync does not exist yet: connections open at the failover are lost (not tested).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{self, GatewayProcess},
    ha_lab::{HaLab, Keepalived, Node, PUBLIC_VIP, WAN_HOST, notify_script},
    ha_nodes::{
        AgentConfig, lab_up, lan_session_rows, role, start_agent, start_keepalived_pair,
        status as ha_status,
    },
    netns::Netns,
};

const ECHO_PORT: u16 = 7007;
/// keepalived with advert_int 1 declares the master dead after about 3.6 s; the rest is
/// the notify hook, the attach and the first connection.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

/// An echo server on the outside host: sends back what it reads; reports each client's
/// address (as it sees it: after translation). It stops when the guard drops.
struct EchoServer {
    stop: Arc<AtomicBool>,
    seen: mpsc::Receiver<SocketAddr>,
}

impl EchoServer {
    fn start(wan: &Netns) -> EchoServer {
        let (peers, seen) = mpsc::channel();
        let (ready, listening) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        wan.spawn(move || {
            let listener = TcpListener::bind(SocketAddrV4::new(WAN_HOST, ECHO_PORT))?;
            listener.set_nonblocking(true)?;
            let _ = ready.send(());
            while !stopped.load(Ordering::Relaxed) {
                let (mut stream, peer) = match listener.accept() {
                    Ok(accepted) => accepted,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(err) => return Err(err.into()),
                };
                let _ = peers.send(peer);
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut data = Vec::new();
                let _ = stream.read_to_end(&mut data);
                let _ = stream.write_all(&data);
            }
            Ok(())
        });
        listening
            .recv_timeout(Duration::from_secs(5))
            .expect("echo server listening");
        EchoServer { stop, seen }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection from the inside host to the echo server: 64 KiB there and back, compared.
fn round_trip(lan: &Netns, timeout: Duration) -> anyhow::Result<()> {
    lan.spawn(move || {
        let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(WAN_HOST, ECHO_PORT)),
            timeout,
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(&data)?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back)?;
        anyhow::ensure!(
            back == data,
            "echo differs ({} of {} bytes)",
            back.len(),
            data.len()
        );
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

/// Asserts a standby: backup, both interfaces detached.
fn assert_standby(gateway: &GatewayProcess, name: &str) {
    let status = ha_status(gateway);
    assert_eq!(status["ha"]["role"], "backup", "{name}: {status}");
    assert_eq!(status["ha"]["attached"], false, "{name}: {status}");
    for interface in status["interfaces"].as_array().expect("interfaces") {
        assert!(interface["hook"].is_null(), "{name} attached: {status}");
    }
}

struct NodeRun {
    gateway: GatewayProcess,
    keepalived: Option<Keepalived>,
}

/// `node`'s agent, with the roles and no state sync; its config is read once, at the start.
fn start_gateway(lab: &HaLab, node: &Node) -> GatewayProcess {
    start_agent(lab, node, AgentConfig::Roles).0
}

#[test]
fn keepalived_picks_the_master_and_the_backup_takes_over() {
    let (lab, dir) = lab_up();
    let [first, second] = &lab.nodes;

    let mut one = NodeRun {
        gateway: start_gateway(&lab, first),
        keepalived: None,
    };
    let mut two = NodeRun {
        gateway: start_gateway(&lab, second),
        keepalived: None,
    };
    // With [ha], nothing is attached before keepalived speaks.
    assert_standby(&one.gateway, "gw1 at start");
    assert_standby(&two.gateway, "gw2 at start");
    let text = one.gateway.ask(&["status"]).expect("status");
    assert!(text.contains("ha          node 1 backup"), "{text}");

    // The first keepalived alone: no adverts heard, it takes the addresses; then the
    // second, backup.
    let [one_keepalived, two_keepalived] =
        start_keepalived_pair(&lab, [&one.gateway, &two.gateway], &dir.0);
    one.keepalived = Some(one_keepalived);
    two.keepalived = Some(two_keepalived);
    let status = ha_status(&one.gateway);
    assert_eq!(status["ha"]["attached"], true, "{status}");
    assert!(
        status["ha"]["last_promotion_ms"].as_f64().is_some(),
        "{status}"
    );

    let echo = EchoServer::start(&lab.wan);
    round_trip(&lab.lan, Duration::from_secs(5)).expect("through the master");
    assert_translated_by(&one.gateway, &echo);
    assert!(ha_status(&one.gateway)["sessions"].as_u64() > Some(0));
    assert_standby(&two.gateway, "gw2 beside a master");
    assert_eq!(ha_status(&two.gateway)["sessions"], 0);

    // Straight at the backup's own address: it does not translate, so the outside host
    // (no route to the inside network) never answers.
    lab.lan
        .sh(&format!("ip route add {WAN_HOST}/32 via {}", second.inside))
        .expect("route via the backup");
    assert!(
        round_trip(&lab.lan, Duration::from_secs(2)).is_err(),
        "a connection through the backup must not work"
    );
    lab.lan
        .sh(&format!("ip route del {WAN_HOST}/32"))
        .expect("route back");
    assert!(
        echo.seen.try_recv().is_err(),
        "the outside host accepted an untranslated connection"
    );
    assert_eq!(ha_status(&two.gateway)["sessions"], 0);

    // The master dies: agent and keepalived killed, its links down.
    let died = Instant::now();
    one.gateway.kill_hard().expect("kill -9 the agent");
    if let Some(keepalived) = &mut one.keepalived {
        keepalived.kill_hard();
    }
    first
        .netns
        .sh("ip link set veth-in down\nip link set veth-out down")
        .expect("links down");
    let deadline = died + FAILOVER_BOUND;
    loop {
        match round_trip(&lab.lan, Duration::from_secs(1)) {
            Ok(()) => break,
            Err(err) if Instant::now() > deadline => panic!(
                "no connection through the backup {FAILOVER_BOUND:?} after the master died: {err:#}\n{}\n{}",
                two.gateway.output(),
                two.keepalived
                    .as_ref()
                    .map(Keepalived::log)
                    .unwrap_or_default()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let failover = died.elapsed();
    let status = ha_status(&two.gateway);
    assert_eq!(status["ha"]["role"], "master", "{status}");
    assert_eq!(status["ha"]["attached"], true, "{status}");
    let promotion_ms = status["ha"]["last_promotion_ms"]
        .as_f64()
        .expect("promotion time");
    println!(
        "failover: first connection through the new master {:.2} s after kill -9; its agent attached {promotion_ms:.2} ms after `gateway ha master`",
        failover.as_secs_f64()
    );
    // Only the successful connection reached the outside host: the attempts before the
    // takeover died on the way.
    assert_translated_by(&two.gateway, &echo);

    // The old node comes back, as from a reboot: no addresses of the old run, links up,
    // agent and keepalived started. nopreempt: it stays backup, detached.
    first
        .netns
        .sh(&format!(
            "ip addr del {}/24 dev veth-in\nip addr del {PUBLIC_VIP}/24 dev veth-out\n\
             ip link set veth-in up\nip link set veth-out up",
            gateway_tests::ha_lab::INSIDE_VIP
        ))
        .expect("node 1 back");
    one.gateway = start_gateway(&lab, first);
    one.keepalived = Some(
        lab.start_keepalived(first, &one.gateway, 150, &dir.0)
            .expect("keepalived"),
    );
    if let Some(keepalived) = &one.keepalived {
        keepalived
            .wait_for_log("Entering BACKUP STATE", Duration::from_secs(10))
            .expect("gw1 backup again");
    }
    // Three advert intervals: long enough for a wrong takeover to show.
    std::thread::sleep(Duration::from_millis(3500));
    assert_standby(&one.gateway, "gw1 back");
    assert_eq!(role(&two.gateway), "master");
    round_trip(&lab.lan, Duration::from_secs(5)).expect("through the new master");
    assert_translated_by(&two.gateway, &echo);
    assert_eq!(ha_status(&one.gateway)["sessions"], 0);
    let text = two.gateway.ask(&["status"]).expect("status");
    assert!(text.contains("ha          node 2 master"), "{text}");

    // keepalived's FAULT, through the packaged script as keepalived calls it: the master
    // detaches at once (its addresses stay with keepalived here), so nothing is translated;
    // MASTER again attaches again.
    let notify = |state: &str| {
        gateway_tests::run(
            std::process::Command::new(notify_script())
                .arg(two.gateway.socket())
                .arg(gateway::binary().expect("binary"))
                .args(["GROUP", "gateway", state, "100"]),
        )
        .expect("notify script");
    };
    notify("FAULT");
    let status = ha_status(&two.gateway);
    assert_eq!(status["ha"]["role"], "fault", "{status}");
    assert_eq!(status["ha"]["attached"], false, "{status}");
    assert!(
        round_trip(&lab.lan, Duration::from_secs(2)).is_err(),
        "a detached node must not translate"
    );
    if let Ok(peer) = echo.seen.try_recv() {
        panic!("the outside host accepted {peer} from a detached node");
    }
    notify("MASTER");
    let status = ha_status(&two.gateway);
    assert_eq!(status["ha"]["attached"], true, "{status}");
    assert_eq!(status["ha"]["promotions"], 2, "{status}");
    round_trip(&lab.lan, Duration::from_secs(5)).expect("attached again");
    assert_translated_by(&two.gateway, &echo);

    lab.assert_checksums();
}

/// The outside host saw the last connection come from the public address, on a port that
/// `gateway`'s session table maps the inside host to: this node translated it.
fn assert_translated_by(gateway: &GatewayProcess, echo: &EchoServer) {
    let peer = echo
        .seen
        .recv_timeout(Duration::from_secs(5))
        .expect("a client");
    let SocketAddr::V4(peer) = peer else {
        panic!("{peer}")
    };
    assert_eq!(
        *peer.ip(),
        PUBLIC_VIP,
        "the outside host sees the public address"
    );
    let rows = lan_session_rows(gateway);
    let translated = format!("{peer} -> {WAN_HOST}:{ECHO_PORT}");
    assert!(
        rows.iter()
            .any(|row| row["translated"] == translated.as_str()),
        "no session translated to {translated} in {rows:?}"
    );
}
