//! Real FTP servers and clients in the lab's namespaces: vsftpd and pyftpdlib as servers,
//! curl, lftp and Python's ftplib as clients, plus two scripted peers (`tests/ftp/*.py`) that
//! split their lines across segments on purpose.
//!
//! Every transfer is checked by sha256 of what arrived against what was sent.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sha2::{Digest, Sha256};

use crate::netns::Netns;

/// Passive ports vsftpd offers: five digits, so that a public port of four digits makes a
/// `229` reply shorter.
pub const VSFTPD_PASSIVE_PORTS: (u16, u16) = (50000, 50999);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Vsftpd,
    Pyftpdlib,
}

/// A running FTP server with anonymous read access to its root and write access to `up/`.
pub struct FtpServer {
    child: Child,
    kind: ServerKind,
    root: PathBuf,
    log: PathBuf,
}

impl FtpServer {
    /// Starts `kind` in `netns` on `address:21`, serving a fresh directory.
    pub fn start(kind: ServerKind, netns: &Netns, address: Ipv4Addr) -> anyhow::Result<FtpServer> {
        FtpServer::start_with(kind, netns, address, false)
    }

    /// As [`FtpServer::start`]; `tls`: vsftpd also offers `AUTH TLS`, with a self-signed
    /// certificate made for the occasion.
    pub fn start_with(
        kind: ServerKind,
        netns: &Netns,
        address: Ipv4Addr,
        tls: bool,
    ) -> anyhow::Result<FtpServer> {
        let base = std::env::temp_dir().join(format!("{}-{kind:?}", netns.name()));
        let root = base.join("root");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(root.join("up"))?;
        set_mode(&base, 0o755)?;
        set_mode(&root, 0o755)?;
        // Anonymous uploads are written by vsftpd's unprivileged `ftp` user.
        set_mode(&root.join("up"), 0o777)?;
        let log = base.join("server.log");
        let child = match kind {
            ServerKind::Vsftpd => {
                // vsftpd insists on an empty directory to chroot its helper into.
                std::fs::create_dir_all("/var/run/vsftpd/empty")?;
                let config = base.join("vsftpd.conf");
                let mut tls_lines = String::new();
                if tls {
                    let (cert, key) = (base.join("cert.pem"), base.join("key.pem"));
                    crate::run(
                        Command::new("openssl")
                            .args([
                                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            ])
                            .args(["-subj", "/CN=gateway-test"])
                            .arg("-keyout")
                            .arg(&key)
                            .arg("-out")
                            .arg(&cert),
                    )
                    .context("make a test certificate")?;
                    tls_lines = format!(
                        "ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=NO\n\
                         force_anon_data_ssl=NO\nrequire_ssl_reuse=NO\nrsa_cert_file={}\n\
                         rsa_private_key_file={}\n",
                        cert.display(),
                        key.display()
                    );
                }
                std::fs::write(
                    &config,
                    tls_lines
                        + &format!(
                            "listen=YES\nlisten_address={address}\nbackground=NO\n\
                         anonymous_enable=YES\nno_anon_password=YES\nlocal_enable=NO\n\
                         anon_root={root}\nwrite_enable=YES\nanon_upload_enable=YES\n\
                         anon_umask=022\npasv_enable=YES\npasv_min_port={}\npasv_max_port={}\n\
                         port_enable=YES\nconnect_from_port_20=YES\nseccomp_sandbox=NO\n\
                         log_ftp_protocol=YES\nvsftpd_log_file={log}\nxferlog_enable=YES\n\
                         dual_log_enable=NO\nsyslog_enable=NO\n",
                            VSFTPD_PASSIVE_PORTS.0,
                            VSFTPD_PASSIVE_PORTS.1,
                            root = root.display(),
                            log = log.display(),
                        ),
                )?;
                netns
                    .command("vsftpd")
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(std::fs::File::create(base.join("stderr"))?))
                    .spawn()
                    .context("start vsftpd (cargo xtask setup installs it)")?
            }
            ServerKind::Pyftpdlib => netns
                .command("python3")
                .args([
                    "-m",
                    "pyftpdlib",
                    "-D",
                    "-i",
                    &address.to_string(),
                    "-p",
                    "21",
                    "-w",
                    "-d",
                ])
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&log)?))
                .spawn()
                .context("start pyftpdlib (cargo xtask setup installs it)")?,
        };
        let server = FtpServer {
            child,
            kind,
            root,
            log,
        };
        wait_listening(netns, 21, Duration::from_secs(10))
            .with_context(|| format!("{kind:?} did not start: {}", server.log()))?;
        Ok(server)
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// Puts a file in the server's root.
    pub fn put(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.root.join(name);
        std::fs::write(&path, bytes)?;
        set_mode(&path, 0o644)
    }

    /// The sha256 of an uploaded file (`up/<name>`).
    pub fn uploaded(&self, name: &str) -> anyhow::Result<[u8; 32]> {
        sha256_file(&self.root.join("up").join(name))
    }

    /// The server's own log (the FTP protocol lines it saw, for vsftpd).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // vsftpd forks a process pair per session and, with its default isolate_network,
        // moves them into network namespaces of their own, where removing the lab's
        // namespaces does not find them: end them by their (unique) config path.
        if let Some(base) = self.root.parent() {
            let _ = Command::new("pkill")
                .args(["-KILL", "-f"])
                .arg(base.join("vsftpd.conf"))
                .status();
        }
        if let Some(base) = self.root.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// Waits until something listens on TCP `port` in `netns`.
