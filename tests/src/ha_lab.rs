//! The high-availability lab: two gateways between one inside and one outside segment,
//! keepalived (VRRP) in each deciding which one holds the virtual addresses.
//!
//! ```text
//!  ns <p>-lan                      ns <p>-gw1 / <p>-gw2                  ns <p>-wan
//!  br0 10.0.0.2/24                 veth-in  10.0.0.11 / .12             br0 203.0.113.2/24
//!  default via 10.0.0.1 (VIP)      veth-out 203.0.113.11 / .12          no route to 10.0.0.0/24
//!   ports: n1-in, n2-in ---------- veth-in        veth-out ----------- ports: n1-out, n2-out
//!                                  master adds 10.0.0.1/24 (inside VIP) and 203.0.113.1/24
//!                                  (public VIP, the masquerade address)
//! ```
//!
//! The two gateways are also joined by a link of their own, `veth-sync` (192.168.77.<id>/24),
//! for the state sync, as a pair is usually cabled: the sync stays off the segments the fast
//! path translates.
//!
//! Each segment is a bridge inside its own namespace (which is also the segment's one host);
//! every link is a veth pair created with both ends in lab namespaces. keepalived talks
//! unicast VRRP between the nodes' own addresses, so no multicast crosses the bridges.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// The inside host (the lan namespace's bridge).
pub const LAN_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The outside host (the wan namespace's bridge).
pub const WAN_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The inside virtual address: the inside hosts' default route, held by the master.
pub const INSIDE_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The public virtual address: the masquerade's address, held by the master.
pub const PUBLIC_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

pub const INSIDE_IF: &str = "veth-in";
pub const OUTSIDE_IF: &str = "veth-out";
pub const SYNC_IF: &str = "veth-sync";
const BRIDGE: &str = "br0";

/// One gateway node: its namespace and own addresses.
pub struct Node {
    pub netns: Netns,
    /// 1 or 2.
    pub id: u8,
    pub inside: Ipv4Addr,
    pub outside: Ipv4Addr,
}

impl Drop for Node {
    /// A node whose agent was killed (the failovers) leaves its sysctl record: it goes with
    /// the node's namespace.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(crate::gateway::sysctl_record_of(self.netns.name()));
    }
}

pub struct HaLab {
    pub prefix: String,
    pub lan: Netns,
    pub wan: Netns,
    pub nodes: [Node; 2],
}

