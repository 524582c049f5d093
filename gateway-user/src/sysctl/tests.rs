use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use super::*;

/// A fake `/proc/sys/net/ipv4/conf` in a directory of its own, and the interfaces' indexes.
struct FakeHost {
    dir: PathBuf,
    ifindexes: Arc<Mutex<HashMap<String, u32>>>,
    identity: HostIdentity,
}

impl FakeHost {
    /// veth-in (ifindex 5) and veth-out (6) as a distribution leaves them: not forwarding,
    /// accept_local off, rp_filter strict by `all`; plus eth9 (7), not served.
    fn new() -> FakeHost {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gateway-sysctl-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        let host = FakeHost {
            dir,
            ifindexes: Arc::new(Mutex::new(HashMap::from([
                ("veth-in".to_owned(), 5),
                ("veth-out".to_owned(), 6),
                ("eth9".to_owned(), 7),
            ]))),
            identity: HostIdentity {
                boot_id: "boot-1".into(),
                netns: (4, 4026532000),
            },
        };
        for interface in ["all", "veth-in", "veth-out", "eth9"] {
            fs::create_dir_all(host.dir.join("conf").join(interface)).unwrap();
            host.set(interface, "forwarding", 0);
            host.set(interface, "accept_local", 0);
            host.set(interface, "rp_filter", 0);
        }
        host.set("all", "rp_filter", 1);
        host
    }

    fn host(&self) -> Host {
        let ifindexes = self.ifindexes.clone();
        Host::at(
            self.dir.join("conf"),
            Box::new(move |name| ifindexes.lock().unwrap().get(name).copied()),
            self.identity.clone(),
        )
    }

    fn record(&self) -> PathBuf {
        self.dir.join("gateway.sysctls.json")
    }

    fn set(&self, interface: &str, key: &str, value: i64) {
        fs::write(
            self.dir.join("conf").join(interface).join(key),
            format!("{value}\n"),
        )
        .unwrap();
    }