pub fn wait_listening(netns: &Netns, port: u16, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let listening = netns.sh(&format!("ss -Hltn 'sport = :{port}'"))?;
        if !listening.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port} after {limit:?}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Curl,
    Lftp,
    Ftplib,
}

/// How the data connection is opened: the server listens (`PASV`, `EPSV`) or the client does
/// (`PORT`, `EPRT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pasv,
    Epsv,
    Port,
    Eprt,
}

impl Client {
    /// The modes each client can be made to use over IPv4.
    pub fn modes(self) -> &'static [Mode] {
        match self {
            Client::Curl => &[Mode::Pasv, Mode::Epsv, Mode::Port, Mode::Eprt],
            // lftp sends EPRT only for IPv6; ftplib uses EPSV/EPRT only for IPv6.
            Client::Lftp => &[Mode::Pasv, Mode::Epsv, Mode::Port],
            Client::Ftplib => &[Mode::Pasv, Mode::Port],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Download,
    Upload,
}

/// One transfer by `client` from `netns` to the server at `server`: downloads `name` into
/// `local`, or uploads `local` as `up/<name>`. `own` is the client's own address (for
/// `PORT`/`EPRT`).
#[allow(clippy::too_many_arguments)]
pub fn transfer(
    client: Client,
    mode: Mode,
    direction: Direction,
    netns: &Netns,
    own: Ipv4Addr,
    server: SocketAddrV4,
    name: &str,
    local: &Path,
) -> anyhow::Result<()> {
    let local_text = local.to_str().context("path is not UTF-8")?;
    let mut command = match client {
        Client::Curl => {
            let mut command = netns.command("timeout");
            command.args(["60", "curl", "-sS", "--connect-timeout", "10"]);
            match mode {
                Mode::Pasv => command.args(["--ftp-pasv", "--disable-epsv"]),
                Mode::Epsv => command.args(["--ftp-pasv"]),
                Mode::Port => command.args(["--ftp-port", &own.to_string(), "--disable-eprt"]),
                Mode::Eprt => command.args(["--ftp-port", &own.to_string()]),
            };
            match direction {
                Direction::Download => command
                    .arg(format!("ftp://{server}/{name}"))
                    .args(["-o", local_text]),
                Direction::Upload => command
                    .args(["-T", local_text])
                    .arg(format!("ftp://{server}/up/{name}")),
            };
            command
        }
        Client::Lftp => {
            let settings = match mode {
                Mode::Pasv => "set ftp:passive-mode on; set ftp:prefer-epsv no",
                Mode::Epsv => "set ftp:passive-mode on; set ftp:prefer-epsv yes",
                Mode::Port | Mode::Eprt => "set ftp:passive-mode off",
            };
            let action = match direction {
                Direction::Download => format!("get {name} -o {local_text}"),
                Direction::Upload => format!("put {local_text} -o up/{name}"),
            };
            let mut command = netns.command("timeout");
            command.args([
                "60",
                "lftp",
                "-e",
                &format!(
                    "set net:max-retries 1; set net:timeout 10; set ftp:ssl-allow no; set xfer:clobber on; {settings}; {action}; bye"
                ),
                &format!("ftp://anonymous:gateway@{}:{}", server.ip(), server.port()),
            ]);
            command
        }
        Client::Ftplib => {
            let mut command = netns.command("timeout");
            command.args([
                "60",
                "python3",
                script("ftplib_client.py").to_str().context("path")?,
                &server.ip().to_string(),
                &server.port().to_string(),
                match mode {
                    Mode::Pasv => "pasv",
                    Mode::Epsv => "epsv",
                    Mode::Port | Mode::Eprt => "port",
                },
                if direction == Direction::Download {
                    "get"
                } else {
                    "put"
                },
                name,
                local_text,
            ]);
            command
        }
    };
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {client:?}"))?;
    if !output.status.success() {
        bail!(
            "{client:?} {mode:?} {direction:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(())
}

/// A helper script of the test suite (`tests/ftp/<name>`).
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ftp").join(name)
}

pub fn sha256_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(Sha256::digest(&bytes).into())
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// A scripted peer (`tests/ftp/*.py`) running in a namespace, killed when dropped.
pub struct Script {
    child: Child,
}

impl Script {
    pub fn spawn(netns: &Netns, name: &str, args: &[&str]) -> anyhow::Result<Script> {
        let child = netns
            .command("python3")
            .arg(script(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Script { child })
    }

    /// Its output if it has ended (an error if it failed), `None` while it runs.
    pub fn try_finish(&mut self) -> anyhow::Result<Option<anyhow::Result<String>>> {
        let Some(status) = self.child.try_wait()? else {
            return Ok(None);
        };
        let mut out = String::new();
        let mut err = String::new();
        use std::io::Read as _;
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        if let Some(mut s) = self.child.stderr.take() {
            s.read_to_string(&mut err)?;
        }
        Ok(Some(if status.success() {
            Ok(out)
        } else {
            Err(anyhow::anyhow!("script failed ({status}): {err}{out}"))
        }))
    }

    /// Waits for it to end; its output, or an error with it.
    pub fn finish(mut self, limit: Duration) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                let mut out = String::new();
                let mut err = String::new();
                use std::io::Read as _;
                if let Some(mut s) = self.child.stdout.take() {
                    s.read_to_string(&mut out)?;
                }
                if let Some(mut s) = self.child.stderr.take() {
                    s.read_to_string(&mut err)?;
                }
                if !status.success() {
                    bail!("script failed ({status}): {err}{out}");
                }
                return Ok(out);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                bail!("script still running after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command, returning whether it succeeded (for negative controls).
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