impl HaLab {
    /// Builds the lab. On error, whatever was created is removed again (the guards drop).
    pub fn up(prefix: &str) -> anyhow::Result<HaLab> {
        let lan = Netns::create(&format!("{prefix}-lan"))?;
        let wan = Netns::create(&format!("{prefix}-wan"))?;
        let node = |id: u8| -> anyhow::Result<Node> {
            Ok(Node {
                netns: Netns::create(&format!("{prefix}-gw{id}"))?,
                id,
                inside: Ipv4Addr::new(10, 0, 0, 10 + id),
                outside: Ipv4Addr::new(203, 0, 113, 10 + id),
            })
        };
        let nodes = [node(1)?, node(2)?];
        for (segment, address) in [(&lan, LAN_HOST), (&wan, WAN_HOST)] {
            segment.sh(&format!(
                "ip link add {BRIDGE} type bridge forward_delay 0
                 ip addr add {address}/24 dev {BRIDGE}
                 ip link set {BRIDGE} up"
            ))?;
        }
        for node in &nodes {
            for (side, segment, address) in [("in", &lan, node.inside), ("out", &wan, node.outside)]
            {
                let port = format!("n{}-{side}", node.id);
                crate::run(Command::new("ip").args([
                    "link",
                    "add",
                    &format!("veth-{side}"),
                    "netns",
                    node.netns.name(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    segment.name(),
                ]))?;
                segment.sh(&format!(
                    "ip link set {port} master {BRIDGE}
                     ip link set {port} up"
                ))?;
                node.netns.sh(&format!(
                    "ip addr add {address}/24 dev veth-{side}
                     ip link set veth-{side} up"
                ))?;
            }
        }
        crate::run(Command::new("ip").args([
            "link",
            "add",
            SYNC_IF,
            "netns",
            nodes[0].netns.name(),
            "type",
            "veth",
            "peer",
            "name",
            SYNC_IF,
            "netns",
            nodes[1].netns.name(),
        ]))?;
        for node in &nodes {
            node.netns.sh(&format!(
                "ip addr add {}/24 dev {SYNC_IF}\nip link set {SYNC_IF} up",
                sync_address(node)
            ))?;
        }
        lan.sh(&format!("ip route add default via {INSIDE_VIP}"))?;
        Ok(HaLab {
            prefix: prefix.to_owned(),
            lan,
            wan,
            nodes,
        })
    }

    /// The other node's inside address (its VRRP and sync peer).
    pub fn peer_of(&self, node: &Node) -> Ipv4Addr {
        self.nodes
            .iter()
            .find(|other| other.id != node.id)
            .map_or(node.inside, |other| other.inside)
    }

    /// A gateway config for `node`: masquerade of the inside network behind the public
    /// virtual address, TC on both veths, and `[ha]` with the other node as peer.
    pub fn gateway_config(&self, node: &Node) -> String {
        format!(
            "[interfaces]\ninside = \"{INSIDE_IF}\"\noutside = \"{OUTSIDE_IF}\"\n\n\
             [dataplane]\nhook = \"tc\"\n\n\
             [masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"{PUBLIC_VIP}\"]\n\n\
             [ha]\nnode_id = {id}\npeer = \"{peer}\"\n",
            id = node.id,
            peer = self.peer_of(node),
        )
    }

    /// As [`HaLab::gateway_config`], with the state sync: the peer is the other node's
    /// address on the sync link, the shared key in `key_file`.
    pub fn synced_gateway_config(&self, node: &Node, key_file: &Path) -> String {
        let peer = self
            .nodes
            .iter()
            .find(|other| other.id != node.id)
            .map_or(sync_address(node), sync_address);
        let own_peer = format!("peer = \"{}\"", self.peer_of(node));
        self.gateway_config(node).replace(
            &own_peer,
            &format!("peer = \"{peer}\"\nkey_file = \"{}\"", key_file.display()),
        )
    }

    /// keepalived's config for `node`, as the packaged example has it (one sync group of
    /// the inside and outside instances, both BACKUP with nopreempt, unicast VRRP, one
    /// notify script for the group), with `priority` and `notify` (the command line of the
    /// notify script, to which keepalived appends its four arguments).
    pub fn keepalived_config(&self, node: &Node, priority: u8, notify: &str) -> String {
        let peer_outside = self
            .nodes
            .iter()
            .find(|other| other.id != node.id)
            .map_or(node.outside, |other| other.outside);
        let instance = |name: &str, interface: &str, router_id: u8, own, peer, vip| {
            format!(
                "vrrp_instance {name} {{
    state BACKUP
    nopreempt
    interface {interface}
    virtual_router_id {router_id}
    priority {priority}
    advert_int 1
    unicast_src_ip {own}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {vip}/24 dev {interface}
    }}
}}
"
            )
        };
        format!(
            "global_defs {{
    router_id {prefix}-gw{id}
    script_user root
}}

vrrp_sync_group gateway {{
    group {{
        inside
        outside
    }}
    notify \"{notify}\"
}}

{inside}
{outside}",
            prefix = self.prefix,
            id = node.id,
            inside = instance(
                "inside",
                INSIDE_IF,
                51,
                node.inside,
                self.peer_of(node),
                INSIDE_VIP
            ),
            outside = instance(
                "outside",
                OUTSIDE_IF,
                52,
                node.outside,
                peer_outside,
                PUBLIC_VIP
            ),
        )
    }
}

impl HaLab {
    /// keepalived for `node` with [`HaLab::keepalived_config`], its notify hook the packaged
    /// script telling `gateway` (over its management socket) the node's role; its files in
    /// a directory of `dir` named after the node and priority.
    pub fn start_keepalived(
        &self,
        node: &Node,
        gateway: &crate::gateway::GatewayProcess,
        priority: u8,
        dir: &Path,
    ) -> anyhow::Result<Keepalived> {
        let notify = format!(
            "{} {} {}",
            notify_script().display(),
            gateway.socket().display(),
            crate::gateway::binary()?.display()
        );
        Keepalived::start(
            &node.netns,
            &dir.join(format!("gw{}-{}", node.id, priority)),
            &self.keepalived_config(node, priority, &notify),
        )
    }
}

impl HaLab {
    /// A machine's death for `node`: its links go down at once (silent, as a dead machine's
    /// are; the caller then kills its agent and keepalived). The outside link first: while
    /// the outside is still up and the inside already down, a packet from outside to the
    /// public address is translated, finds no route inside and goes to the node's stack
    /// untranslated, whose answer to a public address without a socket is a reset that kills
    /// the flow (a stream sees that window every time). In this order the inside's packets
    /// meanwhile find no route out and get an ICMP unreachable, which TCP takes as a soft
    /// error.
    pub fn cut_links(&self, node: &Node) -> anyhow::Result<()> {
        node.netns
            .sh(&format!(
                "ip link set {OUTSIDE_IF} down\nip link set {INSIDE_IF} down\nip link set {SYNC_IF} down"
            ))
            .map(drop)
    }

