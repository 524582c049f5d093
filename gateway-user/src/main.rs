//! `gateway`: the agent (`run`) and its command line (`check`, and the management commands
//! that ask a running agent over its Unix socket).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use gateway_user::{
    agent::{self, RunOptions},
    config::{Config, XdpMode},
    ha::Role,
    management::{
        self, DEFAULT_SOCKET, ExpectationRow, FtpSessionRow, HaStatus, Request, SessionRow, Stats,
        Status, print_table,
    },
};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "NAT gateway with an eBPF fast path and an FTP ALG"
)]
struct Cli {
    /// Log lines as text (default) or JSON objects, one per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load the fast path, attach it to the configured interfaces and run until SIGINT or
    /// SIGTERM, then detach.
    Run {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Use XDP in this mode on both interfaces, whatever `dataplane.hook` says.
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpMode>,
        /// On a verifier rejection, print the verifier's log.
        #[arg(long)]
        verbose: bool,
        /// The management socket, instead of `[management] socket`.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// With `[dataplane] pin_path`: on exit, detach and unpin everything (default: leave
        /// the fast path running and pinned, for the next agent to adopt).
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Validate a configuration file and exit.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// The running agent: interfaces, hooks, program ids, uptime, config, policy.
    Status(Ask),
    /// Connections in the fast path's session table, or (--ftp) the ALG's control sessions.
    Sessions {
        #[command(flatten)]
        ask: Ask,
        #[arg(long)]
        ftp: bool,
        /// key=value[,key=value]: proto (tcp|udp|icmp), addr, port.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Data connections announced on FTP control connections and not opened yet.
    Expectations(Ask),
    /// Every counter: fast path outcomes and drops by reason, ALG counters, violations by check.
    Stats(Ask),
    /// Re-read the agent's config file and apply what changed, keeping every session.
    Reload(Ask),
    /// Write the FTP control packets the agent handles, as punted and as sent, to a pcap file.
    Capture {
        /// The agent's management socket.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(short = 'w', value_name = "FILE")]
        write: PathBuf,
        /// Only FTP control packets (the only ones the agent sees today; kept for scripts).
        #[arg(long)]
        ftp: bool,
        /// Stop after this many packets.
        #[arg(long, short = 'c')]
        count: Option<usize>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Tell the agent its role in an active/standby pair (`[ha]`): keepalived's notify hooks
    /// run this. A master attaches the fast path; backup and fault detach it.
    Ha {
        #[command(flatten)]
        ask: Ask,
        #[arg(value_enum)]
        role: Role,
    },
    /// Empty the session table, or (--ftp) forget the ALG's control sessions.
    Flush {
        #[command(flatten)]
        ask: Ask,
        #[arg(long)]
        ftp: bool,
    },
}

#[derive(clap::Args)]
struct Ask {
    /// The agent's management socket (`[management] socket`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the agent's answer as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let result = match cli.command {
        Command::Run {
            config,
            xdp_mode,
            verbose,
            socket,
            detach_on_exit,
        } => agent::run(&RunOptions {
            config_path: config,
            xdp_mode,
            verbose,
            socket,
            detach_on_exit,
        }),
        Command::Check { config } => Config::load(&config)
            .map(|config| {
                println!(
                    "ok: {} publish entr{}",
                    config.publish.len(),
                    if config.publish.len() == 1 {
                        "y"
                    } else {
                        "ies"
                    }
                )
            })
            .map_err(Into::into),
        Command::Status(ask) => show(&ask, Request::Status, print_status),
        Command::Sessions { ask, ftp, filter } => {
            let request = Request::Sessions { ftp, filter };
            if ftp {
                show(&ask, request, print_rows::<FtpSessionRow>)
            } else {
                show(&ask, request, print_rows::<SessionRow>)
            }
        }
        Command::Expectations(ask) => {
            show(&ask, Request::Expectations, print_rows::<ExpectationRow>)
        }
        Command::Capture {
            socket,
            write,
            ftp: _,
            count,
            duration,
        } => std::fs::File::create(&write)
            .with_context(|| format!("cannot create {}", write.display()))
            .and_then(|mut file| {
                let written = management::capture(
                    &socket,
                    &mut file,
                    count,
                    duration.map(std::time::Duration::from_secs),
                )?;
                eprintln!("{written} packets written to {}", write.display());
                Ok(())
            }),
        Command::Stats(ask) => show(&ask, Request::Stats, print_stats),
        Command::Reload(ask) => show(&ask, Request::Reload, |changes: Vec<String>| {
            for change in changes {
                println!("{change}");
            }
        }),
        Command::Ha { ask, role } => show(&ask, Request::Ha { role }, |ha: HaStatus| {
            println!("{ha}");
        }),
        Command::Flush { ask, ftp } => {
            show(&ask, Request::Flush { ftp }, |value: serde_json::Value| {
                println!("removed {}", value["removed"]);
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line that names the problem; `{:#}` joins the context chain.
            eprintln!("gateway: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Asks the agent; prints its answer as JSON or through `print`.
fn show<T: serde::de::DeserializeOwned>(
    ask: &Ask,
    request: Request,
    print: impl FnOnce(T),
) -> anyhow::Result<()> {
    let data = management::call(&ask.socket, &request)?;
    if ask.json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    print(serde_json::from_value(data).context("unexpected answer from the agent")?);
    Ok(())
}

/// The text is the status's own (written from its fields); `--json` prints the fields.
fn print_status(status: Status) {
    print!("{status}");
}

/// A row of one of the CLI's tables: its columns' headers and its cells.
trait TableRow {
    const HEADERS: &'static [&'static str];
    fn cells(self) -> Vec<String>;
}

impl TableRow for SessionRow {
    const HEADERS: &'static [&'static str] = &[
        "PROTO",
        "ORIGINAL",
        "TRANSLATED",
        "STATE",
        "IDLE",
        "PACKETS",
        "BYTES",
    ];

    fn cells(self) -> Vec<String> {
        vec![
            self.proto,
            self.original,
            self.translated,
            self.state,
            self.idle_seconds.to_string(),
            self.packets.to_string(),
            self.bytes.to_string(),
        ]
    }
}

impl TableRow for FtpSessionRow {
    const HEADERS: &'static [&'static str] = &[
        "CLIENT (SEEN AS)",
        "SERVER (SEEN AS)",
        "USER",
        "STATE",
        "PENDING",
        "AGE",
    ];

    fn cells(self) -> Vec<String> {
        vec![
            format!("{} ({})", self.client, self.client_seen),
            format!("{} ({})", self.server, self.server_seen),
            self.user,
            self.state,
            self.pending_expectations.to_string(),
            self.age_seconds.to_string(),
        ]
    }
}

impl TableRow for ExpectationRow {
    const HEADERS: &'static [&'static str] = &["KIND", "ENDPOINT", "FROM", "TO", "EXPIRES IN"];

    fn cells(self) -> Vec<String> {
        vec![
            self.kind,
            self.endpoint,
            self.peer,
            self.target,
            self.expires_in_seconds.to_string(),
        ]
    }
}

fn print_rows<R: TableRow>(rows: Vec<R>) {
    let rows: Vec<Vec<String>> = rows.into_iter().map(TableRow::cells).collect();
    print_table(R::HEADERS, &rows);
}

fn print_stats(stats: Stats) {
    let rows: Vec<Vec<String>> = stats
        .fastpath
        .into_iter()
        .map(|(name, value)| vec!["fastpath".into(), name, value.to_string()])
        .chain(
            stats
                .alg
                .into_iter()
                .map(|(name, value)| vec!["ftp".into(), name, value.to_string()]),
        )
        .collect();
    print_table(&["PART", "COUNTER", "VALUE"], &rows);
}
