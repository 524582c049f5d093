//! Loading the fast path, filling its maps, attaching it to interfaces, reading its counters.
//!
//! One file per concern: `maps` takes the typed map handles once, at load; `rules` writes
//! the config into them; `alg` is what the FTP ALG asks of them; [`sweep`] walks the session
//! tables; [`sync`] reads and writes what the HA state sync carries; [`attach`] puts the programs on interfaces; `pins` keeps maps and links on a bpffs
//! across agents.

mod alg;
pub mod attach;
mod maps;
mod pins;
mod rules;
pub mod sweep;
pub mod sync;

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    programs::{ProgramError, SchedClassifier, Xdp},
};
use gateway_common::{Counter, LAYOUT_VERSION, names};

pub use attach::{AttachedHook, Attachment};
pub use sweep::{Sweep, Sweeper};

use maps::Maps;
use pins::Pins;

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

/// Turns a map error into ours, naming the map.
fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
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
    /// The programs (the maps are taken out into `maps`).
    ebpf: Ebpf,
    maps: Maps,
    pins: Option<Pins>,
    max_sessions: u32,
    /// Entries in the session table at the last sweep.
    session_entries: usize,
    /// What changed in the synced tables, for the HA sync (off without it).
    sync_changes: sync::SyncChanges,
}

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

    /// As [`Dataplane::load`], as `options` say; with a pin directory (on a bpffs) the maps
    /// are pinned there, and maps an earlier agent pinned there are adopted, with their
    /// entries, if their layout is this agent's.
    pub fn load_with(options: &LoadOptions) -> Result<Dataplane, DataplaneError> {
        let verbose = options.verbose;
        let max_sessions = options.max_sessions;
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
        let pins = match options.pin_dir.as_deref() {
            Some(dir) => Some(Pins::prepare(dir, &mut loader)?),
            None => None,
        };
        let mut ebpf = loader
            .load(crate::FASTPATH_OBJECT)
            .map_err(DataplaneError::Object)?;
        load_program(
            program::<Xdp>(&mut ebpf, names::PROG_XDP)?,
            names::PROG_XDP,
            verbose,
        )?;
        load_program(
            program::<SchedClassifier>(&mut ebpf, names::PROG_TC)?,
            names::PROG_TC,
            verbose,
        )?;
        let mut maps = Maps::take(&mut ebpf)?;
        maps.layout
            .set(0, LAYOUT_VERSION, 0)
            .map_err(map_error(names::LAYOUT))?;
        Ok(Dataplane {
            ebpf,
            maps,
            pins,
            max_sessions,
            session_entries: 0,
            sync_changes: sync::SyncChanges::default(),
        })
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program(&mut self.ebpf, names::PROG_XDP)
    }

    pub fn tc(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        program(&mut self.ebpf, names::PROG_TC)
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
        Counter::ALL
            .iter()
            .map(|&counter| {
                let values = self
                    .maps
                    .stats
                    .get(&(counter as u32), 0)
                    .map_err(map_error(names::STATS))?;
                Ok((counter, values.iter().sum()))
            })
            .collect()
    }
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

/// A program of the object, of one kind: XDP or TC.
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
