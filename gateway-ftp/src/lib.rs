//! The FTP ALG's protocol core, sans IO (in the manner of quinn-proto and smoltcp).
//!
//! Everything here is a plain function or state machine over bytes: no sockets, no BPF maps,
//! no clocks. The agent's I/O shell feeds it what it reads from the punt ring buffer and
//! carries out what it returns. That keeps every rule unit-testable and fuzzable.
//!
//! - [`endpoints`]: where each side is, line directions, the expectations announcements ask for.
//! - [`line`](mod@line): cuts a direction's byte stream into lines, across segment boundaries.
//! - [`parse`]: reads commands and replies, and the data-connection endpoints that
//!   `PORT`/`EPRT`/`227`/`229` announce, strictly (field counts, ranges, syntax).
//! - [`rewrite`]: produces the translated line.
//! - [`seq`]: the sequence-number map of one direction once rewrites change its length, with
//!   the reverse mapping for ACK numbers and SACK blocks.
//! - [`stream`]: one direction of a control connection as segments in, rewritten segments out.
//! - [`session`]: a whole control connection as TCP: both streams, sequence numbers, windows,
//!   the segments the gateway sends in a side's name.
//! - `inspect`: the checks, announcements and protocol state each complete line goes through.

pub mod endpoints;
mod inspect;
pub mod line;
pub mod parse;
pub mod policy;
pub mod rewrite;
pub mod seq;
pub mod session;
pub mod state;
pub mod stream;
