//! High availability, failback and resync, in the HA lab (`gateway_tests::ha_lab`) with the
//! state sync over the nodes' own link:
//!
//! - a long-lived TCP connection and a UDP flow through the masquerade survive two
//!   failovers, there and back: node 1 dies (links cut, `kill -9` of its agent and
//!   keepalived), node 2 takes over; node 1 comes back (a new agent, a standby, which gets
//!   node 2's snapshot and is in sync before anything else happens), and the operator moves
//!   the role back as the packaged keepalived config (`nopreempt`) has it done: keepalived on
//!   node 2 is stopped gracefully (it hands over at once and tells its agent `fault`), then
//!   started again, and node 2 is the standby again, in sync with node 1. The flows go on
//!   from the same public ports throughout, and neither promotion happened without the
//!   peer's state. A standby's served interfaces do not forward (its kernel would route
//!   what still reaches it untranslated); a master's do;
//! - a standby whose agent is restarted while flows run (and new flows are opened while it
//!   is away) resyncs: a snapshot, then the stream; the two nodes' `gateway sessions
//!   --json` then agree (apart from times and counts), also on flows opened after the
//!   snapshot.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::GatewayProcess,
    ha_flows::{EchoServers, LongFlows, short_udp_flows},
    ha_lab::PUBLIC_VIP,
    ha_nodes::{
        AgentConfig, comparable_sessions, lab_up, promote_by_hand, start_agent,
        start_keepalived_pair, status, sync_status, wait_in_sync, wait_until,
    },
};

const TCP_PORT: u16 = 7020;
const UDP_PORT: u16 = 7021;
/// Bound on what one failover takes: keepalived's detection (about 3.6 s with advert_int 1,
/// none for a graceful hand-over), the promotion, and the flows' own retries (TCP's
/// backed-off retransmission).
const FAILOVER_BOUND: Duration = Duration::from_secs(30);
const KEY: &str = "the pair's shared sync key, failback test, 56 bytes long\n";

