//! Loading the fast path, filling its maps, attaching it to interfaces, reading its counters.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{Array, DevMap, DevMapHash, HashMap, PerCpuArray, RingBuf},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
        xdp::{XdpLink, XdpLinkId, XdpMode as AyaXdpMode},
    },
};
use std::collections::HashSet;

use gateway_common::{
    Counter, Endpoint, ExpectationEntry, ExpectationKey, FlowKey, Ipv4Cidr, LAYOUT_VERSION,
    NatConfig, PeerKey, PuntReason, Rewrite, Session, control_ack::ControlAck, names,
};

use crate::{
    config::{Filtering, Forwarding, Hook, Masquerade, Publish, Timeouts, XdpMode},
    system,
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot load the BPF object")]
    Object(#[source] aya::EbpfError),
    #[error(
        "the kernel verifier rejected BPF program `{program}`: {io_error}{hint}",
        hint = if *.verbose { "" } else { " (run with --verbose for the verifier log)" }
    )]
    Verifier {
        program: &'static str,
        io_error: std::io::Error,
        verbose: bool,
        /// Printed by the caller, on its own lines, when `--verbose` is given.
        log: String,
    },
    #[error("cannot load BPF program `{program}`")]
    Load {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("BPF object has no {kind} `{name}` (built from a different gateway-ebpf?)")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("cannot update map `{map}`")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot let XDP redirect to ifindex {ifindex}")]
    RedirectPort {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("cannot make ifindex {ifindex} the punt tap (0: none)")]
    PuntTap {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("pin directory {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error(
        "the maps pinned at {path} have layout {found}, this agent uses {expected}: they cannot be adopted without misreading them; stop the agent that made them with --detach-on-exit, or remove {path} to start afresh"
    )]
    Layout {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("cannot attach {hook} to {interface}")]
    Attach {
        hook: AttachedHook,
        interface: String,
        #[source]
        source: ProgramError,
    },
}

/// The hook a program ended up on, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedHook {
    XdpNative,
    XdpGeneric,
    Tc,
}

impl fmt::Display for AttachedHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedHook::XdpNative => "xdp (native)",
            AttachedHook::XdpGeneric => "xdp (generic)",
            AttachedHook::Tc => "tc (tcx ingress)",
        })
    }
}

/// One program attached to one interface. Detached by [`Dataplane::detach`], or when the
/// `Dataplane` is dropped (the kernel also detaches when the process dies).
#[derive(Debug)]
pub struct Attachment {
    pub interface: String,
    pub hook: AttachedHook,
    link: Link,
}

#[derive(Debug)]
enum Link {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
    /// Pinned at this path: it outlives the agent unless detached.
    Pinned(PathBuf),
}

struct LinkPin {
    path: PathBuf,
    previous: Option<FdLink>,
}

/// What one [`Dataplane::sweep`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub sessions: usize,
    pub peers: usize,
    pub mappings: usize,
    pub expectations: usize,
}

impl std::ops::AddAssign for Sweep {
    fn add_assign(&mut self, other: Sweep) {
        self.sessions += other.sessions;
        self.peers += other.peers;
        self.mappings += other.mappings;
        self.expectations += other.expectations;
    }
}

/// What the sweep remembers from one run to the next.
#[derive(Debug, Default)]
pub struct Sweeper {
    unused_last_time: HashSet<Endpoint>,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// How to load the fast path.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Keep the verifier's log for errors.
    pub verbose: bool,
    /// Session-table capacity (and of the mapping tables).
    pub max_sessions: u32,
    /// Pin maps (and, when attaching, links) here; adopt what an earlier agent pinned.
    pub pin_dir: Option<PathBuf>,
    /// Size of the punt ring, bytes (a power of two); `None`: the object's default.
    pub punt_ring_bytes: Option<u32>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            verbose: false,
            max_sessions: gateway_common::DEFAULT_MAX_SESSIONS,
            pin_dir: None,
            punt_ring_bytes: None,
        }
    }
}

/// The loaded fast path: both programs verified and loaded, maps created.
pub struct Dataplane {
    ebpf: Ebpf,
    pins: Option<Pins>,
    max_sessions: u32,
    /// Entries in the session table at the last sweep.
    session_entries: usize,
}

/// `[dataplane] pin_path`: maps pinned under `<dir>/maps/<NAME>`, links under
/// `<dir>/links/<interface>`, so that the fast path outlives the agent and the next agent
/// adopts it.
struct Pins {
    dir: PathBuf,
    /// The maps were already there (left by an earlier agent) and were adopted.
    adopted: bool,
}

/// A link conversion's error, as the program error the attach reports.
fn link_error(err: impl fmt::Display) -> ProgramError {
    ProgramError::IOError(std::io::Error::other(err.to_string()))
}

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

