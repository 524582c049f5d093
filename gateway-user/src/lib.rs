//! The gateway agent: configuration, the host's sysctls, loading and attaching the fast path,
//! the FTP ALG's I/O shell, and the management API and metrics. The `gateway` binary in
//! `main.rs` is a thin command line over this.
//!
//! - [`agent`]: `gateway run`. Its event loop in `agent/mod.rs`; by role beside it: start-up
//!   and exit (`startup`), the ALG's I/O state (`alg`), the management API's handlers and rows
//!   (`api`), the status and counters it reports (`status`), the reload (`reload`),
//!   re-attachment of interfaces that come back (`reattach`) and the sweep (`sweep`).
//! - [`config`]: `gateway.toml`: the validated types and their parsing (`config/mod.rs`), the
//!   file's serde shape (`raw`), FTP policies (`policy`), section checks (`parse`), and
//!   [`config::Config::diff`], what a reload changes (`diff`).
//! - [`management`]: the API's requests, responses and client; `management/status.rs` the
//!   structured status and the text `gateway status` prints from its fields.
//! - [`metrics`]: the Prometheus exposition; `metrics/endpoint.rs` its HTTP side.
//! - [`ha`]: the node's role in an active/standby pair under keepalived.
//! - [`alg`], [`dataplane`], [`sysctl`], [`system`], [`capture`]: the ALG's I/O shell, the fast
//!   path's programs and maps, the host's sysctls, small system calls, pcap records.

pub mod agent;
pub mod alg;
pub mod capture;
pub mod config;
pub mod dataplane;
pub mod ha;
pub mod management;
pub mod metrics;
pub mod sysctl;
pub mod system;

/// The BPF object built from `gateway-ebpf` by build.rs, embedded so one binary ships it all.
pub static FASTPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-fastpath"));