    fn get(&self, interface: &str, key: &str) -> i64 {
        fs::read_to_string(self.dir.join("conf").join(interface).join(key))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// (forwarding, accept_local, rp_filter) of an interface.
    fn triple(&self, interface: &str) -> (i64, i64, i64) {
        (
            self.get(interface, "forwarding"),
            self.get(interface, "accept_local"),
            self.get(interface, "rp_filter"),
        )
    }

    fn prepare(&self, manage: bool) -> Result<HostSettings, SysctlError> {
        HostSettings::prepare(
            self.host(),
            self.record(),
            &[("veth-in", 5), ("veth-out", 6)],
            manage,
        )
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn wrong_values_are_set_after_recording_them_and_put_back_on_restore() {
    let fake = FakeHost::new();
    let mut settings = fake.prepare(true).unwrap();
    assert!(!fake.record().exists(), "prepare changes nothing");
    assert_eq!(fake.triple("veth-in"), (0, 0, 0));
    let changes = settings.apply().unwrap();
    assert_eq!(changes.len(), 6, "{changes:?}");
    assert!(
        changes[0].starts_with("net.ipv4.conf.veth-in.forwarding 0 -> 1"),
        "{changes:?}"
    );
    for interface in ["veth-in", "veth-out"] {
        assert_eq!(fake.triple(interface), (1, 1, 2), "{interface}");
    }
    // Nothing else: not ip_forward (all), not an interface it does not serve.
    assert_eq!(fake.triple("all"), (0, 0, 1));
    assert_eq!(fake.triple("eth9"), (0, 0, 0));

    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fake.record()).unwrap()).unwrap();
    assert_eq!(record["boot_id"], "boot-1");
    assert_eq!(record["interfaces"][0]["name"], "veth-in");
    assert_eq!(record["interfaces"][0]["ifindex"], 5);
    assert_eq!(
        record["interfaces"][0]["originals"],
        serde_json::json!({"accept_local": 0, "forwarding": 0, "rp_filter": 0})
    );

    let status = settings.status();
    assert_eq!(status.len(), 6);
    assert_eq!(status[0].name, "net.ipv4.conf.veth-in.forwarding");
    assert_eq!(
        (status[0].value, status[0].original, status[0].ok),
        (Some(1), Some(0), true)
    );
    assert_eq!((status[2].value, status[2].all), (Some(2), Some(1)));

    settings.restore();
    for interface in ["veth-in", "veth-out"] {
        assert_eq!(fake.triple(interface), (0, 0, 0), "{interface}");
    }
    assert!(!fake.record().exists(), "nothing owed, nothing recorded");
}

#[test]
fn values_that_already_let_packets_through_are_left_alone() {
    let fake = FakeHost::new();
    for interface in ["veth-in", "veth-out"] {
        fake.set(interface, "forwarding", 1);
    }
    // accept_local on through all; rp_filter loose through all, strict on the interface.
    fake.set("all", "accept_local", 1);
    fake.set("all", "rp_filter", 2);
    fake.set("veth-in", "rp_filter", 1);
    let mut settings = fake.prepare(true).unwrap();
    assert_eq!(settings.apply().unwrap(), Vec::<String>::new());
    assert_eq!(fake.triple("veth-in"), (1, 0, 1));
    assert!(!fake.record().exists());
    assert!(
        settings
            .status()
            .iter()
            .all(|row| row.ok && row.original.is_none())
    );
    // And without management the same values are accepted.
    drop(settings);
    fake.prepare(false).unwrap();
}

#[test]
fn a_killed_agents_record_is_taken_over_and_its_originals_put_back() {
    let fake = FakeHost::new();
    let mut first = fake.prepare(true).unwrap();
    first.apply().unwrap();
    // kill -9: no destructor runs.
    std::mem::forget(first);
    assert_eq!(fake.triple("veth-in"), (1, 1, 2));

    let mut second = fake.prepare(true).unwrap();
    assert_eq!(
        second.apply().unwrap(),
        Vec::<String>::new(),
        "already right"
    );
    let status = second.status();
    assert_eq!(
        status[0].original,
        Some(0),
        "the first agent's original, not its 1"
    );
    assert_eq!(status[2].original, Some(0));
    second.restore();
    for interface in ["veth-in", "veth-out"] {
        assert_eq!(fake.triple(interface), (0, 0, 0), "{interface}");
    }
    assert!(!fake.record().exists());
}

#[test]
fn a_record_for_an_interface_no_longer_served_is_put_back_at_start() {
    let fake = FakeHost::new();
    let mut first = HostSettings::prepare(
        fake.host(),
        fake.record(),
        &[("eth9", 7), ("veth-out", 6)],
        true,
    )
    .unwrap();
    first.apply().unwrap();
    std::mem::forget(first);
    assert_eq!(fake.triple("eth9"), (1, 1, 2));

    let mut second = fake.prepare(true).unwrap();
    second.apply().unwrap();
    assert_eq!(fake.triple("eth9"), (0, 0, 0), "put back");
    let record = fs::read_to_string(fake.record()).unwrap();
    assert!(!record.contains("eth9"), "{record}");
    second.restore();
    assert_eq!(fake.triple("veth-out"), (0, 0, 0));
}

#[test]
fn a_record_from_another_boot_namespace_or_device_is_not_restored() {
    let fake = FakeHost::new();
    let mut first = fake.prepare(true).unwrap();
    first.apply().unwrap();
    std::mem::forget(first);
    // Another boot: the values now are not the first agent's doing.
    let mut record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fake.record()).unwrap()).unwrap();
    record["boot_id"] = "boot-0".into();
    fs::write(fake.record(), record.to_string()).unwrap();
    let second = fake.prepare(true).unwrap();
    assert!(second.status().iter().all(|row| row.original.is_none()));
    second.restore();
    assert_eq!(fake.triple("veth-in"), (1, 1, 2), "left as found");

    // The same boot, but veth-in is a new device now: only veth-out's originals count.
    let fake = FakeHost::new();
    let mut first = fake.prepare(true).unwrap();
    first.apply().unwrap();
    std::mem::forget(first);
    fake.ifindexes.lock().unwrap().insert("veth-in".into(), 15);
    let second = HostSettings::prepare(
        fake.host(),
        fake.record(),
        &[("veth-in", 15), ("veth-out", 6)],
        true,
    )
    .unwrap();
    second.restore();
    assert_eq!(fake.triple("veth-in"), (1, 1, 2));
    assert_eq!(fake.triple("veth-out"), (0, 0, 0));

    // A damaged record: nothing in it is written.
    let fake = FakeHost::new();
    fs::write(
        fake.record(),
        serde_json::json!({
            "version": 1, "boot_id": "boot-1", "netns": [4, 4026532000u64],
            "interfaces": [{"name": "veth-in", "ifindex": 5, "originals": {"forwarding": 7}}]
        })
        .to_string(),
    )
    .unwrap();
    fake.set("veth-in", "forwarding", 1);
    let second = fake.prepare(true).unwrap();
    assert!(second.status().iter().all(|row| row.original.is_none()));
    second.restore();
    assert_eq!(fake.get("veth-in", "forwarding"), 1);
}

