//! High availability with FTP: the ALG's control sessions are synced to the standby, which
//! takes them over on promotion. In the HA lab (`gateway_tests::ha_lab`), the nodes syncing
//! over their own link, the master killed (its links down, then `kill -9` of its agent and
//! keepalived) in the middle of a 200 MiB download (30 MiB in, at 50 MB/s):
//!
//! - passive mode, an outside client of the inside server published at the public virtual
//!   address: the download completes with the right sha256 (its `226` comes through the new
//!   master's ALG with the synced sequence edits), and a control session opened before the
//!   failover does PASV + LIST afterwards through the new master, its 227 rewritten to the
//!   public address;
//! - active mode (PORT), a masqueraded inside client of an outside server: the download
//!   completes with the right sha256.
//!
//! Before the failover the standby holds the sessions (`alg_sessions_held`) and its ALG acts
//! on none (`gateway sessions --ftp` is empty there).

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{
    RemoveDir,
    ftp::{self, FtpServer, Script, ServerKind},
    gateway::GatewayProcess,
    ha_lab::{HaLab, Keepalived, LAN_HOST, PUBLIC_VIP, WAN_HOST},
    ha_nodes::{
        AgentConfig, AgentFiles, lab_up, session_rows, start_agent, start_keepalived_pair,
        sync_status, wait_for_role, wait_until,
    },
    transfer::pattern,
};

const KEY: &str = "the pair's shared sync key, for the ftp failover tests\n";
const SIZE: usize = 200 << 20;
/// curl's rate: about 4 s for the 200 MiB, so that the master dies in the middle.
const RATE: &str = "50M";
/// The master dies once this much has arrived (about 0.6 s of data at [`RATE`]) and a few
/// sync walks have passed since: the data connection's sessions are on the standby.
const KILL_AT_BYTES: u64 = 30 << 20;
const KILL_SETTLE: Duration = Duration::from_millis(600);

/// A pair with the ftp-aware config, node 1 master, node 2 its synced backup.
struct Pair {
    lab: HaLab,
    gateways: [GatewayProcess; 2],
    keepalived: [Keepalived; 2],
    _files: [AgentFiles; 2],
    _dir: RemoveDir,
}

impl Pair {
    fn up(published: bool) -> Pair {
        let (lab, dir) = lab_up();
        let config = if published {
            AgentConfig::SyncedFtp(KEY)
        } else {
            AgentConfig::Synced(KEY)
        };
        let (one, one_files) = start_agent(&lab, &lab.nodes[0], config);
        let (two, two_files) = start_agent(&lab, &lab.nodes[1], config);
        let keepalived = start_keepalived_pair(&lab, [&one, &two], &dir.0);
        wait_until("the sync link up", Duration::from_secs(10), || {
            sync_status(&one)["link"] == "sending"
        });
        Pair {
            lab,
            gateways: [one, two],
            keepalived,
            _files: [one_files, two_files],
            _dir: dir,
        }
    }

    /// The standby holds at least `sessions` control sessions and its ALG acts on none.
    fn standby_holds(&self, sessions: u64) {
        let two = &self.gateways[1];
        wait_until(
            "the standby holds the control sessions",
            Duration::from_secs(10),
            || sync_status(two)["alg_sessions_held"].as_u64() >= Some(sessions),
        );
        assert_eq!(
            session_rows(two, &["--ftp"]).len(),
            0,
            "a standby's ALG acts on nothing"
        );
        assert!(session_rows(&self.gateways[0], &["--ftp"]).len() as u64 >= sessions);
        let active = sync_status(&self.gateways[0]);
        assert!(
            active["counters"]["alg_records_sent"].as_u64() >= Some(sessions)
                && active["counters"]["alg_snapshots_sent"].as_u64() >= Some(1),
            "{active}"
        );
        let standby = sync_status(two);
        assert!(
            standby["counters"]["alg_records_applied"].as_u64() >= Some(sessions),
            "{standby}"
        );
        let text = two.ask(&["status"]).expect("status");
        assert!(text.contains("ftp sessions: sent"), "{text}");
    }

