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
//! The ALG's FTP control sessions are tested in `ha_ftp.rs`, failback and resync in
//! `ha_failback.rs`.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use gateway_tests::{
    TempFile, check_environment,
    gateway::GatewayProcess,
    ha_flows::{EchoServers, LongFlows},
    ha_lab::{HaLab, INSIDE_VIP, LAN_HOST, Node, PUBLIC_VIP},
    netns::unique_prefix,
};

const TCP_PORT: u16 = 7010;
const UDP_PORT: u16 = 7011;
/// Bound on everything the failover takes: keepalived's detection (about 3.6 s with
/// advert_int 1), the promotion, and the flows' own retries (TCP's backed-off
/// retransmission).
const FAILOVER_BOUND: Duration = Duration::from_secs(30);
const KEY: &str = "the pair's shared sync key, 48 bytes of it here\n";
const OTHER_KEY: &str = "not the pair's key: another one, long enough too\n";

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

    let mut servers = EchoServers::start(&lab.wan, TCP_PORT, UDP_PORT).expect("echo servers");
    let mut flows = LongFlows::start(&lab.lan, TCP_PORT, UDP_PORT);
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
    let tcp_gap = flows.tcp.longest_gap_between(died, Instant::now());
    let udp_gap = flows.udp.longest_gap_between(died, Instant::now());
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
    servers.stop().expect("echo servers ran without error");

    // One TCP connection from the public address, one UDP source throughout: the same
    // public ports before and after.
    let tcp_peers = servers.tcp_peers();
    assert_eq!(tcp_peers.len(), 1, "{tcp_peers:?}");
    let udp_peers = servers.udp_peers();
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

    let mut servers = EchoServers::start(&lab.wan, TCP_PORT, UDP_PORT).expect("echo servers");
    let mut flows = LongFlows::start(&lab.lan, TCP_PORT, UDP_PORT);
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
    servers.stop().expect("echo servers ran without error");
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