#[test]
fn unmanaged_wrong_values_are_refused_in_one_line_and_left_alone() {
    let fake = FakeHost::new();
    fake.set("veth-out", "forwarding", 1);
    fake.set("veth-in", "accept_local", 1);
    fake.set("veth-out", "accept_local", 1);
    fake.set("all", "rp_filter", 0);
    let Err(SysctlError::Refused(line)) = fake.prepare(false) else {
        panic!("refused expected");
    };
    assert!(
        line.starts_with("net.ipv4.conf.veth-in.forwarding is 0: translated packets arriving there are not forwarded"),
        "{line}"
    );
    assert!(line.contains("manage_sysctls = false"), "{line}");
    assert!(!line.contains("veth-out"), "{line}");
    assert!(!line.contains('\n'));
    assert_eq!(fake.triple("veth-in"), (0, 1, 0), "untouched");

    // rp_filter strict through all, accept_local off: both named, with all's value.
    fake.set("veth-in", "forwarding", 1);
    fake.set("all", "rp_filter", 1);
    fake.set("veth-out", "accept_local", 0);
    let Err(SysctlError::Refused(line)) = fake.prepare(false) else {
        panic!("refused expected");
    };
    assert!(
        line.starts_with("net.ipv4.conf.veth-in.rp_filter is 0 (net.ipv4.conf.all.rp_filter = 1): strict reverse-path filtering"),
        "{line}"
    );
    assert!(
        line.contains("net.ipv4.conf.veth-out.accept_local is 0"),
        "{line}"
    );
    assert!(
        line.contains("net.ipv4.conf.veth-out.rp_filter is 0"),
        "{line}"
    );
    assert!(!fake.record().exists());
}

#[test]
fn a_recheck_sets_again_or_refuses() {
    let fake = FakeHost::new();
    fake.set("veth-in", "forwarding", 1);
    let mut settings = fake.prepare(true).unwrap();
    settings.apply().unwrap();
    assert_eq!(
        settings.status()[0].original,
        None,
        "veth-in forwarded already"
    );
    assert_eq!(settings.recheck().unwrap(), Vec::<String>::new());

    // Turned off behind the agent's back: on again, and what the operator set goes back
    // when the agent stops.
    fake.set("veth-in", "forwarding", 0);
    let fixed = settings.recheck().unwrap();
    assert_eq!(fixed.len(), 1, "{fixed:?}");
    assert!(
        fixed[0].starts_with("net.ipv4.conf.veth-in.forwarding 0 -> 1 again"),
        "{fixed:?}"
    );
    assert_eq!(fake.get("veth-in", "forwarding"), 1);
    // An original recorded at start stays the original.
    fake.set("veth-out", "forwarding", 0);
    settings.recheck().unwrap();
    assert_eq!(settings.status()[3].original, Some(0));
    settings.restore();
    assert_eq!(fake.get("veth-in", "forwarding"), 0);

    let fake = FakeHost::new();
    for interface in ["veth-in", "veth-out"] {
        fake.set(interface, "forwarding", 1);
        fake.set(interface, "accept_local", 1);
    }
    fake.set("all", "rp_filter", 2);
    let mut settings = fake.prepare(false).unwrap();
    assert_eq!(settings.apply().unwrap(), Vec::<String>::new());
    fake.set("veth-out", "forwarding", 0);
    let Err(SysctlError::Refused(line)) = settings.recheck() else {
        panic!("refused expected");
    };
    assert!(
        line.starts_with("net.ipv4.conf.veth-out.forwarding is 0:"),
        "{line}"
    );
    assert_eq!(
        fake.get("veth-out", "forwarding"),
        0,
        "not managed: untouched"
    );
}

