//! The reference topology: a server network, the gateway, and an outside client network.
//!
//! ```text
//!  ns <p>-inside          ns <p>-router (gateway)              ns <p>-outside
//!  eth0 10.0.0.2/24 ----- veth-in 10.0.0.1/24
//!  default via 10.0.0.1   veth-out 203.0.113.1/24 ----------- eth0 203.0.113.2/24
//!                         ip_forward = 1, rp_filter = 1             203.0.113.3/24
//!                                                              no route to 10.0.0.0/24
//! ```
//!
//! The outside client has no route to the inside network, so only translated traffic gets
//! through. The router filters reverse paths strictly, as hardened routers do, so the gateway
//! must cope with that. `cargo xtask lab up` builds it with the prefix `gw`; tests build private copies
//! under unique prefixes.

use std::net::Ipv4Addr;

use crate::netns::Netns;

pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const ROUTER_INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The router's outside address, which is also the address servers are published at.
pub const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// A second outside host (an extra address of the outside namespace), for tests that need
/// two remote hosts.
pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);

/// A second inside host, on the server's network (see [`Lab::add_inside_client`]).
pub const INSIDE_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
/// The bridge that joins the inside namespace's link to the router and the second inside
/// host's, once there is one; the server's address moves onto it.
pub const INSIDE_BRIDGE: &str = "br-lan";

pub const ROUTER_INSIDE_IF: &str = "veth-in";
pub const ROUTER_OUTSIDE_IF: &str = "veth-out";
/// The one interface of each end host.
pub const HOST_IF: &str = "eth0";

pub const DEFAULT_PREFIX: &str = "gw";

/// Offload settings, which decide what kind of checksums the gateway sees and emits.
#[derive(Debug, Clone, Copy)]
pub struct LabOptions {
    /// Checksum/segmentation offload on the end hosts' veths. On: they send partial checksums
    /// and TSO super-packets, as local senders do. Off: full checksums and MTU-sized packets,
    /// as from a wire.
    pub endpoint_tx_offload: bool,
    /// Offload on the router's veths. Off makes the router's kernel finish every checksum in
    /// software from what the gateway left in the packet, so a capture at the end hosts shows
    /// real checksums that a wrong translation would break.
    pub router_tx_offload: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            endpoint_tx_offload: true,
            router_tx_offload: true,
        }
    }
}

pub struct Lab {
    pub prefix: String,
    pub inside: Netns,
    pub router: Netns,
    pub outside: Netns,
}

impl Lab {
    pub fn namespace_names(prefix: &str) -> [String; 3] {
        [
            format!("{prefix}-inside"),
            format!("{prefix}-router"),
            format!("{prefix}-outside"),
        ]
    }