    /// The master dies as a machine does: links down at once, then its agent and
    /// keepalived killed. Returns when node 2 is master.
    fn kill_master(&mut self) -> Instant {
        let died = Instant::now();
        self.lab.cut_links(&self.lab.nodes[0]).expect("links down");
        self.gateways[0].kill_hard().expect("kill -9 the agent");
        self.keepalived[0].kill_hard();
        let two = &self.gateways[1];
        wait_for_role(two, "master", Duration::from_secs(20));
        println!(
            "gw2 master {:.2} s after gw1 died",
            died.elapsed().as_secs_f64()
        );
        died
    }
}

fn stats(gateway: &GatewayProcess) -> String {
    gateway
        .ask(&["stats"])
        .unwrap_or_else(|err| err.to_string())
}

/// A curl download of `url` into `local` at [`RATE`], `extra` its mode's options; killed if
/// the test ends first.
struct Download(Child);

impl Download {
    fn running(&mut self) -> bool {
        self.0.try_wait().expect("curl").is_none()
    }

    /// Waits until `local` holds `bytes` (the data connection is open and moving).
    fn wait_for_bytes(&mut self, local: &Path, bytes: u64) {
        wait_until(
            &format!("{bytes} bytes downloaded"),
            Duration::from_secs(30),
            || std::fs::metadata(local).is_ok_and(|meta| meta.len() >= bytes),
        );
    }