#[test]
fn a_failed_start_puts_back_unless_a_pinned_fast_path_needs_the_values() {
    let fake = FakeHost::new();
    let mut settings = fake.prepare(true).unwrap();
    settings.apply().unwrap();
    drop(settings);
    assert_eq!(fake.triple("veth-in"), (0, 0, 0));
    assert!(!fake.record().exists());

    let mut settings = fake.prepare(true).unwrap();
    settings.keep_on_failure(true);
    settings.apply().unwrap();
    drop(settings);
    assert_eq!(fake.triple("veth-in"), (1, 1, 2));
    assert!(fake.record().exists(), "kept for the next agent");

    // The pinned restart: a clean exit that leaves the fast path, then the next agent.
    let mut next = fake.prepare(true).unwrap();
    assert_eq!(
        next.apply().unwrap(),
        Vec::<String>::new(),
        "no write: nothing breaks"
    );
    next.leave();
    assert_eq!(fake.triple("veth-in"), (1, 1, 2));
    let last = fake.prepare(true).unwrap();
    last.restore();
    assert_eq!(fake.triple("veth-in"), (0, 0, 0));
    assert!(!fake.record().exists());
}

#[test]
fn an_interface_back_as_a_new_device_is_set_again() {
    let fake = FakeHost::new();
    let mut settings = fake.prepare(true).unwrap();
    settings.apply().unwrap();
    // veth-out deleted and created again: the defaults, a new ifindex.
    fake.ifindexes.lock().unwrap().insert("veth-out".into(), 16);
    fake.set("veth-out", "forwarding", 0);
    fake.set("veth-out", "accept_local", 0);
    fake.set("veth-out", "rp_filter", 0);
    let changes = settings.interface_back("veth-out", 16).unwrap();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert_eq!(fake.triple("veth-out"), (1, 1, 2));
    // Again for the same device (its attach failed, the next check retries): what was
    // recorded for it stays.
    assert_eq!(
        settings.interface_back("veth-out", 16).unwrap(),
        Vec::<String>::new()
    );
    let record = fs::read_to_string(fake.record()).unwrap();
    assert!(record.contains("16"), "{record}");
    settings.restore();
    assert_eq!(fake.triple("veth-out"), (0, 0, 0));
    assert_eq!(fake.triple("veth-in"), (0, 0, 0));
}

#[test]
fn the_record_lives_beside_the_management_socket() {
    assert_eq!(
        record_path(Path::new("/run/gateway.sock")),
        Path::new("/run/gateway.sysctls.json")
    );
    assert_eq!(
        record_path(Path::new("/tmp/x/agent")),
        Path::new("/tmp/x/agent.sysctls.json")
    );
    // Never the socket itself.
    assert_eq!(
        record_path(Path::new("/tmp/odd.sysctls.json")),
        Path::new("/tmp/odd.sysctls.sysctls.json")
    );
    assert_eq!(record_path(Path::new("/")), Path::new("/.sysctls.json"));
}

#[test]
fn a_record_anyone_else_could_have_written_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt as _;
    let fake = FakeHost::new();
    let mut first = fake.prepare(true).unwrap();
    first.apply().unwrap();
    std::mem::forget(first);
    let untrusted = |fake: &FakeHost| {
        let settings = fake.prepare(true).unwrap();
        let taken = settings.status().iter().any(|row| row.original.is_some());
        std::mem::forget(settings);
        !taken
    };
    assert!(!untrusted(&fake), "the agent's own record is taken");

    // Writable by others.
    fs::set_permissions(fake.record(), fs::Permissions::from_mode(0o666)).unwrap();
    assert!(untrusted(&fake));
    fs::set_permissions(fake.record(), fs::Permissions::from_mode(0o600)).unwrap();

    // A link to a good record.
    let elsewhere = fake.dir.join("elsewhere.json");
    fs::rename(fake.record(), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, fake.record()).unwrap();
    assert!(untrusted(&fake));
    fs::remove_file(fake.record()).unwrap();
    fs::rename(&elsewhere, fake.record()).unwrap();

    // An interface name that leaves net/ipv4/conf.
    let mut record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fake.record()).unwrap()).unwrap();
    record["interfaces"][0]["name"] = "../../ipv6/conf/all".into();
    fs::write(fake.record(), record.to_string()).unwrap();
    fake.ifindexes
        .lock()
        .unwrap()
        .insert("../../ipv6/conf/all".into(), 5);
    let mut settings = fake.prepare(true).unwrap();
    // Taken as an interface no longer served, it would be written to at once (and fail:
    // there is no such directory).
    settings.apply().unwrap();
    assert!(
        settings.status()[3..]
            .iter()
            .all(|row| row.original.is_some()),
        "veth-out's entry is still good"
    );
    assert!(
        settings.status()[..3]
            .iter()
            .all(|row| row.original.is_none())
    );
    std::mem::forget(settings);
}