impl Dataplane {
    /// Loads the embedded object and both programs, with session tables of `max_sessions`
    /// entries. `verbose` keeps the verifier's log.
    pub fn load(verbose: bool, max_sessions: u32) -> Result<Dataplane, DataplaneError> {
        Dataplane::load_with(&LoadOptions {
            verbose,
            max_sessions,
            ..LoadOptions::default()
        })
    }

    pub fn load_with(options: &LoadOptions) -> Result<Dataplane, DataplaneError> {
        Dataplane::load_object(crate::FASTPATH_OBJECT, options)
    }

    /// As [`Dataplane::load`], with the maps pinned under `pin_dir` (on a bpffs): maps an
    /// earlier agent pinned there are adopted, with their entries, if their layout is this
    /// agent's.
    pub fn load_pinned(
        verbose: bool,
        max_sessions: u32,
        pin_dir: &Path,
    ) -> Result<Dataplane, DataplaneError> {
        Dataplane::load_with(&LoadOptions {
            verbose,
            max_sessions,
            pin_dir: Some(pin_dir.to_owned()),
            ..LoadOptions::default()
        })
    }

    pub fn load_object(object: &[u8], options: &LoadOptions) -> Result<Dataplane, DataplaneError> {
        let verbose = options.verbose;
        let max_sessions = options.max_sessions;
        let pin_dir = options.pin_dir.as_deref();
        let level = if verbose {
            VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS
        } else {
            VerifierLogLevel::default()
        };
        let mut loader = EbpfLoader::new();
        loader
            .verifier_log_level(level)
            .map_max_entries(names::SESSIONS, max_sessions)
            .map_max_entries(names::MASQ_BY_PRIVATE, max_sessions)
            .map_max_entries(names::MASQ_BY_PUBLIC, max_sessions)
            .map_max_entries(names::MASQ_PEERS, max_sessions);
        if let Some(bytes) = options.punt_ring_bytes {
            // A ring buffer's "max entries" is its size in bytes.
            loader.map_max_entries(names::PUNT, bytes);
        }
        let pins = match pin_dir {
            Some(dir) => {
                let adopted = prepare_pin_dir(dir)?;
                for name in names::ALL_MAPS {
                    loader.map_pin_path(name, dir.join("maps").join(name));
                }
                Some(Pins {
                    dir: dir.to_owned(),
                    adopted,
                })
            }
            None => None,
        };
        let ebpf = loader.load(object).map_err(DataplaneError::Object)?;
        let mut dataplane = Dataplane {
            ebpf,
            pins,
            max_sessions,
            session_entries: 0,
        };
        load_program(dataplane.xdp()?, names::PROG_XDP, verbose)?;
        load_program(dataplane.tc()?, names::PROG_TC, verbose)?;
        let map_name = names::LAYOUT;
        let mut layout: Array<_, u32> =
            Array::try_from(dataplane.map_mut(map_name)?).map_err(map_error(map_name))?;
        layout
            .set(0, LAYOUT_VERSION, 0)
            .map_err(map_error(map_name))?;
        Ok(dataplane)
    }

    /// Removes the maps' pins (a clean exit with pinning): the next agent starts afresh.
    pub fn unpin_maps(&mut self) -> std::io::Result<()> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        for name in names::ALL_MAPS {
            match std::fs::remove_file(pins.dir.join("maps").join(name)) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Session-table entries at the last sweep, and the table's capacity.
    pub fn session_occupancy(&self) -> (usize, u32) {
        (self.session_entries, self.max_sessions)
    }

    /// Whether the maps were adopted from an earlier agent's pins.
    pub fn adopted(&self) -> bool {
        self.pins.as_ref().is_some_and(|pins| pins.adopted)
    }

    /// Where the maps and links are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(|pins| pins.dir.as_path())
    }

    /// Empties the published-server maps (an adopted fast path may hold publishes the new
    /// config no longer has).
    pub fn clear_publishes(&mut self) -> Result<(), DataplaneError> {
        for map_name in [names::PUBLISH_DNAT, names::PUBLISH_SNAT] {
            let mut map: HashMap<_, Endpoint, Endpoint> =
                HashMap::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
            let keys: Vec<Endpoint> = map.keys().flatten().collect();
            for key in keys {
                let _ = map.remove(&key);
            }
        }
        let map_name = names::PUNT_ENDPOINTS;
        let mut map: HashMap<_, Endpoint, u8> =
            HashMap::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
        let keys: Vec<Endpoint> = map.keys().flatten().collect();
        for key in keys {
            let _ = map.remove(&key);
        }
        Ok(())
    }