    /// Waits for it to end: its stderr, or an error with it.
    fn finish(&mut self) -> Result<(), String> {
        let status = self.0.wait().expect("curl");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.0.stderr.take() {
            use std::io::Read as _;
            let _ = pipe.read_to_string(&mut stderr);
        }
        if status.success() {
            Ok(())
        } else {
            Err(format!("curl {status}: {stderr}"))
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn download(
    netns: &gateway_tests::netns::Netns,
    url: &str,
    local: &Path,
    extra: &[&str],
) -> Download {
    let child = netns
        .command("timeout")
        .args(["120", "curl", "-v", "-sS", "--connect-timeout", "10"])
        .args(["--limit-rate", RATE])
        .args(extra)
        .arg(url)
        .arg("-o")
        .arg(local)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    Download(child)
}

fn wait_for_file(path: &Path, timeout: Duration) {
    wait_until(&format!("{} written", path.display()), timeout, || {
        path.exists()
    });
}

#[test]
fn a_passive_download_and_a_control_session_survive_a_failover() {
    let mut pair = Pair::up(true);
    let prefix = pair.lab.prefix.clone();
    let server = FtpServer::start(ServerKind::Vsftpd, &pair.lab.lan, LAN_HOST).expect("vsftpd");
    let content = pattern(16, SIZE);
    server.put("big", &content).expect("put");
    let local = std::env::temp_dir().join(format!("{prefix}-big"));
    let _local = RemoveFile(local.clone());

    // A control session that waits through the failover.
    let ready = std::env::temp_dir().join(format!("{prefix}-ready"));
    let go = std::env::temp_dir().join(format!("{prefix}-go"));
    let _markers = (RemoveFile(ready.clone()), RemoveFile(go.clone()));
    let session = Script::spawn(
        &pair.lab.wan,
        "failover_session.py",
        &[
            &PUBLIC_VIP.to_string(),
            ready.to_str().unwrap(),
            go.to_str().unwrap(),
        ],
    )
    .expect("control session");
    wait_for_file(&ready, Duration::from_secs(20));

    let mut curl = download(
        &pair.lab.wan,
        &format!("ftp://{PUBLIC_VIP}/big"),
        &local,
        &["--ftp-pasv", "--disable-epsv"],
    );
    // Both control sessions (the waiting one, curl's with its 227 rewritten) on the standby.
    pair.standby_holds(2);
    curl.wait_for_bytes(&local, KILL_AT_BYTES);
    std::thread::sleep(KILL_SETTLE);
    assert!(curl.running(), "the download ended before the failover");
    pair.kill_master();
    let two = &pair.gateways[1];
    let log = two.output();
    assert!(log.contains("took over the ftp control sessions"), "{log}");
    assert_eq!(session_rows(two, &["--ftp"]).len(), 2, "{}", log);

    if let Err(err) = curl.finish() {
        panic!("{err}\n{}\n{}", two.output(), stats(two));
    }
    assert_eq!(ftp::sha256_file(&local).unwrap(), ftp::sha256(&content));

    // The session opened before the failover: PASV + LIST through the new master.
    std::fs::write(&go, "go\n").expect("go");
    let output = session
        .finish(Duration::from_secs(60))
        .expect("the session after the failover");
    let result: serde_json::Value = serde_json::from_str(&output).expect("session json");
    let public = PUBLIC_VIP.to_string().replace('.', ",");
    for phase in ["before", "after"] {
        let reply = result[phase]["reply"].as_str().unwrap_or_default();
        assert!(
            reply.starts_with("227") && reply.contains(&format!("({public},")),
            "{phase}: {result}"
        );
        assert!(
            result[phase]["listing"]
                .as_str()
                .is_some_and(|listing| listing.contains("big")),
            "{phase}: {result}"
        );
        assert!(
            result[phase]["done"]
                .as_str()
                .is_some_and(|done| done.starts_with("226")),
            "{phase}: {result}"
        );
    }
    assert!(
        result["quit"]
            .as_str()
            .is_some_and(|quit| quit.starts_with("221")),
        "{result}"
    );
    // The new master's ALG served it: the sessions are its own now.
    let counters = sync_status(two)["counters"].clone();
    assert!(
        counters["alg_records_applied"].as_u64() > Some(0),
        "{counters}"
    );
    pair.lab.assert_checksums();
}

#[test]
fn an_active_mode_download_of_a_masqueraded_client_survives_a_failover() {
    let mut pair = Pair::up(false);
    let prefix = pair.lab.prefix.clone();
    let server = FtpServer::start(ServerKind::Vsftpd, &pair.lab.wan, WAN_HOST).expect("vsftpd");
    let content = pattern(17, SIZE);
    server.put("big", &content).expect("put");
    let local = std::env::temp_dir().join(format!("{prefix}-big"));
    let _local = RemoveFile(local.clone());

    let mut curl = download(
        &pair.lab.lan,
        &format!("ftp://{WAN_HOST}/big"),
        &local,
        &["--ftp-port", &LAN_HOST.to_string(), "--disable-eprt"],
    );
    pair.standby_holds(1);
    curl.wait_for_bytes(&local, KILL_AT_BYTES);
    std::thread::sleep(KILL_SETTLE);
    assert!(curl.running(), "the download ended before the failover");
    pair.kill_master();
    let two = &pair.gateways[1];
    assert!(
        two.output().contains("took over the ftp control sessions"),
        "{}",
        two.output()
    );
    // The new master's ALG holds curl's session, translated as the old one did.
    let rows = session_rows(two, &["--ftp"]);
    assert!(
        rows.iter().any(|row| row["client"]
            .as_str()
            .is_some_and(|client| client.starts_with(&format!("{LAN_HOST}:")))
            && row["client_seen"]
                .as_str()
                .is_some_and(|seen| seen.starts_with(&format!("{PUBLIC_VIP}:")))),
        "{rows:?}"
    );
    if let Err(err) = curl.finish() {
        panic!("{err}\n{}\n{}", two.output(), stats(two));
    }
    assert_eq!(ftp::sha256_file(&local).unwrap(), ftp::sha256(&content));
    // The server saw a PORT naming the public address (rewritten by the ALG).
    let log = server.log();
    let public = PUBLIC_VIP.to_string().replace('.', ",");
    assert!(log.contains(&format!("PORT {public},")), "{log}");
    pair.lab.assert_checksums();
}

struct RemoveFile(PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