    /// `node` comes back as after a reboot: the virtual addresses a killed keepalived left
    /// on its interfaces are gone (a rebooted machine has only its own), and its links are
    /// up again.
    pub fn bring_back(&self, node: &Node) -> anyhow::Result<()> {
        for (vip, interface) in [(INSIDE_VIP, INSIDE_IF), (PUBLIC_VIP, OUTSIDE_IF)] {
            let held = node
                .netns
                .sh(&format!("ip -4 -o addr show dev {interface}"))?;
            if held.contains(&format!(" {vip}/")) {
                node.netns
                    .sh(&format!("ip addr del {vip}/24 dev {interface}"))?;
            }
        }
        node.netns
            .sh(&format!(
                "ip link set {INSIDE_IF} up\nip link set {OUTSIDE_IF} up\nip link set {SYNC_IF} up"
            ))
            .map(drop)
    }

    /// Asserts that the inside and outside hosts counted no checksum errors: what the
    /// gateways translated arrived with its checksums right.
    pub fn assert_checksums(&self) {
        for host in [&self.lan, &self.wan] {
            for (counter, value) in host.checksum_error_counters() {
                assert_eq!(value, 0, "{}: {counter}", host.name());
            }
        }
    }

    /// The `forwarding` sysctl of `node`'s two served interfaces, as its kernel has them.
    pub fn forwarding(&self, node: &Node) -> anyhow::Result<[bool; 2]> {
        let read = |interface: &str| -> anyhow::Result<bool> {
            let value = node.netns.sh(&format!(
                "cat /proc/sys/net/ipv4/conf/{interface}/forwarding"
            ))?;
            Ok(value.trim() == "1")
        };
        Ok([read(INSIDE_IF)?, read(OUTSIDE_IF)?])
    }
}

/// The packaged notify script (packaging/gateway-ha-notify).
pub fn notify_script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/gateway-ha-notify"
    ))
}

/// A node's address on the sync link.
pub fn sync_address(node: &Node) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 77, node.id)
}

/// keepalived running in the foreground in a namespace, its config, pid files and log in
/// `dir`; killed (its whole process group: the parent and its VRRP child) on drop.
pub struct Keepalived {
    child: Option<Child>,
    log: PathBuf,
}

impl Keepalived {
    pub fn start(netns: &Netns, dir: &Path, config: &str) -> anyhow::Result<Keepalived> {
        use std::os::unix::process::CommandExt as _;
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("keepalived.conf");
        std::fs::write(&config_path, config)?;
        let log = dir.join("keepalived.log");
        let output = std::fs::File::create(&log)?;
        let path = |name: &str| dir.join(name).display().to_string();
        let mut command = netns.command("keepalived");
        command
            .args([
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--no-syslog",
                "--vrrp",
            ])
            .args(["--use-file", &config_path.display().to_string()])
            .args(["--pid", &path("keepalived.pid")])
            .args(["--vrrp_pid", &path("vrrp.pid")])
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            // Its own group, so that one signal reaches the VRRP child too.
            .process_group(0);
        let child = command.spawn().with_context(|| {
            format!("spawn {command:?} (cargo xtask setup installs keepalived)")
        })?;
        Ok(Keepalived {
            child: Some(child),
            log,
        })
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log contains `line`.
    pub fn wait_for_log(&self, line: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(line) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "keepalived did not log {line:?} within {timeout:?}; its log:\n{}",
            self.log()
        )
    }

    /// SIGTERM, as `systemctl stop keepalived` sends it: keepalived gives the addresses up,
    /// tells the peer (a priority 0 advert, so it takes over at once) and runs the notify
    /// script with `STOP`; waits for it to exit (SIGKILL to the group after 10 s).
    pub fn stop_gracefully(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("keepalived already stopped");
        };
        // SAFETY: signalling our own child (the parent, which stops its VRRP child).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above, the whole group.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        bail!(
            "keepalived did not stop within 10 s of SIGTERM; its log:\n{}",
            self.log()
        )
    }

    /// SIGKILL to the whole group, as a machine's death would end it (the virtual addresses
    /// stay on the interfaces: nobody removes them).
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

impl HaLab {
    /// As [`HaLab::synced_gateway_config`], with the inside host's FTP server published at
    /// the public virtual address (`PUBLIC_VIP:21` to `LAN_HOST:21`, through the ALG).
    pub fn synced_ftp_gateway_config(&self, node: &Node, key_file: &Path) -> String {
        format!(
            "{}\n[[publish]]\npublic = \"{PUBLIC_VIP}:21\"\nprivate = \"{LAN_HOST}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n",
            self.synced_gateway_config(node, key_file)
        )
    }
}