    /// The loaded object, for reading maps directly (tests, and later the management API).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded object, for tests and benchmarks that fill maps directly.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program(&mut self.ebpf, names::PROG_XDP)
    }

    pub fn tc(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        program(&mut self.ebpf, names::PROG_TC)
    }

    /// Installs the published servers in both directions' maps.
    pub fn publish(&mut self, publishes: &[Publish]) -> Result<(), DataplaneError> {
        for (map_name, forward) in [(names::PUBLISH_DNAT, true), (names::PUBLISH_SNAT, false)] {
            let map = self.ebpf.map_mut(map_name).ok_or(DataplaneError::Missing {
                kind: "map",
                name: map_name,
            })?;
            let mut map: HashMap<_, Endpoint, Endpoint> =
                HashMap::try_from(map).map_err(map_error(map_name))?;
            for publish in publishes {
                let public = Endpoint::from_socket(publish.public, publish.protocol.number());
                let private = Endpoint::from_socket(publish.private, publish.protocol.number());
                let (key, value) = if forward {
                    (public, private)
                } else {
                    (private, public)
                };
                map.insert(key, value, 0).map_err(map_error(map_name))?;
            }
        }
        // Control connections of published FTP servers go to the ALG, both directions.
        let map_name = names::PUNT_ENDPOINTS;
        let mut punt: HashMap<_, Endpoint, u8> =
            HashMap::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
        for publish in publishes.iter().filter(|publish| publish.alg.is_some()) {
            let proto = publish.protocol.number();
            for (endpoint, reason) in [
                (publish.public, PuntReason::PublishedFromClient),
                (publish.private, PuntReason::PublishedFromServer),
            ] {
                punt.insert(Endpoint::from_socket(endpoint, proto), reason as u8, 0)
                    .map_err(map_error(map_name))?;
            }
        }
        Ok(())
    }

    /// Writes the masquerade rule and the timeouts (no masquerade: `None`, which also turns
    /// off the session table).
    pub fn configure_nat(
        &mut self,
        masquerade: Option<&Masquerade>,
        timeouts: &Timeouts,
        forwarding: Forwarding,
        ftp_control_ports: &[u16],
    ) -> Result<(), DataplaneError> {
        let seconds = |s: u64| s.saturating_mul(1_000_000_000);
        let mut config = NatConfig {
            tcp_established_timeout_ns: seconds(timeouts.tcp_established),
            tcp_transitory_timeout_ns: seconds(timeouts.tcp_transitory),
            udp_timeout_ns: seconds(timeouts.udp),
            icmp_timeout_ns: seconds(timeouts.icmp),
            bpf_forwarding: u32::from(forwarding == Forwarding::Bpf),
            ..NatConfig::default()
        };
        if let Some(masquerade) = masquerade {
            for (slot, net) in config.networks.iter_mut().zip(&masquerade.networks) {
                *slot = Ipv4Cidr {
                    addr: net.network().octets(),
                    mask: net.netmask().octets(),
                };
            }
            for (slot, addr) in config.addresses.iter_mut().zip(&masquerade.addresses) {
                *slot = addr.octets();
            }
            config.network_count = masquerade.networks.len().min(config.networks.len()) as u32;
            config.address_count = masquerade.addresses.len().min(config.addresses.len()) as u32;
            config.port_min = *masquerade.ports.start();
            config.port_max = *masquerade.ports.end();
            config.filtering = match masquerade.filtering {
                Filtering::AddressDependent => gateway_common::Filtering::AddressDependent,
                Filtering::AddressAndPortDependent => {
                    gateway_common::Filtering::AddressAndPortDependent
                }
                Filtering::EndpointIndependent => gateway_common::Filtering::EndpointIndependent,
            } as u32;
            for (slot, port) in config.ftp_control_ports.iter_mut().zip(ftp_control_ports) {
                *slot = port.to_be_bytes();
            }
            config.ftp_control_port_count =
                ftp_control_ports.len().min(config.ftp_control_ports.len()) as u32;
        }
        let map_name = names::NAT_CONFIG;
        let map = self.ebpf.map_mut(map_name).ok_or(DataplaneError::Missing {
            kind: "map",
            name: map_name,
        })?;
        let mut array: Array<_, NatConfig> = Array::try_from(map).map_err(map_error(map_name))?;
        array.set(0, config, 0).map_err(map_error(map_name))
    }

    /// Installs an expectation for a data connection (the FTP ALG does this before it lets
    /// the line that announces the connection go on).
    pub fn expect(
        &mut self,
        key: ExpectationKey,
        entry: ExpectationEntry,
    ) -> Result<(), DataplaneError> {
        let map_name = names::EXPECTATIONS;
        let mut map: HashMap<_, ExpectationKey, ExpectationEntry> =
            HashMap::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
        map.insert(key, entry, 0).map_err(map_error(map_name))
    }

    /// Lets the programs forward the pure ACKs of one direction of an FTP control connection
    /// (`key`: its packets as they arrive) as `entry` says, instead of punting them.
    pub fn set_control_ack(
        &mut self,
        key: FlowKey,
        entry: ControlAck,
    ) -> Result<(), DataplaneError> {
        let map_name = names::CONTROL_ACKS;
        let mut map: HashMap<_, FlowKey, ControlAck> =
            HashMap::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
        map.insert(key, entry, 0).map_err(map_error(map_name))
    }

    /// The `CONTROL_ACKS` entry of one direction of a control connection, if any.
    pub fn control_ack(&self, key: FlowKey) -> Result<Option<ControlAck>, DataplaneError> {
        let map_name = names::CONTROL_ACKS;
        let map: HashMap<_, FlowKey, ControlAck> =
            HashMap::try_from(self.map(map_name)?).map_err(map_error(map_name))?;
        Ok(map.get(&key, 0).ok())
    }

    /// Whether an expectation is in the map (not used yet, not removed).
    pub fn expectation_exists(&self, key: ExpectationKey) -> Result<bool, DataplaneError> {
        let map_name = names::EXPECTATIONS;
        let map: HashMap<_, ExpectationKey, ExpectationEntry> =
            HashMap::try_from(self.map(map_name)?).map_err(map_error(map_name))?;
        Ok(map.get(&key, 0).is_ok())
    }

    /// Removes an expectation (its control connection ended); one already used is gone.
    pub fn unexpect(&mut self, key: ExpectationKey) -> Result<(), DataplaneError> {
        let map_name = names::EXPECTATIONS;
        let mut map: HashMap<_, ExpectationKey, ExpectationEntry> =
            HashMap::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
        match map.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(err) => Err(map_error(map_name)(err)),
        }
    }

    /// The live public mapping of a private endpoint, as the fast path would reuse it.
    pub fn masquerade_mapping(
        &self,
        private: Endpoint,
    ) -> Result<Option<Endpoint>, DataplaneError> {
        let by_private: HashMap<_, Endpoint, Endpoint> =
            HashMap::try_from(self.map(names::MASQ_BY_PRIVATE)?)
                .map_err(map_error(names::MASQ_BY_PRIVATE))?;
        let Ok(public) = by_private.get(&private, 0) else {
            return Ok(None);
        };
        let by_public: HashMap<_, Endpoint, Endpoint> =
            HashMap::try_from(self.map(names::MASQ_BY_PUBLIC)?)
                .map_err(map_error(names::MASQ_BY_PUBLIC))?;
        Ok((by_public.get(&public, 0).ok() == Some(private)).then_some(public))
    }

    /// Claims a public endpoint for `owner` unless it is taken (`BPF_NOEXIST`, as the fast
    /// path's own allocation does, so the two never hand out one port twice).
    pub fn claim_public(
        &mut self,
        public: Endpoint,
        owner: Endpoint,
    ) -> Result<bool, DataplaneError> {
        const BPF_NOEXIST: u64 = 1;
        let map_name = names::MASQ_BY_PUBLIC;
        let mut by_public: HashMap<_, Endpoint, Endpoint> =
            HashMap::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
        match by_public.insert(public, owner, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(err) => Err(map_error(map_name)(err)),
        }
    }

    /// Records `private`'s mapping to `public` (claimed before) for reuse by later connections.
    pub fn record_mapping(
        &mut self,
        private: Endpoint,
        public: Endpoint,
    ) -> Result<(), DataplaneError> {
        let map_name = names::MASQ_BY_PRIVATE;
        let mut by_private: HashMap<_, Endpoint, Endpoint> =
            HashMap::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
        by_private
            .insert(private, public, 0)
            .map_err(map_error(map_name))
    }

    /// Takes the punt ring buffer out of the object, for the ALG's reader.
    pub fn take_punt_ring(&mut self) -> Result<RingBuf<aya::maps::MapData>, DataplaneError> {
        let name = names::PUNT;
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(DataplaneError::Missing { kind: "map", name })?;
        RingBuf::try_from(map).map_err(map_error(name))
    }

    /// Sets the interfaces XDP may redirect translated packets to: exactly `ifindexes` (the
    /// interfaces the fast path is attached to; an interface that came back has a new index,
    /// and the old one must not stay). Packets routed anywhere else go through the stack.
    pub fn set_redirect_ports(&mut self, ifindexes: &[u32]) -> Result<(), DataplaneError> {
        let map_name = names::REDIRECT_PORTS;
        let mut ports: DevMapHash<_> =
            DevMapHash::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
        let stale: Vec<u32> = ports
            .keys()
            .flatten()
            .filter(|key| !ifindexes.contains(key))
            .collect();
        for key in stale {
            let _ = ports.remove(key);
        }
        for &ifindex in ifindexes.iter().filter(|&&ifindex| ifindex != 0) {
            ports
                .insert(ifindex, ifindex, None, 0)
                .map_err(|source| DataplaneError::RedirectPort { ifindex, source })?;
        }
        Ok(())
    }

    /// Publishes the agent's punt tap to both programs (`None`: punt into the ring). The
    /// kernel empties the slots itself when the tap is unregistered, so a tap that went away
    /// with its agent never stays a redirect target.
    pub fn set_punt_tap(&mut self, ifindex: Option<u32>) -> Result<(), DataplaneError> {
        // Index 0 empties a devmap array's slot (aya's DevMap has no delete).
        let ifindex = ifindex.unwrap_or(0);
        // TC's and XDP's: a devmap serves programs of one type (see maps.rs).
        for map_name in [names::PUNT_TAP, names::PUNT_TAP_XDP] {
            let mut tap: DevMap<_> =
                DevMap::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
            tap.set(0, ifindex, None, 0)
                .map_err(|source| DataplaneError::PuntTap { ifindex, source })?;
        }
        Ok(())
    }

    /// The ifindex TC punts to, if any (see [`Dataplane::set_punt_tap`]).
    pub fn punt_tap(&self) -> Result<Option<u32>, DataplaneError> {
        let map_name = names::PUNT_TAP;
        let tap: DevMap<_> = DevMap::try_from(self.map(map_name)?).map_err(map_error(map_name))?;
        match tap.get(0, 0) {
            Ok(value) => Ok(Some(value.if_index)),
            // An empty slot.
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(map_error(map_name)(err)),
        }
    }

    /// The interfaces XDP may redirect to (see [`Dataplane::set_redirect_ports`]).
    pub fn redirect_ports(&self) -> Result<Vec<u32>, DataplaneError> {
        let map_name = names::REDIRECT_PORTS;
        let ports: DevMapHash<_> =
            DevMapHash::try_from(self.map(map_name)?).map_err(map_error(map_name))?;
        let mut keys: Vec<u32> = ports.keys().flatten().collect();
        keys.sort_unstable();
        Ok(keys)
    }

    /// Tells the fast path which interface is which (after [`Dataplane::configure_nat`]).
    pub fn set_interface_roles(
        &mut self,
        inside_ifindex: u32,
        outside_ifindex: u32,
    ) -> Result<(), DataplaneError> {
        let map_name = names::NAT_CONFIG;
        let map = self.map_mut(map_name)?;
        let mut array: Array<_, NatConfig> = Array::try_from(map).map_err(map_error(map_name))?;
        let mut config = array.get(&0, 0).map_err(map_error(map_name))?;
        config.inside_ifindex = inside_ifindex;
        config.outside_ifindex = outside_ifindex;
        array.set(0, config, 0).map_err(map_error(map_name))
    }

    /// Attaches the fast path to `interface` on the hook that `hook` and `xdp_mode` select.
    ///
    /// `Auto` puts TC on virtual devices and native XDP on NICs; a NIC whose driver has no
    /// native XDP falls back to TC. A forced `xdp_mode` means XDP in that mode.
    pub fn attach(
        &mut self,
        interface: &str,
        hook: Hook,
        xdp_mode: Option<XdpMode>,
    ) -> Result<Attachment, DataplaneError> {
        match (hook, xdp_mode) {
            (Hook::Tc, _) => self.attach_tc(interface),
            (Hook::Xdp, mode) | (Hook::Auto, mode @ Some(_)) => {
                self.attach_xdp(interface, mode.unwrap_or(XdpMode::Native))
            }
            (Hook::Auto, None) => {
                let driver = system::driver_info(interface);
                match &driver {
                    Ok(info) if !info.is_virtual() => {
                        match self.attach_xdp(interface, XdpMode::Native) {
                            Ok(attachment) => Ok(attachment),
                            Err(err) => {
                                tracing::warn!(
                                    interface, driver = %info.driver, error = %err,
                                    "native XDP unavailable, falling back to TC"
                                );
                                self.attach_tc(interface)
                            }
                        }
                    }
                    _ => {
                        let driver = driver
                            .map(|info| info.driver)
                            .unwrap_or_else(|err| format!("unknown ({err})"));
                        tracing::debug!(interface, %driver, "virtual device: using TC");
                        self.attach_tc(interface)
                    }
                }
            }
        }
    }

    fn attach_xdp(&mut self, interface: &str, mode: XdpMode) -> Result<Attachment, DataplaneError> {
        let (flags, hook) = match mode {
            XdpMode::Native => (AyaXdpMode::Driver, AttachedHook::XdpNative),
            XdpMode::Generic => (AyaXdpMode::Skb, AttachedHook::XdpGeneric),
        };
        let attach_error = |source| DataplaneError::Attach {
            hook,
            interface: interface.to_owned(),
            source,
        };
        let Some(pin) = self.link_pin(interface, "xdp", "tc")? else {
            let link = self.xdp()?.attach(interface, flags).map_err(attach_error)?;
            return Ok(Attachment {
                interface: interface.to_owned(),
                hook,
                link: Link::Xdp(link),
            });
        };
        // An earlier agent's link: its program is replaced in place, atomically.
        let link_id = match pin.previous {
            Some(old) => {
                let link = XdpLink::try_from(old).map_err(|err| attach_error(link_error(err)))?;
                self.xdp()?.attach_to_link(link).map_err(attach_error)?
            }
            None => self.xdp()?.attach(interface, flags).map_err(attach_error)?,
        };
        let link = self.xdp()?.take_link(link_id).map_err(attach_error)?;
        let fd_link: FdLink = link
            .try_into()
            .map_err(|err| attach_error(link_error(err)))?;
        self.pin_link(fd_link, &pin.path)?;
        Ok(Attachment {
            interface: interface.to_owned(),
            hook,
            link: Link::Pinned(pin.path),
        })
    }

    fn attach_tc(&mut self, interface: &str) -> Result<Attachment, DataplaneError> {
        let hook = AttachedHook::Tc;
        let attach_error = |source| DataplaneError::Attach {
            hook,
            interface: interface.to_owned(),
            source,
        };
        // On kernels >= 6.6 aya attaches through TCX links, which need no clsact qdisc.
        let Some(pin) = self.link_pin(interface, "tc", "xdp")? else {
            let link = self
                .tc()?
                .attach(interface, TcAttachType::Ingress)
                .map_err(attach_error)?;
            return Ok(Attachment {
                interface: interface.to_owned(),
                hook,
                link: Link::Tc(link),
            });
        };
        // An earlier agent's link: its program is replaced in place, atomically.
        let link_id = match pin.previous {
            Some(old) => {
                let link = SchedClassifierLink::try_from(old)
                    .map_err(|err| attach_error(link_error(err)))?;
                self.tc()?.attach_to_link(link).map_err(attach_error)?
            }
            None => self
                .tc()?
                .attach_with_options(
                    interface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(attach_error)?,
        };
        let link = self.tc()?.take_link(link_id).map_err(attach_error)?;
        let fd_link: FdLink = link
            .try_into()
            .map_err(|err| attach_error(link_error(err)))?;
        self.pin_link(fd_link, &pin.path)?;
        Ok(Attachment {
            interface: interface.to_owned(),
            hook,
            link: Link::Pinned(pin.path),
        })
    }

    /// With pinning: where `interface`'s `kind` link is pinned, and the link an earlier agent
    /// left there (unpinned now, to be replaced). A link of the `other` kind left there (the
    /// hook changed between runs) is detached.
    fn link_pin(
        &self,
        interface: &str,
        kind: &str,
        other: &str,
    ) -> Result<Option<LinkPin>, DataplaneError> {
        let Some(pins) = &self.pins else {
            return Ok(None);
        };
        let links = pins.dir.join("links");
        let pin_error = |message: String| DataplaneError::Pin {
            path: links.clone(),
            message,
        };
        let stale = links.join(format!("{interface}-{other}"));
        if stale.exists() {
            let old = PinnedLink::from_pin(&stale)
                .map_err(|err| pin_error(format!("cannot open {}: {err}", stale.display())))?;
            // Unpinned and dropped: detached.
            drop(old.unpin().map_err(|err| pin_error(err.to_string()))?);
        }
        let path = links.join(format!("{interface}-{kind}"));
        let previous = if path.exists() {
            let old = PinnedLink::from_pin(&path)
                .map_err(|err| pin_error(format!("cannot open {}: {err}", path.display())))?;
            Some(old.unpin().map_err(|err| pin_error(err.to_string()))?)
        } else {
            None
        };
        Ok(Some(LinkPin { path, previous }))
    }

    fn pin_link(&self, link: FdLink, path: &Path) -> Result<(), DataplaneError> {
        link.pin(path).map(drop).map_err(|err| DataplaneError::Pin {
            path: path.to_owned(),
            message: format!("cannot pin the link: {err}"),
        })
    }

    /// Detaches; a pinned link is unpinned first (see [`Dataplane::leave_attached`]).
    pub fn detach(&mut self, attachment: Attachment) -> Result<(), ProgramError> {
        match attachment.link {
            Link::Pinned(path) => {
                let link = PinnedLink::from_pin(&path)
                    .map_err(|err| ProgramError::IOError(std::io::Error::other(err.to_string())))?;
                drop(link.unpin()?);
                Ok(())
            }
            Link::Xdp(link) => self
                .xdp()
                .map_err(|_| ProgramError::NotAttached)?
                .detach(link),
            Link::Tc(link) => self
                .tc()
                .map_err(|_| ProgramError::NotAttached)?
                .detach(link),
        }
    }

    /// Removes what has expired: sessions past their idle timeout (the fast path only notices
    /// when a packet looks one up), address-dependent filtering entries past the mapping
    /// timeout, and mappings no session has used in two consecutive sweeps (two, so that a
    /// mapping whose sessions the fast path is inserting right now is not taken from it).
    /// `now_ns` is CLOCK_MONOTONIC, the fast path's clock.
    ///
    /// `held`: public endpoints the FTP ALG holds (its control connections' mappings, data
    /// ports of pending expectations), which no fast-path session names yet.
    pub fn sweep(
        &mut self,
        sweeper: &mut Sweeper,
        now_ns: u64,
        held: &HashSet<Endpoint>,
    ) -> Result<Sweep, DataplaneError> {
        let config = {
            let map = self.map(names::NAT_CONFIG)?;
            let array: Array<_, NatConfig> =
                Array::try_from(map).map_err(map_error(names::NAT_CONFIG))?;
            array.get(&0, 0).map_err(map_error(names::NAT_CONFIG))?
        };
        let mut sweep = Sweep::default();
        {
            let mut expectations: HashMap<_, ExpectationKey, ExpectationEntry> =
                HashMap::try_from(self.map_mut(names::EXPECTATIONS)?)
                    .map_err(map_error(names::EXPECTATIONS))?;
            let void: Vec<ExpectationKey> = expectations
                .iter()
                .flatten()
                .filter(|(_, entry)| entry.expires_ns < now_ns)
                .map(|(key, _)| key)
                .collect();
            sweep.expectations = void
                .iter()
                .filter(|key| expectations.remove(key).is_ok())
                .count();
        }

        let mut in_use = held.clone();
        let mut expired = Vec::new();
        let mut live: usize = 0;
        {
            let sessions: HashMap<_, FlowKey, Session> =
                HashMap::try_from(self.map(names::SESSIONS)?)
                    .map_err(map_error(names::SESSIONS))?;
            // Entries may vanish under the iteration (the fast path and LRU evict): skip errors.
            for (key, session) in sessions.iter().flatten() {
                live += 1;
                let idle = now_ns.saturating_sub(session.last_seen_ns);
                if idle > config.session_timeout_ns(key.proto, session.state) {
                    expired.push(key);
                } else if Rewrite::try_from(session.rewrite) != Ok(Rewrite::Destination) {
                    // Outbound and hairpin sessions name the mapping they use.
                    in_use.insert(Endpoint::new(session.addr, session.port, key.proto));
                }
            }
        }
        {
            let mut sessions: HashMap<_, FlowKey, Session> =
                HashMap::try_from(self.map_mut(names::SESSIONS)?)
                    .map_err(map_error(names::SESSIONS))?;
            sweep.sessions = expired
                .iter()
                .filter(|key| sessions.remove(key).is_ok())
                .count();
        }
        self.session_entries = live.saturating_sub(sweep.sessions);
        {
            let mut peers: HashMap<_, PeerKey, u64> =
                HashMap::try_from(self.map_mut(names::MASQ_PEERS)?)
                    .map_err(map_error(names::MASQ_PEERS))?;
            let stale: Vec<PeerKey> = peers
                .iter()
                .flatten()
                .filter(|(peer, last_sent)| {
                    now_ns.saturating_sub(*last_sent) > config.mapping_timeout_ns(peer.public.proto)
                })
                .map(|(peer, _)| peer)
                .collect();
            sweep.peers = stale
                .iter()
                .filter(|peer| peers.remove(peer).is_ok())
                .count();
        }
        let unused: Vec<(Endpoint, Endpoint)> = {
            let by_public: HashMap<_, Endpoint, Endpoint> =
                HashMap::try_from(self.map(names::MASQ_BY_PUBLIC)?)
                    .map_err(map_error(names::MASQ_BY_PUBLIC))?;
            by_public
                .iter()
                .flatten()
                .filter(|(public, _)| !in_use.contains(public))
                .collect()
        };
        let mut unused_now = HashSet::new();
        for (public, private) in unused {
            if !sweeper.unused_last_time.contains(&public) {
                unused_now.insert(public);
                continue;
            }
            let mut by_public: HashMap<_, Endpoint, Endpoint> =
                HashMap::try_from(self.map_mut(names::MASQ_BY_PUBLIC)?)
                    .map_err(map_error(names::MASQ_BY_PUBLIC))?;
            if by_public.remove(&public).is_ok() {
                sweep.mappings += 1;
            }
            let mut by_private: HashMap<_, Endpoint, Endpoint> =
                HashMap::try_from(self.map_mut(names::MASQ_BY_PRIVATE)?)
                    .map_err(map_error(names::MASQ_BY_PRIVATE))?;
            if by_private.get(&private, 0).ok() == Some(public) {
                let _ = by_private.remove(&private);
            }
        }
        sweeper.unused_last_time = unused_now;
        Ok(sweep)
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf
            .map(name)
            .ok_or(DataplaneError::Missing { kind: "map", name })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::Missing { kind: "map", name })
    }

    /// Every session-table entry (one per direction of a connection), as the fast path holds
    /// it. Entries may come and go under the iteration; those are skipped.
    pub fn sessions(&self) -> Result<Vec<(FlowKey, Session)>, DataplaneError> {
        let sessions: HashMap<_, FlowKey, Session> =
            HashMap::try_from(self.map(names::SESSIONS)?).map_err(map_error(names::SESSIONS))?;
        Ok(sessions.iter().flatten().collect())
    }

    /// The expectations not used yet.
    pub fn expectations(&self) -> Result<Vec<(ExpectationKey, ExpectationEntry)>, DataplaneError> {
        let map: HashMap<_, ExpectationKey, ExpectationEntry> =
            HashMap::try_from(self.map(names::EXPECTATIONS)?)
                .map_err(map_error(names::EXPECTATIONS))?;
        Ok(map.iter().flatten().collect())
    }

    /// Removes every session entry (mappings and filtering entries stay, so connections that
    /// go on get their sessions back with the same public endpoints). Returns how many went.
    pub fn flush_sessions(&mut self) -> Result<usize, DataplaneError> {
        let keys: Vec<FlowKey> = self.sessions()?.into_iter().map(|(key, _)| key).collect();
        let mut sessions: HashMap<_, FlowKey, Session> =
            HashMap::try_from(self.map_mut(names::SESSIONS)?)
                .map_err(map_error(names::SESSIONS))?;
        Ok(keys
            .iter()
            .filter(|key| sessions.remove(key).is_ok())
            .count())
    }

    /// Removes published servers (the inverse of [`Dataplane::publish`]).
    pub fn unpublish(&mut self, publishes: &[Publish]) -> Result<(), DataplaneError> {
        for publish in publishes {
            let proto = publish.protocol.number();
            let public = Endpoint::from_socket(publish.public, proto);
            let private = Endpoint::from_socket(publish.private, proto);
            for (map_name, key) in [
                (names::PUBLISH_DNAT, public),
                (names::PUBLISH_SNAT, private),
            ] {
                let mut map: HashMap<_, Endpoint, Endpoint> =
                    HashMap::try_from(self.map_mut(map_name)?).map_err(map_error(map_name))?;
                let _ = map.remove(&key);
            }
            let mut punt: HashMap<_, Endpoint, u8> =
                HashMap::try_from(self.map_mut(names::PUNT_ENDPOINTS)?)
                    .map_err(map_error(names::PUNT_ENDPOINTS))?;
            let _ = punt.remove(&public);
            let _ = punt.remove(&private);
        }
        Ok(())
    }

    /// The kernel's ids of the loaded programs, by name.
    pub fn program_ids(&self) -> Vec<(String, u32)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| Some((name.to_owned(), program.info().ok()?.id())))
            .collect()
    }

    /// The fast path's counters, summed over CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DataplaneError> {
        let map = self.ebpf.map(names::STATS).ok_or(DataplaneError::Missing {
            kind: "map",
            name: names::STATS,
        })?;
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(map_error(names::STATS))?;
        Counter::ALL
            .iter()
            .map(|&counter| {
                let values = stats
                    .get(&(counter as u32), 0)
                    .map_err(map_error(names::STATS))?;
                Ok((counter, values.iter().sum()))
            })
            .collect()
    }
}