#[test]
fn flows_survive_a_failover_and_the_failback_with_their_public_ports() {
    let (lab, dir) = lab_up();
    let [first, second] = &lab.nodes;
    let (mut one, one_files) = start_agent(&lab, first, AgentConfig::Synced(KEY));
    let (two, _two_files) = start_agent(&lab, second, AgentConfig::Synced(KEY));
    let [mut one_keepalived, mut two_keepalived] =
        start_keepalived_pair(&lab, [&one, &two], &dir.0);
    // A standby's interfaces do not forward (its kernel would route what reaches it
    // untranslated); the master's do.
    assert_eq!(lab.forwarding(second).expect("sysctls"), [false, false]);
    assert_eq!(lab.forwarding(first).expect("sysctls"), [true, true]);

    let mut servers = EchoServers::start(&lab.wan, TCP_PORT, UDP_PORT).expect("servers");
    let mut flows = LongFlows::start(&lab.lan, TCP_PORT, UDP_PORT);
    let start = Instant::now();
    assert!(flows.tcp.wait_for(10, start, Duration::from_secs(10)));
    assert!(flows.udp.wait_for(10, start, Duration::from_secs(10)));
    wait_in_sync("gw2 in sync with gw1", &one, &two);

    // Failover: node 1 dies.
    let died = Instant::now();
    lab.cut_links(first).expect("links down");
    one.kill_hard().expect("kill -9 gw1's agent");
    one_keepalived.kill_hard();
    let on = flows.tcp.wait_for(20, died, FAILOVER_BOUND)
        && flows.udp.wait_for(20, died, FAILOVER_BOUND);
    assert!(
        on,
        "flows after the failover to gw2\n{}\n{}",
        two.output(),
        two_keepalived.log()
    );
    let failed_over = Instant::now();
    assert_eq!(status(&two)["ha"]["role"], "master");
    assert_eq!(lab.forwarding(second).expect("sysctls"), [true, true]);

    // Node 1 returns: a new agent (a standby, detached) and keepalived, which with
    // nopreempt leaves node 2 master. Node 2 streams to it: a snapshot, then the changes.
    lab.bring_back(first).expect("gw1 back");
    drop(one);
    let one = GatewayProcess::start(&first.netns, &one_files.config.0, &[]).expect("gw1 again");
    assert_eq!(status(&one)["ha"]["role"], "backup");
    assert_eq!(status(&one)["ha"]["attached"], false);
    let one_keepalived = lab
        .start_keepalived(first, &one, 150, &dir.0)
        .expect("keepalived");
    one_keepalived
        .wait_for_log("Entering BACKUP STATE", Duration::from_secs(10))
        .expect("gw1 backup");
    wait_in_sync("gw1 resynced from gw2", &two, &one);
    assert_eq!(status(&two)["ha"]["role"], "master", "nopreempt");
    assert_eq!(lab.forwarding(first).expect("sysctls"), [false, false]);

    // Failback, as an operator does it with the packaged config: keepalived on node 2 is
    // stopped (it hands the addresses over at once and makes its agent detach), then
    // started again as the standby.
    let handed_back = Instant::now();
    two_keepalived
        .stop_gracefully()
        .expect("stop gw2's keepalived");
    wait_until("gw1 master again", Duration::from_secs(15), || {
        status(&one)["ha"]["role"] == "master"
    });
    wait_until("gw2 detached", Duration::from_secs(15), || {
        status(&two)["ha"]["attached"] == false
    });
    let on = flows.tcp.wait_for(20, handed_back, FAILOVER_BOUND)
        && flows.udp.wait_for(20, handed_back, FAILOVER_BOUND);
    if !on {
        panic!(
            "flows after the failback to gw1: tcp {} udp {} round trips since; servers {:?} (udp peers {:?}), flows {:?}\n{}\n{}\n{:?}\n{}",
            flows.tcp.count_after(handed_back),
            flows.udp.count_after(handed_back),
            servers.stop(),
            servers.udp_peers(),
            flows.stop(),
            one.output(),
            one.ask(&["stats"]).unwrap_or_default(),
            comparable_sessions(&one),
            one_keepalived.log()
        );
    }
    let failed_back = Instant::now();
    assert_eq!(lab.forwarding(first).expect("sysctls"), [true, true]);
    assert_eq!(lab.forwarding(second).expect("sysctls"), [false, false]);
    let two_keepalived = lab
        .start_keepalived(second, &two, 100, &dir.0)
        .expect("keepalived");
    two_keepalived
        .wait_for_log("Entering BACKUP STATE", Duration::from_secs(10))
        .expect("gw2 backup again");
    wait_in_sync("gw2 in sync with gw1 again", &one, &two);
    assert_eq!(status(&one)["ha"]["role"], "master");
    assert_eq!(status(&two)["ha"]["role"], "backup");

    let settled = Instant::now();
    assert!(flows.tcp.wait_for(10, settled, Duration::from_secs(10)));
    let gaps = [&flows.tcp, &flows.udp].map(|progress| {
        [
            progress.longest_gap_between(died, failed_over),
            progress.longest_gap_between(handed_back, failed_back),
        ]
    });
    flows
        .stop()
        .expect("the TCP connection went on through both failovers");
    servers.stop().expect("echo servers");
    println!(
        "longest pause (round trips every 50 ms): failover tcp {:.2} s, udp {:.2} s; failback tcp {:.2} s, udp {:.2} s",
        gaps[0][0].as_secs_f64(),
        gaps[1][0].as_secs_f64(),
        gaps[0][1].as_secs_f64(),
        gaps[1][1].as_secs_f64()
    );

    // One TCP connection and one UDP source at the server throughout, from the public
    // address: the same public ports through three masters.
    let tcp_peers = servers.tcp_peers();
    assert_eq!(tcp_peers.len(), 1, "{tcp_peers:?}");
    let udp_peers = servers.udp_peers();
    assert_eq!(udp_peers.len(), 1, "{udp_peers:?}");
    for peer in tcp_peers.iter().chain(&udp_peers) {
        assert_eq!(peer.ip(), IpAddr::V4(PUBLIC_VIP), "{peer}");
    }
    // Both promotions found the peer's state in place.
    for (name, node) in [("gw1", &one), ("gw2", &two)] {
        let sync = sync_status(node);
        assert_eq!(sync["counters"]["promotions_unsynced"], 0, "{name}: {sync}");
        assert_eq!(sync["counters"]["refused"], 0, "{name}: {sync}");
        assert!(
            sync["counters"]["snapshots_applied"].as_u64() >= Some(1),
            "{name}: {sync}"
        );
    }
    lab.assert_checksums();
}

