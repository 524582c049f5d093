//! What the FTP ALG's punted packets cost the agent, counted (never timed: timings belong to
//! `cargo xtask bench`): wake-ups and send system calls beside the packets they carried, for
//! PASV + LIST sessions from parallel curl clients to a published server, with the busy-poll
//! off and on (the same lab, reloaded); an idle agent's CPU time after busy-polling; and the
//! CPU wake-up latency request (`[ftp] cpu_wakeup_latency_us`) held while the agent runs.

use std::{
    net::SocketAddrV4,
    sync::{Arc, Mutex},
    time::Duration,
};

use gateway_tests::{
    TempFile,
    capture::Capture,
    check_environment,
    ftp::{FtpServer, ServerKind},
    gateway::GatewayProcess,
    lab::{self, HOST_IF, Lab, LabOptions},
    netns::unique_prefix,
    packet::audit_checksums,
};

/// curl clients running sessions at once: enough that punts of different sessions meet.
const WORKERS: usize = 8;
/// Sessions each worker runs, one after the other.
const SESSIONS_PER_WORKER: usize = 4;

/// The published server at 203.0.113.1:21 with the ALG, and the busy-poll window.
fn config(busy_poll_us: u64) -> String {
    config_with(&format!("busy_poll_us = {busy_poll_us}"))
}

/// The published server with `ftp` as the `[ftp]` section's keys.
fn config_with(ftp: &str) -> String {
    format!(
        "[interfaces]\ninside = \"veth-in\"\noutside = \"veth-out\"\n\n[ftp]\n{ftp}\n\n[[publish]]\npublic = \"{}:21\"\nprivate = \"{}:21\"\nprotocol = \"tcp\"\nalg = \"ftp\"\n",
        lab::PUBLIC,
        lab::SERVER,
    )
}

/// The agent's I/O counters (deltas over a phase, or totals).
#[derive(Debug, Clone, Copy, Default)]
struct IoCounters {
    punted: u64,
    handled: u64,
    wakeups: u64,
    batches: u64,
    polled_batches: u64,
    send_calls: u64,
    sent: u64,
    emitted: u64,
}

impl IoCounters {
    fn now(gateway: &GatewayProcess) -> IoCounters {
        let read = |name: &str| {
            gateway
                .counter_now(name)
                .unwrap_or_else(|err| panic!("{name}: {err:#}\n{}", gateway.output()))
        };
        IoCounters {
            punted: read("punted"),
            handled: read("alg_handled"),
            wakeups: read("alg_wakeups"),
            batches: read("alg_batches"),
            polled_batches: read("alg_busy_poll_batches"),
            send_calls: read("alg_send_calls"),
            sent: read("alg_sent"),
            emitted: read("alg_emitted"),
        }
    }

    fn since(self, before: IoCounters) -> IoCounters {
        IoCounters {
            punted: self.punted - before.punted,
            handled: self.handled - before.handled,
            wakeups: self.wakeups - before.wakeups,
            batches: self.batches - before.batches,
            polled_batches: self.polled_batches - before.polled_batches,
            send_calls: self.send_calls - before.send_calls,
            sent: self.sent - before.sent,
            emitted: self.emitted - before.emitted,
        }
    }

    fn per_session(&self, sessions: usize) -> String {
        let per = |value: u64| value as f64 / sessions as f64;
        format!(
            "per session: {:.1} punted, {:.1} handled, {:.1} wake-ups, {:.1} batches ({:.1} busy-polled), {:.1} send calls for {:.1} packets sent",
            per(self.punted),
            per(self.handled),
            per(self.wakeups),
            per(self.batches),
            per(self.polled_batches),
            per(self.send_calls),
            per(self.sent),
        )
    }
}

