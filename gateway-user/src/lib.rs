//! The gateway agent: configuration, the host's sysctls, loading and attaching the fast path,
//! the FTP ALG's I/O shell, and the management API and metrics. The `gateway` binary in
//! `main.rs` is a thin command line over this.

pub mod agent;
pub mod alg;
pub mod capture;
pub mod config;
pub mod dataplane;
pub mod management;
pub mod metrics;
pub mod sysctl;
pub mod system;

/// The BPF object built from `gateway-ebpf` by build.rs, embedded so one binary ships it all.
pub static FASTPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-fastpath"));
