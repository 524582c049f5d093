//! The management API's side in the agent: reading a request off the socket, answering it
//! from the maps and the ALG (as rows), and the capture stream.

use std::{net::SocketAddrV4, time::Duration};

use anyhow::{anyhow, bail};
use gateway_common::{ExpectationKind, FlowKey, Rewrite, session_state};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
    sync::mpsc,
};

use super::{Agent, Query, QueryChannel, ask};
use crate::{
    capture,
    dataplane::monotonic_now_ns,
    management::{
        ExpectationRow, Filter, FtpSessionRow, MAX_REQUEST, Request, Response, SessionRow, Stats,
    },
};

impl Agent {
    pub(super) fn handle(&mut self, request: Request) -> anyhow::Result<serde_json::Value> {
        let now = monotonic_now_ns();
        let value = match request {
            Request::Status => serde_json::to_value(self.status()?)?,
            Request::Sessions { ftp: false, filter } => {
                let filter: Filter = filter
                    .as_deref()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|why: String| anyhow!(why))?;
                let rows: Vec<SessionRow> = self
                    .dataplane
                    .sessions()?
                    .into_iter()
                    .filter_map(|(key, session)| {
                        let (original, translated) = tuples(&key, &session);
                        let proto = proto_name(key.proto);
                        filter
                            .matches(proto, &[original.0, original.1, translated.0, translated.1])
                            .then(|| SessionRow {
                                proto: proto.to_owned(),
                                original: format!("{} -> {}", original.0, original.1),
                                translated: format!("{} -> {}", translated.0, translated.1),
                                state: state_name(key.proto, session.state).to_owned(),
                                idle_seconds: now.saturating_sub(session.last_seen_ns)
                                    / 1_000_000_000,
                                packets: session.packets,
                                bytes: session.bytes,
                            })
                    })
                    .collect();
                serde_json::to_value(rows)?
            }
            Request::Sessions { ftp: true, filter } => {
                let filter: Filter = filter
                    .as_deref()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|why: String| anyhow!(why))?;
                let rows: Vec<FtpSessionRow> = self
                    .alg
                    .table
                    .connections(now)
                    .into_iter()
                    .filter(|info| {
                        filter.matches(
                            "tcp",
                            &[info.client, info.client_seen, info.server, info.server_seen],
                        )
                    })
                    .map(|info| FtpSessionRow {
                        client: info.client.to_string(),
                        client_seen: info.client_seen.to_string(),
                        server: info.server.to_string(),
                        server_seen: info.server_seen.to_string(),
                        user: info.user.unwrap_or_else(|| "-".into()),
                        state: info.phase.to_owned(),
                        pending_expectations: info
                            .expectations
                            .iter()
                            .filter(|key| self.dataplane.expectation_exists(**key).unwrap_or(false))
                            .count(),
                        age_seconds: info.age_ns / 1_000_000_000,
                        fast_path_acks: info.fast_path_acks,
                    })
                    .collect();
                serde_json::to_value(rows)?
            }
            Request::Expectations => {
                let rows: Vec<ExpectationRow> = self
                    .dataplane
                    .expectations()?
                    .into_iter()
                    .map(|(key, entry)| {
                        let kind = ExpectationKind::try_from(entry.kind);
                        ExpectationRow {
                            kind: kind.map_or("unknown", ExpectationKind::name).into(),
                            endpoint: key.endpoint.socket().to_string(),
                            peer: std::net::Ipv4Addr::from(key.peer).to_string(),
                            target: match kind {
                                Ok(ExpectationKind::Outbound) => {
                                    format!(
                                        "source {}",
                                        std::net::Ipv4Addr::from(entry.target.addr)
                                    )
                                }
                                Ok(ExpectationKind::HairpinToServer) => {
                                    format!("{} from the peer's mapping", entry.target.socket())
                                }
                                Ok(ExpectationKind::HairpinToClient) => format!(
                                    "{} from {}",
                                    entry.target.socket(),
                                    std::net::Ipv4Addr::from(entry.source)
                                ),
                                Ok(ExpectationKind::Inbound) | Err(_) => {
                                    entry.target.socket().to_string()
                                }
                            },
                            expires_in_seconds: (entry.expires_ns as i128 - now as i128)
                                .clamp(i64::MIN as i128, i64::MAX as i128)
                                as i64
                                / 1_000_000_000,
                        }
                    })
                    .collect();
                serde_json::to_value(rows)?
            }
            Request::Stats => serde_json::to_value(Stats {
                fastpath: self
                    .dataplane
                    .counters()?
                    .into_iter()
                    .map(|(counter, value)| (counter.name().to_owned(), value))
                    .collect(),
                alg: self
                    .alg_counters()
                    .into_iter()
                    .chain([(
                        "session_table_nearly_full_sweeps".to_owned(),
                        self.sweeping.table_full_sweeps,
                    )])
                    .collect(),
            })?,
            Request::Reload => serde_json::to_value(self.reload()?)?,
            Request::Flush { ftp: true } => {
                let removed = self.alg.table.flush(&mut self.dataplane);
                tracing::info!(removed, "ftp control sessions flushed");
                serde_json::json!({ "removed": removed })
            }
            // Answered by its connection's task, which streams records instead of JSON.
            Request::Capture => bail!("capture is a stream: use `gateway capture`"),
            Request::Ha { role } => serde_json::to_value(self.set_role(role)?)?,
            Request::Flush { ftp: false } => {
                let removed = self.dataplane.flush_sessions()?;
                tracing::info!(removed, "session table flushed");
                serde_json::json!({ "removed": removed })
            }
        };
        Ok(value)
    }
}

