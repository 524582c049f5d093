//! `[ha]`: this node's place in an active/standby pair. Its presence makes the agent start
//! as a standby that attaches its programs only when keepalived makes it master
//! ([`crate::ha`]). With `key_file`, the node also runs the state sync with its peer
//! ([`crate::ha::sync`]): the active node streams its fast path's state to `peer:sync_port`,
//! every frame authenticated with the shared key.

use std::{fmt, net::Ipv4Addr, path::PathBuf};

use serde::Deserialize;

/// The port the state sync listens on unless `[ha] sync_port` says otherwise.
pub const DEFAULT_SYNC_PORT: u16 = 7946;

/// The shortest shared key the state sync accepts, in bytes: 128 bits of a random key.
pub const MIN_SYNC_KEY_BYTES: usize = 16;

/// The shared key of the state sync, as read from `[ha] key_file`. Its `Debug` does not
/// show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncKey(Vec<u8>);

impl SyncKey {
    /// The key from a file's contents: one trailing newline (an editor's) is not part of it.
    pub fn from_file_contents(mut bytes: Vec<u8>) -> Result<SyncKey, String> {
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        if bytes.len() < MIN_SYNC_KEY_BYTES {
            return Err(format!(
                "{} bytes: too short, the key must have at least {MIN_SYNC_KEY_BYTES} (such as the output of `head -c 32 /dev/urandom | base64`)",
                bytes.len()
            ));
        }
        Ok(SyncKey(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncKey({} bytes)", self.0.len())
    }
}

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
    /// The address this node's sync listener binds (`[ha] listen`); unspecified (the
    /// default): every address of the node.
    pub listen: Ipv4Addr,
    /// The state sync's shared key (`key_file`); `None`: no state sync (roles only, a
    /// failover loses the established flows).
    pub key: Option<SyncKey>,
    /// Where the key was read from, for messages.
    pub key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    node_id: i64,
    peer: String,
    #[serde(default = "default_sync_port")]
    sync_port: i64,
    listen: Option<String>,
    key_file: Option<String>,
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
    let listen = match raw.listen.as_deref() {
        None => Ipv4Addr::UNSPECIFIED,
        Some(text) => parse_listen(text)?,
    };
    let (key, key_file) = match raw.key_file.as_deref() {
        None => (None, None),
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "ha.key_file = {:?}: expected an absolute path",
                    path.display()
                ));
            }
            let bytes = std::fs::read(&path).map_err(|err| {
                format!("ha.key_file = {:?}: cannot read it: {err}", path.display())
            })?;
            let key = SyncKey::from_file_contents(bytes)
                .map_err(|err| format!("ha.key_file = {:?}: {err}", path.display()))?;
            (Some(key), Some(path))
        }
    };
    Ok(Ha {
        node_id,
        peer,
        sync_port,
        listen,
        key,
        key_file,
    })
}

/// `[ha] listen`: an address of this node (its sync link's, best) or `0.0.0.0` for all.
/// Loopback is refused: the peer, never a loopback address, could not reach it.
fn parse_listen(text: &str) -> Result<Ipv4Addr, String> {
    let listen: Ipv4Addr = text.parse().map_err(|_| {
        format!(
            "ha.listen = {text:?}: expected an IPv4 address of this node (no port: that is ha.sync_port), such as \"192.168.77.1\", or \"0.0.0.0\" for all"
        )
    })?;
    if listen.is_loopback() || listen.is_multicast() || listen.is_broadcast() {
        return Err(format!(
            "ha.listen = \"{listen}\": expected a unicast address of this node the peer can reach (not loopback, multicast or broadcast), or \"0.0.0.0\" for all"
        ));
    }
    Ok(listen)
}
