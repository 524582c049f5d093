//! The FTP ALG's I/O shell: packets punted by the fast path in, translated and rewritten
//! packets out, map entries (mappings, claimed data ports, expectations) in between.
//!
//! - [`packet`]: IPv4/TCP parsing and building, checksums;
//! - [`control`]: the control connections and their NAT, over the sans-IO `gateway-ftp` core;
//! - [`refusal`]: the RST that refuses a control connection at its SYN, and its log's limit;
//! - [`shell`]: the ring buffer reader and the map adapter;
//! - [`sender`]: the raw socket that sends, a batch per `sendmmsg`;
//! - [`tap`]: the punt tap, TC's way of handing packets over.

pub mod control;
pub mod packet;
pub mod refusal;
pub mod sender;
pub mod shell;
pub mod store;
pub mod tap;