/// One management request: read it whole (the client closes its side), ask the main loop,
/// write the answer.
pub(super) async fn answer_management(mut stream: UnixStream, queries: QueryChannel) {
    let mut request = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        (&mut stream)
            .take(MAX_REQUEST as u64 + 1)
            .read_to_end(&mut request),
    )
    .await;
    let answer = match read {
        Ok(Ok(_)) if request.len() <= MAX_REQUEST => {
            match serde_json::from_slice::<Request>(&request) {
                Ok(Request::Capture) => {
                    stream_capture(stream, queries).await;
                    return;
                }
                Ok(request) => ask(&queries, Query::Api(request)).await,
                Err(err) => serde_json::to_string(&Response::Error {
                    message: format!("bad request: {err}"),
                })
                .unwrap_or_default(),
            }
        }
        _ => serde_json::to_string(&Response::Error {
            message: "request too long or not received".into(),
        })
        .unwrap_or_default(),
    };
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `gateway capture`: a pcap file header, then records until the client goes away.
async fn stream_capture(mut stream: UnixStream, queries: QueryChannel) {
    let (records, mut incoming) = mpsc::channel(4096);
    ask(&queries, Query::Capture(records)).await;
    if stream.write_all(&capture::file_header()).await.is_err() {
        return;
    }
    while let Some(record) = incoming.recv().await {
        if stream.write_all(&record).await.is_err() {
            break;
        }
    }
}

/// The original and translated (source, destination) of one session-table entry.
fn tuples(
    key: &FlowKey,
    session: &gateway_common::Session,
) -> ((SocketAddrV4, SocketAddrV4), (SocketAddrV4, SocketAddrV4)) {
    let endpoint =
        |addr: [u8; 4], port: [u8; 2]| SocketAddrV4::new(addr.into(), u16::from_be_bytes(port));
    let src = endpoint(key.src, key.src_port);
    let dst = endpoint(key.dst, key.dst_port);
    let own = endpoint(session.addr, session.port);
    let translated = match Rewrite::try_from(session.rewrite) {
        Ok(Rewrite::Source) => (own, dst),
        Ok(Rewrite::Destination) => (src, own),
        Ok(Rewrite::Both) => (own, endpoint(session.peer_addr, session.peer_port)),
        // Not a value the fast path writes: shown as it is keyed, untranslated.
        Err(_) => (src, dst),
    };
    ((src, dst), translated)
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        gateway_common::IPPROTO_TCP => "tcp",
        gateway_common::IPPROTO_UDP => "udp",
        _ => "icmp",
    }
}

fn state_name(proto: u8, state: u8) -> &'static str {
    if proto != gateway_common::IPPROTO_TCP {
        return "-";
    }
    if state & session_state::RST != 0 {
        "reset"
    } else if state & session_state::FIN != 0 {
        "closing"
    } else if state & session_state::ESTABLISHED != 0 {
        "established"
    } else {
        "syn"
    }
}
