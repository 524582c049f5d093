//! The management API: one JSON request per connection on a Unix socket (mode 0600, so root
//! only), one JSON response back. `gateway status|sessions|expectations|stats|reload|flush`
//! are its client; the running agent ([`crate::agent`]) answers.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

mod status;

pub use status::{
    HaStatus, InterfaceStatus, MasqueradeStatus, PolicyStatus, PuntStatus, Status, SysctlsStatus,
};

/// Where the agent listens unless `[management] socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/gateway.sock";
/// Largest request the agent reads.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Sessions {
        /// The ALG's control sessions instead of the fast path's table.
        #[serde(default)]
        ftp: bool,
        /// `key=value[,key=value...]` with keys `proto`, `addr`, `port`.
        #[serde(default)]
        filter: Option<String>,
    },
    Expectations,
    Stats,
    Reload,
    Flush {
        #[serde(default)]
        ftp: bool,
    },
    /// A pcap stream of the ALG's packets (as punted and as sent) follows instead of JSON.
    Capture,
    /// keepalived's notify hook: this node's new role in its pair (`[ha]` only). Answered
    /// with the [`HaStatus`] after the change.
    Ha {
        role: crate::ha::Role,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok { data: serde_json::Value },
    Error { message: String },
}

/// One direction of a fast-path connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRow {
    pub proto: String,
    /// As the packets arrive.
    pub original: String,
    /// As they leave.
    pub translated: String,
    pub state: String,
    pub idle_seconds: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FtpSessionRow {
    pub client: String,
    pub client_seen: String,
    pub server: String,
    pub server_seen: String,
    pub user: String,
    pub state: String,
    pub pending_expectations: usize,
    pub age_seconds: u64,
    /// Which sides' pure ACKs the fast path forwards itself now (client's, server's).
    #[serde(default)]
    pub fast_path_acks: [bool; 2],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExpectationRow {
    pub kind: String,
    /// The endpoint the data connection's SYN is addressed to.
    pub endpoint: String,
    /// Its only allowed source address.
    pub peer: String,
    pub target: String,
    pub expires_in_seconds: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub fastpath: Vec<(String, u64)>,
    pub alg: Vec<(String, u64)>,
}

/// Sends `request` to the agent at `socket` and returns its data, or its error as ours.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the gateway agent at {} (is `gateway run` running, and are you root?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(&serde_json::to_vec(request)?)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .context("no answer from the agent")?;
    match serde_json::from_slice(&reply).context("the agent's answer is not JSON")? {
        Response::Ok { data } => Ok(data),
        Response::Error { message } => bail!("{message}"),
    }
}

/// Streams the agent's capture into `out` (a pcap file) until `count` packets or `duration`
/// have passed (either may be unlimited). Returns the packets written.
pub fn capture(
    socket: &Path,
    out: &mut impl std::io::Write,
    count: Option<usize>,
    duration: Option<Duration>,
) -> anyhow::Result<usize> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the gateway agent at {} (is `gateway run` running, and are you root?)",
            socket.display()
        )
    })?;
    stream.write_all(&serde_json::to_vec(&Request::Capture)?)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let deadline = duration.map(|duration| std::time::Instant::now() + duration);
    let mut read_exact = |buffer: &mut [u8]| -> anyhow::Result<bool> {
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            stream.set_read_timeout(Some(left))?;
        }
        match stream.read_exact(buffer) {
            Ok(()) => Ok(true),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                Ok(false)
            }
            Err(err) => Err(err.into()),
        }
    };
    let mut header = [0u8; 24];
    if !read_exact(&mut header)? {
        bail!("the agent sent no capture");
    }
    let (_, pcap) = pcap_file::pcap::PcapHeader::from_slice(&header)
        .map_err(|err| anyhow::anyhow!("the agent sent no pcap header: {err}"))?;
    out.write_all(&header)?;
    out.flush()?;
    let mut written = 0;
    while count.is_none_or(|count| written < count) {
        let mut record = [0u8; 16];
        if !read_exact(&mut record)? {
            break;
        }
        // Records are relayed as they come; only their captured length is needed, which
        // pcap-file reads only from a whole record (a slice), not from a stream's head.
        let kept = [record[8], record[9], record[10], record[11]];
        let kept = match pcap.endianness {
            pcap_file::Endianness::Big => u32::from_be_bytes(kept),
            pcap_file::Endianness::Little => u32::from_le_bytes(kept),
        } as usize;
        if kept > pcap.snaplen as usize {
            bail!("the agent sent a record of {kept} bytes, past the snap length");
        }
        let mut packet = vec![0u8; kept];
        if !read_exact(&mut packet)? {
            break;
        }
        out.write_all(&record)?;
        out.write_all(&packet)?;
        out.flush()?;
        written += 1;
    }
    Ok(written)
}

/// Prints rows as a table with aligned columns.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A session filter: `proto=tcp,addr=10.0.0.2,port=21`; each given key must match.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    pub proto: Option<String>,
    pub addr: Option<std::net::Ipv4Addr>,
    pub port: Option<u16>,
}

impl std::str::FromStr for Filter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut filter = Filter::default();
        for part in text.split(',').filter(|part| !part.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or(format!("filter {part:?}: expected key=value"))?;
            match key {
                "proto" if matches!(value, "tcp" | "udp" | "icmp") => {
                    filter.proto = Some(value.to_owned())
                }
                "proto" => return Err(format!("filter proto={value}: tcp, udp or icmp")),
                "addr" => {
                    filter.addr = Some(
                        value
                            .parse()
                            .map_err(|_| format!("filter addr={value}: not an IPv4 address"))?,
                    )
                }
                "port" => {
                    filter.port = Some(
                        value
                            .parse()
                            .map_err(|_| format!("filter port={value}: not a port"))?,
                    )
                }
                _ => return Err(format!("filter key {key:?}: use proto, addr or port")),
            }
        }
        Ok(filter)
    }
}

impl Filter {
    /// Whether a row with these endpoints (`a.b.c.d:port`) and protocol matches.
    pub fn matches(&self, proto: &str, endpoints: &[std::net::SocketAddrV4]) -> bool {
        self.proto.as_deref().is_none_or(|wanted| wanted == proto)
            && self
                .addr
                .is_none_or(|wanted| endpoints.iter().any(|e| *e.ip() == wanted))
            && self
                .port
                .is_none_or(|wanted| endpoints.iter().any(|e| e.port() == wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        let request = Request::Sessions {
            ftp: true,
            filter: Some("port=21".into()),
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"command":"sessions","ftp":true,"filter":"port=21"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"flush"}"#).unwrap(),
            Request::Flush { ftp: false }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"explode"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"ha","role":"master"}"#).unwrap(),
            Request::Ha {
                role: crate::ha::Role::Master
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"ha","role":"leader"}"#).is_err());
    }

    #[test]
    fn filters_parse_and_match() {
        let filter: Filter = "proto=tcp,addr=10.0.0.2,port=21".parse().unwrap();
        let server: std::net::SocketAddrV4 = "10.0.0.2:21".parse().unwrap();
        let client: std::net::SocketAddrV4 = "203.0.113.2:40000".parse().unwrap();
        assert!(filter.matches("tcp", &[client, server]));
        assert!(!filter.matches("udp", &[client, server]));
        assert!(!filter.matches("tcp", &[client]));
        assert!("port=x".parse::<Filter>().is_err());
        assert!("colour=red".parse::<Filter>().is_err());
        assert_eq!("".parse::<Filter>().unwrap(), Filter::default());
    }
}