    /// Builds the topology. On error, whatever was created is removed again.
    pub fn up(prefix: &str, options: LabOptions) -> anyhow::Result<Lab> {
        let [inside, router, outside] = Lab::namespace_names(prefix);
        let lab = Lab {
            prefix: prefix.to_owned(),
            inside: Netns::create(&inside)?,
            router: Netns::create(&router)?,
            outside: Netns::create(&outside)?,
        };
        // Each veth pair is created with both ends directly in their namespaces: nothing ever
        // appears in the root namespace.
        for (router_if, host) in [(ROUTER_INSIDE_IF, &inside), (ROUTER_OUTSIDE_IF, &outside)] {
            crate::run(std::process::Command::new("ip").args([
                "link", "add", router_if, "netns", &router, "type", "veth", "peer", "name",
                HOST_IF, "netns", host,
            ]))?;
        }
        lab.router.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.default.rp_filter=1
             ip addr add {ROUTER_INSIDE}/24 dev {ROUTER_INSIDE_IF}
             ip addr add {PUBLIC}/24 dev {ROUTER_OUTSIDE_IF}
             ip link set {ROUTER_INSIDE_IF} up
             ip link set {ROUTER_OUTSIDE_IF} up"
        ))?;
        lab.inside.sh(&format!(
            "ip addr add {SERVER}/24 dev {HOST_IF}
             ip link set {HOST_IF} up
             ip route add default via {ROUTER_INSIDE}"
        ))?;
        lab.outside.sh(&format!(
            "ip addr add {CLIENT}/24 dev {HOST_IF}
             ip addr add {CLIENT2}/24 dev {HOST_IF}
             ip link set {HOST_IF} up"
        ))?;
        if !options.endpoint_tx_offload {
            for host in [&lab.inside, &lab.outside] {
                host.sh(&format!("ethtool -K {HOST_IF} tx off >/dev/null"))?;
            }
        }
        if !options.router_tx_offload {
            lab.router.sh(&format!(
                "ethtool -K {ROUTER_INSIDE_IF} tx off >/dev/null
                 ethtool -K {ROUTER_OUTSIDE_IF} tx off >/dev/null"
            ))?;
        }
        Ok(lab)
    }

    /// Leaves the namespaces in place when this value is dropped (for `cargo xtask lab up`).
    pub fn keep(self) {
        let Lab {
            inside,
            router,
            outside,
            ..
        } = self;
        for netns in [inside, router, outside] {
            netns.keep();
        }
    }

    /// Removes a lab by prefix, with anything still running in it.
    pub fn down(prefix: &str) {
        for name in Lab::namespace_names(prefix) {
            Netns::delete(&name);
        }
    }

    /// Makes the end hosts' veths take frames the gateway's XDP program redirects to them.
    ///
    /// A veth delivers an XDP_REDIRECTed frame only if its peer runs NAPI for XDP: with an XDP
    /// program of its own, or GRO on. Otherwise the kernel drops the frame at transmission
    /// (kernel 6.18: the connection just times out). GRO would merge TCP segments and leave
    /// partial checksums in what the captures check, so each end host gets an XDP program
    /// that passes everything (which also leaves GRO elided). They stay attached while the
    /// returned guards live (the links are this process's file descriptors).
    pub fn accept_xdp_redirects(&self) -> anyhow::Result<Vec<std::os::fd::OwnedFd>> {
        [&self.inside, &self.outside]
            .into_iter()
            .map(|host| {
                host.spawn(|| crate::xdp_pass_link(HOST_IF))
                    .join()
                    .map_err(|_| anyhow::anyhow!("XDP attach thread panicked"))?
            })
            .collect()
    }

    /// A second inside host, `<prefix>-inside2` with [`INSIDE_CLIENT`] on its `eth0`, on the
    /// same link as the server: the inside namespace gets a bridge ([`INSIDE_BRIDGE`]) with
    /// its link to the router and one to the new host as ports, and the server's address
    /// and default route move onto the bridge. The two hosts then reach each other directly,
    /// as hosts of one LAN do, and everything else through the router: the case where a
    /// hairpinned connection's packets could go straight from host to host, past the gateway.
    /// `tx_offload` as [`LabOptions::endpoint_tx_offload`], for the new link's two ends. The
    /// returned guard deletes the host.
    pub fn add_inside_client(&self, tx_offload: bool) -> anyhow::Result<Netns> {
        let host = Netns::create(&format!("{}-inside2", self.prefix))?;
        crate::run(std::process::Command::new("ip").args([
            "link",
            "add",
            "veth-lan",
            "netns",
            self.inside.name(),
            "type",
            "veth",
            "peer",
            "name",
            HOST_IF,
            "netns",
            host.name(),
        ]))?;
        self.inside.sh(&format!(
            "ip link add {INSIDE_BRIDGE} type bridge forward_delay 0
             ip addr flush dev {HOST_IF}
             ip link set {HOST_IF} master {INSIDE_BRIDGE}
             ip link set veth-lan master {INSIDE_BRIDGE}
             ip link set veth-lan up
             ip link set {INSIDE_BRIDGE} up
             ip addr add {SERVER}/24 dev {INSIDE_BRIDGE}
             ip route add default via {ROUTER_INSIDE}"
        ))?;
        host.sh(&format!(
            "ip addr add {INSIDE_CLIENT}/24 dev {HOST_IF}
             ip link set {HOST_IF} up
             ip route add default via {ROUTER_INSIDE}"
        ))?;
        if !tx_offload {
            self.inside.sh("ethtool -K veth-lan tx off >/dev/null")?;
            host.sh(&format!("ethtool -K {HOST_IF} tx off >/dev/null"))?;
        }
        Ok(host)
    }

    pub fn exists(prefix: &str) -> bool {
        Lab::namespace_names(prefix)
            .iter()
            .any(|name| std::path::Path::new(&format!("/run/netns/{name}")).exists())
    }
}

/// A `gateway.toml` for the lab's router.
pub fn gateway_config(
    hook: &str,
    publishes: &[(std::net::SocketAddrV4, std::net::SocketAddrV4, &str)],
) -> String {
    let mut text = format!(
        "[interfaces]\ninside = \"{ROUTER_INSIDE_IF}\"\noutside = \"{ROUTER_OUTSIDE_IF}\"\n\n[dataplane]\nhook = \"{hook}\"\n"
    );
    for (public, private, protocol) in publishes {
        text.push_str(&format!(
            "\n[[publish]]\npublic = \"{public}\"\nprivate = \"{private}\"\nprotocol = \"{protocol}\"\n"
        ));
    }
    text
}