#[test]
fn a_standby_restarted_mid_stream_resyncs_and_agrees_with_the_master() {
    let (lab, _dir) = lab_up();
    let [first, second] = &lab.nodes;
    let (one, _one_files) = start_agent(&lab, first, AgentConfig::Synced(KEY));
    let (mut two, two_files) = start_agent(&lab, second, AgentConfig::Synced(KEY));
    // No keepalived: node 1 takes the addresses and is told it is master, as keepalived
    // would; node 2 stays the standby it starts as.
    promote_by_hand(first, &one);
    // The pair's first master had no state from its peer: said and counted, not refused.
    let active = sync_status(&one);
    assert_eq!(active["counters"]["promotions_unsynced"], 1, "{active}");
    assert!(
        one.output()
            .contains("promoted with no state from the peer"),
        "{}",
        one.output()
    );

    let mut servers = EchoServers::start(&lab.wan, TCP_PORT, UDP_PORT).expect("servers");
    let mut flows = LongFlows::start(&lab.lan, TCP_PORT, UDP_PORT);
    let start = Instant::now();
    assert!(flows.tcp.wait_for(10, start, Duration::from_secs(10)));
    assert!(flows.udp.wait_for(10, start, Duration::from_secs(10)));
    let mut short_ports: BTreeSet<u16> = short_udp_flows(&lab.lan, UDP_PORT, 20)
        .expect("short flows")
        .into_iter()
        .collect();
    wait_in_sync("gw2 in sync", &one, &two);
    let before = sync_status(&one)["counters"]["snapshots_sent"]
        .as_u64()
        .expect("snapshots_sent");

    // The standby's agent restarts (as `systemctl restart gateway` does); meanwhile new
    // flows open on the master, which the new agent can only learn from its snapshot.
    two.stop().expect("stop gw2's agent");
    short_ports
        .extend(short_udp_flows(&lab.lan, UDP_PORT, 30).expect("short flows while gw2 is away"));
    let restarted = Instant::now();
    let two = GatewayProcess::start(&second.netns, &two_files.config.0, &[]).expect("gw2 again");
    wait_in_sync("gw2 resynced", &one, &two);
    println!(
        "standby restarted: in sync {:.2} s after its agent started ({} sessions)",
        restarted.elapsed().as_secs_f64(),
        comparable_sessions(&one).len()
    );
    let active = sync_status(&one);
    assert_eq!(active["link"], "sending", "{active}");
    assert!(
        active["counters"]["snapshots_sent"].as_u64() > Some(before),
        "a new snapshot for the new agent: {active}"
    );
    let standby = sync_status(&two);
    assert_eq!(standby["link"], "receiving", "{standby}");
    assert_eq!(standby["counters"]["connections"], 1, "{standby}");
    assert!(
        standby["counters"]["snapshots_applied"].as_u64() >= Some(1),
        "{standby}"
    );
    assert_eq!(standby["counters"]["apply_errors"], 0, "{standby}");
    // The long TCP and UDP flows and the short ones (a port reused by a later call is
    // one flow), two sessions each.
    let table = comparable_sessions(&two);
    assert_eq!(table.len(), 2 * (2 + short_ports.len()), "{table:?}");

    // Then the stream: flows opened after the snapshot reach the standby too.
    short_ports
        .extend(short_udp_flows(&lab.lan, UDP_PORT, 10).expect("short flows after the resync"));
    wait_in_sync("gw2 follows the stream", &one, &two);
    assert_eq!(comparable_sessions(&two).len(), 2 * (2 + short_ports.len()));
    flows.stop().expect("flows went on");
    servers.stop().expect("echo servers");
    lab.assert_checksums();
}