/// Turns a map error into ours, naming the map.
fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// Checks `dir` is on a bpffs and, if maps are pinned there, that they have this agent's
/// layout. Returns whether there are maps to adopt.
fn prepare_pin_dir(dir: &Path) -> Result<bool, DataplaneError> {
    let pin_error = |message: String| DataplaneError::Pin {
        path: dir.to_owned(),
        message,
    };
    for sub in ["maps", "links"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|err| pin_error(format!("cannot create {sub}/: {err}")))?;
    }
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| pin_error("path contains a NUL byte".into()))?;
    // SAFETY: statfs(2) on a NUL-terminated path into a zeroed out-parameter.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stats) } != 0 {
        return Err(pin_error(format!("{}", std::io::Error::last_os_error())));
    }
    if stats.f_type as i64 != BPF_FS_MAGIC {
        return Err(pin_error(format!(
            "not on a bpffs (mount one: mount -t bpf bpf {})",
            dir.display()
        )));
    }
    let layout_pin = dir.join("maps").join(names::LAYOUT);
    if !layout_pin.exists() {
        return Ok(false);
    }
    let data = aya::maps::MapData::from_pin(&layout_pin)
        .map_err(|err| pin_error(format!("cannot open the pinned LAYOUT map: {err}")))?;
    let map = aya::maps::Map::from_map_data(data).map_err(|err| {
        pin_error(format!(
            "pinned LAYOUT is not a map this agent knows: {err}"
        ))
    })?;
    let found = Array::<_, u32>::try_from(map)
        .ok()
        .and_then(|array| array.get(&0, 0).ok());
    if found != Some(LAYOUT_VERSION) {
        return Err(DataplaneError::Layout {
            path: dir.to_owned(),
            found: found.map_or("unreadable".into(), |version| version.to_string()),
            expected: LAYOUT_VERSION,
        });
    }
    Ok(true)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|program| program.try_into().ok())
        .ok_or(DataplaneError::Missing {
            kind: "program",
            name,
        })
}

trait Loadable {
    fn load_program(&mut self) -> Result<(), ProgramError>;
}

impl Loadable for Xdp {
    fn load_program(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

impl Loadable for SchedClassifier {
    fn load_program(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

fn load_program(
    program: &mut impl Loadable,
    name: &'static str,
    verbose: bool,
) -> Result<(), DataplaneError> {
    program.load_program().map_err(|source| match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => DataplaneError::Verifier {
            program: name,
            io_error,
            verbose,
            log: verifier_log.to_string(),
        },
        source => DataplaneError::Load {
            program: name,
            source,
        },
    })
}
