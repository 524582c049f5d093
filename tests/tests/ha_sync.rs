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

use std::time::{Duration, Instant};

use gateway_tests::{
    ha_flows::{EchoServers, LongFlows},
    ha_lab::PUBLIC_VIP,
    ha_nodes::{
        AgentConfig, lab_up, lan_sessions, promote_by_hand, start_agent, start_keepalived_pair,
        status, sync_status, wait_until,
    },
};

const TCP_PORT: u16 = 7010;
const UDP_PORT: u16 = 7011;
/// Bound on everything the failover takes: keepalived's detection (about 3.6 s with
/// advert_int 1), the promotion, and the flows' own retries (TCP's backed-off
/// retransmission).
const FAILOVER_BOUND: Duration = Duration::from_secs(30);
const KEY: &str = "the pair's shared sync key, 48 bytes of it here\n";
const OTHER_KEY: &str = "not the pair's key: another one, long enough too\n";

#[test]
fn established_flows_survive_a_failover_with_their_public_ports() {
    let (lab, dir) = lab_up();
    let [first, second] = &lab.nodes;
    let (mut one, _one_files) = start_agent(&lab, first, AgentConfig::Synced(KEY));
    let (two, _two_files) = start_agent(&lab, second, AgentConfig::Synced(KEY));
    let [mut one_keepalived, two_keepalived] = start_keepalived_pair(&lab, [&one, &two], &dir.0);

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
    lab.assert_checksums();
}

#[test]
fn a_standby_with_another_key_refuses_the_master_and_gets_no_state() {
    let (lab, _dir) = lab_up();
    let [first, second] = &lab.nodes;
    let (one, _one_files) = start_agent(&lab, first, AgentConfig::Synced(KEY));
    let (two, _two_files) = start_agent(&lab, second, AgentConfig::Synced(OTHER_KEY));
    // No keepalived: node 1 takes the addresses and is told it is master, as keepalived
    // would.
    promote_by_hand(first, &one);

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
    lab.assert_checksums();
}
