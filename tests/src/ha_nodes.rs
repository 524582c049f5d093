//! A pair's agents as the HA tests (`tests/tests/ha_*.rs`) drive and read them, in the HA lab
//! ([`crate::ha_lab`]): an agent started with its node's config (and sync key), the roles
//! given by keepalived or by hand, `gateway status --json` and its sync part, the session
//! table in the forms the tests compare, and waiting for a condition with a bound.

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    RemoveDir, TempFile, check_environment,
    gateway::GatewayProcess,
    ha_lab::{HaLab, INSIDE_IF, INSIDE_VIP, Keepalived, LAN_HOST, Node, OUTSIDE_IF, PUBLIC_VIP},
};

/// How often a condition is looked at again while waiting for it.
const POLL: Duration = Duration::from_millis(50);

/// A test's HA lab, the environment checked first, and the directory for its keepalived
/// files (see [`start_keepalived_pair`]), removed when the guard drops.
pub fn lab_up() -> (HaLab, RemoveDir) {
    check_environment().expect("environment");
    let prefix = crate::netns::unique_prefix();
    let lab = HaLab::up(&prefix).expect("ha lab up");
    let dir = RemoveDir(std::env::temp_dir().join(format!("{prefix}-ha")));
    (lab, dir)
}

/// The config a node's agent runs with.
#[derive(Debug, Clone, Copy)]
pub enum AgentConfig<'a> {
    /// [`HaLab::gateway_config`]: the roles, no state sync.
    Roles,
    /// [`HaLab::synced_gateway_config`], with this sync key.
    Synced(&'a str),
    /// [`HaLab::synced_ftp_gateway_config`] (the inside host's FTP server published), with
    /// this sync key.
    SyncedFtp(&'a str),
}

/// The files an agent was started with, removed when dropped; `config` starts it again.
pub struct AgentFiles {
    pub config: TempFile,
    pub key: Option<TempFile>,
}

/// Starts `node`'s agent with `config`, its files named after the lab and the node.
pub fn start_agent(
    lab: &HaLab,
    node: &Node,
    config: AgentConfig<'_>,
) -> (GatewayProcess, AgentFiles) {
    let name = |extension: &str| format!("{}-gw{}.{extension}", lab.prefix, node.id);
    let (text, key) = match config {
        AgentConfig::Roles => (lab.gateway_config(node), None),
        AgentConfig::Synced(key) => {
            let key = TempFile::write(&name("key"), key);
            (lab.synced_gateway_config(node, &key.0), Some(key))
        }
        AgentConfig::SyncedFtp(key) => {
            let key = TempFile::write(&name("key"), key);
            (lab.synced_ftp_gateway_config(node, &key.0), Some(key))
        }
    };
    let config = TempFile::write(&name("toml"), &text);
    let gateway = GatewayProcess::start(&node.netns, &config.0, &[]).expect("gateway");
    (gateway, AgentFiles { config, key })
}

/// keepalived on both nodes, as the tests begin: node 1's first (priority 150), which takes
/// the addresses with no adverts heard, until its agent says master; then node 2's (100),
/// until it says BACKUP. Its files go in `dir`.
pub fn start_keepalived_pair(
    lab: &HaLab,
    gateways: [&GatewayProcess; 2],
    dir: &Path,
) -> [Keepalived; 2] {
    let [first, second] = &lab.nodes;
    let one = lab
        .start_keepalived(first, gateways[0], 150, dir)
        .expect("keepalived");
    wait_for_role(gateways[0], "master", Duration::from_secs(15));
    let two = lab
        .start_keepalived(second, gateways[1], 100, dir)
        .expect("keepalived");
    two.wait_for_log("Entering BACKUP STATE", Duration::from_secs(10))
        .expect("gw2 backup");
    [one, two]
}

/// Makes `node` master without keepalived, as keepalived would: it takes the virtual
/// addresses and its agent is told.
pub fn promote_by_hand(node: &Node, gateway: &GatewayProcess) {
    node.netns
        .sh(&format!(
            "ip addr add {INSIDE_VIP}/24 dev {INSIDE_IF}\nip addr add {PUBLIC_VIP}/24 dev {OUTSIDE_IF}"
        ))
        .expect("virtual addresses");
    gateway.ask(&["ha", "master"]).expect("ha master");
}

/// `gateway status --json` of an agent with `[ha]`.
pub fn status(gateway: &GatewayProcess) -> serde_json::Value {
    let text = gateway.ask(&["status", "--json"]).expect("status");
    let status: serde_json::Value = serde_json::from_str(&text).expect("status json");
    assert!(status["ha"].is_object(), "no ha in {text}");
    status
}

/// The state sync's part of [`status`].
pub fn sync_status(gateway: &GatewayProcess) -> serde_json::Value {
    let status = status(gateway);
    assert!(status["ha"]["sync"].is_object(), "no ha.sync in {status}");
    status["ha"]["sync"].clone()
}

/// The agent's role: `master`, `backup`, `fault`.
pub fn role(gateway: &GatewayProcess) -> String {
    status(gateway)["ha"]["role"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the agent's role is `wanted`; on timeout panics with its status and output.
pub fn wait_for_role(gateway: &GatewayProcess, wanted: &str, timeout: Duration) {
    if !eventually(timeout, || role(gateway) == wanted) {
        panic!(
            "not {wanted} within {timeout:?}: {}\n{}",
            status(gateway),
            gateway.output()
        );
    }
}

/// Waits until `done`; on timeout panics, saying `what`.
pub fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    if !eventually(timeout, done) {
        panic!("{what}: not within {timeout:?}");
    }
}

fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

/// The rows of `gateway sessions --json` with `args` (a filter, `--ftp`).
pub fn session_rows(gateway: &GatewayProcess, args: &[&str]) -> Vec<serde_json::Value> {
    let mut command = vec!["sessions", "--json"];
    command.extend_from_slice(args);
    let text = gateway.ask(&command).expect("sessions");
    let rows: serde_json::Value = serde_json::from_str(&text).expect("sessions json");
    rows.as_array().cloned().unwrap_or_default()
}

/// The inside host's sessions: their rows.
pub fn lan_session_rows(gateway: &GatewayProcess) -> Vec<serde_json::Value> {
    session_rows(gateway, &["--filter", &format!("addr={LAN_HOST}")])
}

/// The inside host's sessions: (original, translated) of each.
pub fn lan_sessions(gateway: &GatewayProcess) -> BTreeSet<(String, String)> {
    lan_session_rows(gateway)
        .iter()
        .map(|row| (row["original"].to_string(), row["translated"].to_string()))
        .collect()
}

/// A node's session table without what differs between two nodes holding the same state
/// (idle times, packet and byte counts): protocol, original and translated tuples, state.
pub fn comparable_sessions(gateway: &GatewayProcess) -> BTreeSet<[String; 4]> {
    session_rows(gateway, &[])
        .iter()
        .map(|row| ["proto", "original", "translated", "state"].map(|field| row[field].to_string()))
        .collect()
}

/// Waits until `standby` holds a complete copy of `active`'s state: a snapshot applied,
/// and the same sessions.
pub fn wait_in_sync(what: &str, active: &GatewayProcess, standby: &GatewayProcess) {
    wait_until(what, Duration::from_secs(15), || {
        sync_status(standby)["in_sync"] == true
            && comparable_sessions(standby) == comparable_sessions(active)
    });
}