/// `WORKERS` curl clients, `SESSIONS_PER_WORKER` PASV + LIST sessions each, from the outside
/// host to the published server; every listing must name the server's files.
fn run_sessions(lab: &Lab, gateway: &GatewayProcess) -> usize {
    let failures = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for worker in 0..WORKERS {
            let failures = failures.clone();
            scope.spawn(move || {
                for session in 0..SESSIONS_PER_WORKER {
                    let output = lab
                        .outside
                        .command("timeout")
                        .args(["60", "curl", "-sS", "--connect-timeout", "10"])
                        .args(["--ftp-pasv", "--disable-epsv"])
                        .arg(format!("ftp://{}/", SocketAddrV4::new(lab::PUBLIC, 21)))
                        .output()
                        .expect("run curl");
                    let listing = String::from_utf8_lossy(&output.stdout);
                    if !output.status.success() || !listing.contains("listed-1") {
                        failures.lock().unwrap().push(format!(
                            "worker {worker} session {session}: {} {listing:?} {}",
                            output.status,
                            String::from_utf8_lossy(&output.stderr).trim()
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{failures:#?}\ngateway:\n{}",
        gateway.output()
    );
    WORKERS * SESSIONS_PER_WORKER
}

struct Setup {
    lab: Lab,
    gateway: GatewayProcess,
    config: TempFile,
}

impl Setup {
    fn new(busy_poll_us: u64) -> Setup {
        Setup::with_config(&config(busy_poll_us))
    }

    fn with_config(text: &str) -> Setup {
        check_environment().expect("environment");
        let prefix = unique_prefix();
        // Wire-like packets (no offload anywhere): every checksum a host receives is a real one.
        let lab = Lab::up(
            &prefix,
            LabOptions {
                endpoint_tx_offload: false,
                router_tx_offload: false,
            },
        )
        .expect("lab up");
        let config = TempFile::write(&format!("{prefix}-gateway.toml"), text);
        let gateway = GatewayProcess::start(&lab.router, &config.0, &[]).expect("start gateway");
        Setup {
            lab,
            gateway,
            config,
        }
    }

    /// Writes a new busy-poll window into the config and has the agent reload it.
    fn reload(&self, busy_poll_us: u64) {
        self.reload_config(&config(busy_poll_us));
    }

    fn reload_config(&self, text: &str) {
        std::fs::write(&self.config.0, text).expect("rewrite config");
        self.gateway
            .ask(&["reload"])
            .unwrap_or_else(|err| panic!("reload: {err:#}\n{}", self.gateway.output()));
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Stopped before the lab (dropped after) deletes its namespaces.
        let _ = self.gateway.stop();
        let _ = std::fs::remove_file(&self.config.0);
    }
}

/// With the busy-poll off, a wake-up still takes every punt queued and the packets of a
/// batch leave in one `sendmmsg`: fewer wake-ups than packets taken, fewer send calls than
/// packets sent. With it on (reloaded), batches are also found without sleeping. Checksums
/// are audited at both ends, and no control packet is lost on the way.
#[test]
fn parallel_sessions_cost_fewer_wakeups_and_send_calls_than_packets() {
    let mut setup = Setup::new(0);
    let server =
        FtpServer::start(ServerKind::Pyftpdlib, &setup.lab.inside, lab::SERVER).expect("server");
    for n in 1..=3 {
        server
            .put(&format!("listed-{n}"), b"listed")
            .expect("put file");
    }
    let server_capture = Capture::start(&setup.lab.inside, HOST_IF).expect("capture");
    let client_capture = Capture::start(&setup.lab.outside, HOST_IF).expect("capture");

    let start = IoCounters::now(&setup.gateway);
    let sessions = run_sessions(&setup.lab, &setup.gateway);
    let off = IoCounters::now(&setup.gateway).since(start);
    setup.reload(50);
    let reloaded = IoCounters::now(&setup.gateway);
    let sessions_on = run_sessions(&setup.lab, &setup.gateway);
    let on = IoCounters::now(&setup.gateway).since(reloaded);
    eprintln!(
        "busy_poll_us = 0:   {off:?}\n  {}",
        off.per_session(sessions)
    );
    eprintln!(
        "busy_poll_us = 50:  {on:?}\n  {}",
        on.per_session(sessions_on)
    );

    for (phase, counters) in [("busy-poll off", off), ("busy-poll on", on)] {
        let context = format!("{phase}: {counters:?}\n{}", setup.gateway.output());
        // Punts were handled, and what the ALG produced left (resends besides).
        assert!(counters.handled > 0, "{context}");
        assert!(counters.sent >= counters.emitted, "{context}");
        // At most one send call per batch (no send failed), one wake-up or busy-poll hit
        // per batch at least.
        assert!(counters.send_calls <= counters.batches, "{context}");
        assert!(
            counters.batches <= counters.wakeups + counters.polled_batches,
            "{context}"
        );
        // What batching gives, with sessions in parallel.
        assert!(counters.send_calls < counters.sent, "{context}");
        assert!(
            counters.wakeups + counters.polled_batches < counters.handled,
            "{context}"
        );
    }
    assert_eq!(off.polled_batches, 0, "busy-poll off: {off:?}");
    assert!(on.polled_batches > 0, "busy-poll on: {on:?}");

    let output = {
        setup.gateway.stop().expect("stop gateway");
        setup.gateway.output()
    };
    for counter in [
        "alg_send_failed",
        "alg_undecodable",
        "alg_drop_malformed",
        "drop_punt_failed",
    ] {
        assert_eq!(
            setup.gateway.final_counter(counter),
            0,
            "{counter}\n{output}"
        );
    }
    for (side, frames) in [
        ("server", server_capture.finish().expect("server capture")),
        ("client", client_capture.finish().expect("client capture")),
    ] {
        let audit = audit_checksums(frames.iter());
        assert!(
            audit.checked > 100,
            "{side}: {} frames checked",
            audit.checked
        );
        assert!(audit.bad.is_empty(), "{side}: {:?}", audit.bad);
    }
    for netns in [&setup.lab.inside, &setup.lab.outside] {
        for (counter, value) in netns.checksum_error_counters() {
            assert_eq!(value, 0, "{}: {counter}", netns.name());
        }
    }
}

/// The busy-poll spins only while punts keep coming: after sessions with the longest window,
/// the agent idles in epoll, its CPU time over an idle second (`/proc/<pid>/stat`, user and
/// system, every thread) a few clock ticks at most where a spinning agent would take them all.
#[test]
fn an_idle_agent_does_not_spin() {
    let setup = Setup::new(1000);
    let server =
        FtpServer::start(ServerKind::Pyftpdlib, &setup.lab.inside, lab::SERVER).expect("server");
    server.put("listed-1", b"listed").expect("put file");
    let server_capture = Capture::start(&setup.lab.inside, HOST_IF).expect("capture");
    run_sessions(&setup.lab, &setup.gateway);
    let polled = setup
        .gateway
        .counter_now("alg_busy_poll_idle_ns")
        .expect("counter");
    assert!(
        polled > 0,
        "the busy-poll never ran\n{}",
        setup.gateway.output()
    );

    let pid = setup.gateway.pid();
    // Whatever the sessions left behind (closing handshakes, the server's last ACKs) settles.
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let after = cpu_ticks(pid);
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        after - before <= per_second / 20,
        "the idle agent used {} of {per_second} clock ticks in a second\n{}",
        after - before,
        setup.gateway.output()
    );

    let audit = audit_checksums(server_capture.finish().expect("capture").iter());
    assert!(audit.checked > 10, "{} frames checked", audit.checked);
    assert!(audit.bad.is_empty(), "{:?}", audit.bad);
}

/// utime + stime of a process, in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`,
/// counted after the command's closing parenthesis).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the ')': state is field 3, utime field 14, stime field 15.
    let field = |n: usize| -> u64 {
        fields
            .get(n - 3)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("field {n} of {stat}"))
    };
    field(14) + field(15)
}

/// `[ftp] cpu_wakeup_latency_us`: the kernel's CPU latency limit (all requests together) is
/// the agent's value while it runs, follows a reload, goes back when the key goes, and goes
/// back when the agent is killed (the kernel withdraws a dead process's request: nothing is
/// left on the host).
#[test]
fn the_cpu_wakeup_latency_request_lives_with_the_agent() {
    use gateway_user::system::cpu_latency_limit;
    let before = cpu_latency_limit().expect("read /dev/cpu_dma_latency");
    assert!(before > 11, "another request holds the CPUs at {before} us");
    let held = |us: u32| config_with(&format!("cpu_wakeup_latency_us = {us}"));
    let mut setup = Setup::with_config(&held(7));
    assert_eq!(
        cpu_latency_limit().expect("limit"),
        7,
        "{}",
        setup.gateway.output()
    );
    setup.reload_config(&held(11));
    assert_eq!(cpu_latency_limit().expect("limit"), 11, "reloaded");
    setup.reload_config(&config(0));
    assert_eq!(
        cpu_latency_limit().expect("limit"),
        before,
        "the key removed"
    );
    setup.reload_config(&held(7));
    assert_eq!(cpu_latency_limit().expect("limit"), 7, "again");
    setup.gateway.kill_hard().expect("kill the agent");
    // What a killed agent leaves of its own: the record of the sysctls it set (in the lab's
    // namespace, which goes with the lab).
    let _ = std::fs::remove_file(gateway_user::sysctl::record_path(setup.gateway.socket()));
    assert_eq!(
        cpu_latency_limit().expect("limit"),
        before,
        "the killed agent's request stayed"
    );
}