#[test]
fn a_stale_or_planted_temporary_file_is_replaced_not_followed() {
    let fake = FakeHost::new();
    fs::create_dir_all(&fake.dir).unwrap();
    let target = fake.dir.join("target");
    fs::write(&target, "precious").unwrap();
    let mut temporary = fake.record().into_os_string();
    temporary.push(".new");
    std::os::unix::fs::symlink(&target, &temporary).unwrap();
    let mut settings = fake.prepare(true).unwrap();
    settings.apply().unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
    assert!(
        fs::read_to_string(fake.record())
            .unwrap()
            .contains("veth-in")
    );
    settings.restore();
}

#[test]
fn a_standby_does_not_forward_until_promoted_and_everything_goes_back() {
    let fake = FakeHost::new();
    // A host that forwards everywhere already: the standby turns it off on what it serves.
    for interface in ["veth-in", "veth-out", "eth9"] {
        fake.set(interface, "forwarding", 1);
    }
    let mut settings = fake.prepare(true).unwrap();
    settings.start_as_standby();
    let changes = settings.apply().unwrap();
    assert!(
        changes.contains(
            &"net.ipv4.conf.veth-in.forwarding 1 -> 0 while this node is a standby (put back when it stops)"
                .to_owned()
        ),
        "{changes:?}"
    );
    for interface in ["veth-in", "veth-out"] {
        assert_eq!(fake.triple(interface), (0, 1, 2), "{interface}");
    }
    assert_eq!(fake.get("eth9", "forwarding"), 1, "not served: untouched");
    let status = settings.status();
    assert_eq!(
        (status[0].ok, status[0].required.as_str()),
        (true, "0 while a standby")
    );
    // A reload's check keeps the standby's rule.
    assert!(settings.recheck().unwrap().is_empty());

    // Promoted: forwarding again, before anything attaches.
    let changes = settings.set_standby(false).unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        changes[0].contains("0 -> 1 on promotion to master"),
        "{changes:?}"
    );
    for interface in ["veth-in", "veth-out"] {
        assert_eq!(fake.triple(interface), (1, 1, 2), "{interface}");
    }
    assert!(settings.set_standby(false).unwrap().is_empty(), "no change");
    // Demoted again.
    assert_eq!(settings.set_standby(true).unwrap().len(), 2);
    assert_eq!(fake.get("veth-out", "forwarding"), 0);

    // The originals are the host's, whatever the role at the end.
    settings.restore();
    for interface in ["veth-in", "veth-out"] {
        assert_eq!(fake.triple(interface), (1, 0, 0), "{interface}");
    }
}

#[test]
fn an_unmanaged_standby_changes_nothing() {
    let fake = FakeHost::new();
    for interface in ["veth-in", "veth-out"] {
        fake.set(interface, "forwarding", 1);
        fake.set(interface, "accept_local", 1);
        fake.set(interface, "rp_filter", 2);
    }
    let mut settings = fake.prepare(false).unwrap();
    settings.start_as_standby();
    assert!(settings.apply().unwrap().is_empty());
    assert!(settings.set_standby(true).unwrap().is_empty());
    assert_eq!(fake.triple("veth-in"), (1, 1, 2));
    assert!(settings.recheck().unwrap().is_empty());
}
