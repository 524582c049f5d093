//! `[ha]`: this node's place in an active/standby pair. Its presence makes the agent start
//! as a standby that attaches its programs only when keepalived makes it master
//! ([`crate::ha`]). The peer and the port are those of the coming state sync (issue 16):
//! validated now, so that a file written today keeps its meaning.

use std::net::Ipv4Addr;

use serde::Deserialize;

/// The port the state sync listens on unless `[ha] sync_port` says otherwise.
pub const DEFAULT_SYNC_PORT: u16 = 7946;

/// `[ha]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ha {
    /// This node's id within the pair (1 to 255), distinct from the peer's; it will tag
    /// the state this node sends.
    pub node_id: u8,
    /// The peer's address for the state sync (a unicast address of the peer).
    pub peer: Ipv4Addr,
    /// The TCP port both nodes' state sync uses.
    pub sync_port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    node_id: i64,
    peer: String,
    #[serde(default = "default_sync_port")]
    sync_port: i64,
}

fn default_sync_port() -> i64 {
    i64::from(DEFAULT_SYNC_PORT)
}

/// Checks `[ha]`; the error is the message of a one-line config error.
pub(super) fn parse_ha(raw: &RawHa) -> Result<Ha, String> {
    let node_id = u8::try_from(raw.node_id)
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| format!("ha.node_id = {}: expected 1 to 255", raw.node_id))?;
    let peer: Ipv4Addr = raw.peer.parse().map_err(|_| {
        format!(
            "ha.peer = {:?}: expected the peer's IPv4 address, such as \"192.0.2.2\"",
            raw.peer
        )
    })?;
    if peer.is_unspecified()
        || peer.is_loopback()
        || peer.is_multicast()
        || peer.is_broadcast()
        || peer.is_link_local()
    {
        return Err(format!(
            "ha.peer = \"{peer}\": expected a unicast address of the peer (not unspecified, loopback, link-local, multicast or broadcast)"
        ));
    }
    let sync_port = u16::try_from(raw.sync_port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("ha.sync_port = {}: expected 1 to 65535", raw.sync_port))?;
    Ok(Ha {
        node_id,
        peer,
        sync_port,
    })
}
