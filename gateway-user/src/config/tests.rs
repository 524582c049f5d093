//! The config parser's rules, each through a file that breaks it.

use super::*;

const GOOD: &str = r#"
    [interfaces]
    inside = "veth-in"
    outside = "veth-out"

    [dataplane]
    hook = "auto"

    [[publish]]
    public = "203.0.113.1:21"
    private = "10.0.0.2:21"
    protocol = "tcp"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("gateway.toml"))
}

fn error(text: &str) -> String {
    let message = parse(text)
        .expect_err("config should be refused")
        .to_string();
    assert!(!message.contains('\n'), "error must be one line: {message}");
    message
}

#[test]
fn the_documented_example_parses() {
    let config = parse(GOOD).unwrap();
    assert_eq!(config.interfaces.inside, "veth-in");
    assert_eq!(config.dataplane.hook, Hook::Auto);
    assert_eq!(
        config.publish,
        vec![Publish {
            public: "203.0.113.1:21".parse().unwrap(),
            private: "10.0.0.2:21".parse().unwrap(),
            protocol: Protocol::Tcp,
            alg: None,
            policy: None,
        }]
    );
    // No masquerade: no outside control ports to watch.
    assert!(config.ftp.control_ports.is_empty());
    assert_eq!(config.ftp.expectation_timeout, 60);
}

const MASQUERADE: &str =
    "\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"203.0.113.1\"]\n";

#[test]
fn the_repositorys_example_config_parses() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway.toml"));
    let config = Config::load(path).unwrap();
    assert_eq!(config.publish.len(), 2);
    assert_eq!(config.publish[1].alg, Some(Alg::Ftp));
    assert_eq!(config.ftp.control_ports, vec![21]);
}

#[test]
fn the_packaged_example_config_parses() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/gateway.toml"
    ));
    let config = Config::load(path).unwrap();
    assert_eq!(config.interfaces.outside, "eth0");
    assert_eq!(config.management_socket, Path::new("/run/gateway.sock"));
    assert_eq!(config.ftp.policy.on_violation, ViolationAction::Reject);
}

#[test]
fn sysctls_are_managed_unless_told_not_to() {
    assert!(parse(GOOD).unwrap().dataplane.manage_sysctls);
    let text = GOOD.replace("hook = \"auto\"", "hook = \"auto\"\nmanage_sysctls = false");
    assert!(!parse(&text).unwrap().dataplane.manage_sysctls);
    let refused = error(&text.replace("= false", "= \"no\""));
    assert!(
        refused.contains("line 8") && refused.contains("boolean"),
        "{refused}"
    );
}

#[test]
fn management_and_metrics_settings() {
    let text = format!(
        "{GOOD}\n[management]\nsocket = \"/run/gw/api.sock\"\n[metrics]\nlisten = \"127.0.0.1:9469\"\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.management_socket, Path::new("/run/gw/api.sock"));
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9469".parse().unwrap())
    );
    assert!(error(&text.replace("/run/gw/api.sock", "api.sock")).contains("absolute path"));
    assert!(error(&text.replace("127.0.0.1:9469", "localhost")).contains("metrics.listen"));
}

#[test]
fn ftp_alg_settings() {
    let with_alg = GOOD.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nalg = \"ftp\"");
    assert_eq!(parse(&with_alg).unwrap().publish[0].alg, Some(Alg::Ftp));
    let udp = with_alg.replace("protocol = \"tcp\"", "protocol = \"udp\"");
    assert!(error(&udp).contains("alg = \"ftp\" needs protocol = \"tcp\""));
    assert!(error(&with_alg.replace("\"ftp\"", "\"sip\"")).contains("unknown variant `sip`"));

    // With a masquerade the ALG watches port 21 unless told otherwise.
    let masq = format!("{GOOD}{MASQUERADE}");
    assert_eq!(parse(&masq).unwrap().ftp.control_ports, vec![21]);
    let ports = format!("{masq}\n[ftp]\ncontrol_ports = [21, 2121]\nexpectation_timeout = 30\n");
    let ftp = parse(&ports).unwrap().ftp;
    assert_eq!(
        (ftp.control_ports, ftp.expectation_timeout),
        (vec![21, 2121], 30)
    );
    let off = format!("{masq}\n[ftp]\ncontrol_ports = []\n");
    assert!(parse(&off).unwrap().ftp.control_ports.is_empty());

    assert_eq!(parse(GOOD).unwrap().ftp.realtime_priority, None);
    let realtime = format!("{GOOD}\n[ftp]\nrealtime_priority = 10\n");
    assert_eq!(parse(&realtime).unwrap().ftp.realtime_priority, Some(10));
    for wrong in ["0", "100", "-1"] {
        let text = realtime.replace("= 10", &format!("= {wrong}"));
        assert!(error(&text).contains("ftp.realtime_priority"), "{wrong}");
    }

    assert_eq!(parse(GOOD).unwrap().ftp.busy_poll_us, 0);
    let polling = format!("{GOOD}\n[ftp]\nbusy_poll_us = 50\n");
    assert_eq!(parse(&polling).unwrap().ftp.busy_poll_us, 50);
    for wrong in ["1001", "-1"] {
        let text = polling.replace("= 50", &format!("= {wrong}"));
        assert!(error(&text).contains("ftp.busy_poll_us"), "{wrong}");
    }

    assert_eq!(parse(GOOD).unwrap().ftp.cpu_wakeup_latency_us, None);
    let awake = format!("{GOOD}\n[ftp]\ncpu_wakeup_latency_us = 0\n");
    assert_eq!(parse(&awake).unwrap().ftp.cpu_wakeup_latency_us, Some(0));
    for wrong in ["1000001", "-1"] {
        let text = awake.replace("= 0", &format!("= {wrong}"));
        assert!(
            error(&text).contains("ftp.cpu_wakeup_latency_us"),
            "{wrong}"
        );
    }

    let orphan = format!("{GOOD}\n[ftp]\ncontrol_ports = [21]\n");
    assert!(error(&orphan).contains("there is no [masquerade]"));
    let twice = format!("{masq}\n[ftp]\ncontrol_ports = [21, 21]\n");
    assert!(error(&twice).contains("names 21 twice"));
    let zero = format!("{masq}\n[ftp]\nexpectation_timeout = 0\n");
    assert!(error(&zero).contains("ftp.expectation_timeout = 0"));
    let short = format!("{masq}\n[ftp.policy]\nmax_line = 10\n");
    assert!(error(&short).contains("ftp.policy.max_line = 10"));
}

#[test]
fn policies_global_and_per_publish() {
    let text = format!(
        "{}\nalg = \"ftp\"\n[publish.policy]\nanonymous = false\ndeny_commands = [\"dele\"]\n\n[ftp.policy]\non_violation = \"reset\"\ndeny_users = [\"root\", \"adm*\"]\ntls = \"pass\"\n",
        GOOD.trim_end()
    );
    let config = parse(&text).unwrap();
    let global = &config.ftp.policy;
    assert_eq!(global.on_violation, ViolationAction::Reset);
    assert_eq!(global.tls, TlsPolicy::Pass);
    assert!(global.anonymous);
    let server = config.publish[0].policy.as_ref().unwrap();
    assert!(!server.anonymous, "the publish's own key");
    assert_eq!(server.deny_commands, vec!["DELE"]);
    assert_eq!(server.on_violation, ViolationAction::Reset, "inherited");
    assert_eq!(server.deny_users.len(), 2);

    let bad = text.replace("\"dele\"", "\"DELETE\"");
    assert!(error(&bad).contains("publish #1: policy.deny_commands: \"DELETE\""));
    let bad = text.replace("\"reset\"", "\"explode\"");
    assert!(error(&bad).contains("unknown variant `explode`"));
    let no_alg = text.replace("alg = \"ftp\"\n", "");
    assert!(error(&no_alg).contains("publish #1: a policy needs alg = \"ftp\""));

    // Sessions per client: thousands by default (shared addresses), 0 for no limit.
    assert_eq!(global.max_sessions_per_client, 4096);
    assert_eq!(global.session_limit(), Some(4096));
    let unlimited = parse(&format!("{text}max_sessions_per_client = 0\n")).unwrap();
    assert_eq!(unlimited.ftp.policy.session_limit(), None);
    assert!(
        error(&format!("{text}max_sessions_per_client = 100001\n")).contains(
            "ftp.policy.max_sessions_per_client = 100001: expected 0 to 100000 (0: no limit)"
        )
    );
    assert!(
        error(&format!("{text}max_pending_expectations = 0\n"))
            .contains("max_pending_expectations = 0: expected 1 to 100000")
    );
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let message = error(&GOOD.replace("hook = \"auto\"", "hook = \"auto\"\nmode = \"fast\""));
    assert!(message.contains("unknown field `mode`"), "{message}");
    assert!(message.contains("line 8"), "{message}");
}

#[test]
fn bad_address_is_named() {
    let message = error(&GOOD.replace("10.0.0.2:21", "10.0.0.300:21"));
    assert!(
        message.contains("publish #1: private = \"10.0.0.300:21\""),
        "{message}"
    );
}

#[test]
fn duplicate_publish_is_refused() {
    let twice = format!(
        "{GOOD}\n[[publish]]\npublic = \"203.0.113.1:21\"\nprivate = \"10.0.0.3:21\"\nprotocol = \"tcp\"\n"
    );
    assert!(error(&twice).contains("publish #2 repeats public 203.0.113.1:21/tcp of publish #1"));
    // The same public endpoint under the other protocol is a different publish.
    let udp = twice.replace(
        "10.0.0.3:21\"\nprotocol = \"tcp\"",
        "10.0.0.3:21\"\nprotocol = \"udp\"",
    );
    assert_eq!(parse(&udp).unwrap().publish.len(), 2);
}

#[test]
fn missing_interface_is_named() {
    let message = error(&GOOD.replace("outside = \"veth-out\"\n", ""));
    assert!(message.contains("missing field `outside`"), "{message}");
}

#[test]
fn masquerade_and_timeouts() {
    let text = format!(
        "{GOOD}\n[masquerade]\nnetworks = [\"10.0.0.0/24\"]\naddresses = [\"203.0.113.1\"]\n\n[timeouts]\nudp = 120\n"
    );
    let config = parse(&text).unwrap();
    let masquerade = config.masquerade.unwrap();
    assert_eq!(masquerade.networks[0].to_string(), "10.0.0.0/24");
    assert_eq!(
        masquerade.networks[0].netmask(),
        std::net::Ipv4Addr::new(255, 255, 255, 0)
    );
    assert_eq!(masquerade.ports, 1024..=65535);
    assert_eq!(masquerade.filtering, Filtering::AddressDependent);
    assert_eq!(
        config.timeouts,
        Timeouts {
            udp: 120,
            ..Timeouts::default()
        }
    );
    assert_eq!(config.max_sessions, gateway_common::DEFAULT_MAX_SESSIONS);
    assert_eq!(config.sweep_interval, 10);
    let no_sweep = format!("{text}\n[sessions]\nsweep_interval = 0\n");
    assert!(error(&no_sweep).contains("sessions.sweep_interval"));
    assert!(error(&text.replace("10.0.0.0/24", "10.0.0.1/24")).contains("host bits set"));
    assert!(error(&text.replace("10.0.0.0/24", "10.0.0.0/33")).contains("prefix"));
    assert!(error(&text.replace("udp = 120", "udp = 0")).contains("timeouts.udp"));
    let ports = text.replace(
        "addresses = [\"203.0.113.1\"]",
        "addresses = [\"203.0.113.1\"]\nports = \"2000-1000\"",
    );
    assert!(error(&ports).contains("masquerade.ports"));
    assert!(error(&text.replace("10.0.0.0/24", "10.0.0.0")).contains("address/length"));
    assert!(error(&text.replace("10.0.0.0/24", "10.0.0.x/24")).contains("IPv4 prefix"));
    let everything = parse(&text.replace("10.0.0.0/24", "0.0.0.0/0")).unwrap();
    assert_eq!(
        everything.masquerade.unwrap().networks[0].netmask(),
        std::net::Ipv4Addr::UNSPECIFIED
    );
}

#[test]
fn bad_enum_values_and_names_are_refused() {
    assert!(error(&GOOD.replace("\"auto\"", "\"ebpf\"")).contains("unknown variant `ebpf`"));
    assert!(error(&GOOD.replace("\"tcp\"", "\"sctp\"")).contains("unknown variant `sctp`"));
    assert!(
        error(&GOOD.replace("\"veth-out\"", "\"veth-in\"")).contains("two different interfaces")
    );
    assert!(
        error(&GOOD.replace("\"veth-out\"", "\"a-name-much-too-long\""))
            .contains("not a valid interface name")
    );
    assert!(error(&GOOD.replace("203.0.113.1:21", "203.0.113.1:0")).contains("port 0"));
    assert!(
        error(&GOOD.replace("hook = \"auto\"", "hook = \"tc\"\nxdp_mode = \"native\""))
            .contains("xdp_mode")
    );
}

#[test]
fn ha_is_optional_and_its_values_are_checked() {
    assert_eq!(parse(GOOD).unwrap().ha, None);
    let ha = parse(&format!(
        "{GOOD}\n[ha]\nnode_id = 2\npeer = \"192.0.2.1\"\n"
    ))
    .unwrap()
    .ha
    .unwrap();
    assert_eq!(
        ha,
        Ha {
            node_id: 2,
            peer: "192.0.2.1".parse().unwrap(),
            sync_port: DEFAULT_SYNC_PORT,
            listen: std::net::Ipv4Addr::UNSPECIFIED,
            key: None,
            key_file: None,
        }
    );
    let port = parse(&format!(
        "{GOOD}\n[ha]\nnode_id = 1\npeer = \"192.0.2.2\"\nsync_port = 9000\n"
    ))
    .unwrap();
    assert_eq!(port.ha.unwrap().sync_port, 9000);
    let listen = parse(&format!(
        "{GOOD}\n[ha]\nnode_id = 1\npeer = \"192.0.2.2\"\nlisten = \"192.0.2.1\"\n"
    ))
    .unwrap();
    assert_eq!(
        listen.ha.unwrap().listen,
        "192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()
    );
    for (table, expected) in [
        (
            "node_id = 0\npeer = \"192.0.2.2\"",
            "ha.node_id = 0: expected 1 to 255",
        ),
        ("node_id = 256\npeer = \"192.0.2.2\"", "ha.node_id = 256"),
        (
            "node_id = 1\npeer = \"peer.example\"",
            "ha.peer = \"peer.example\"",
        ),
        (
            "node_id = 1\npeer = \"127.0.0.1\"",
            "expected a unicast address",
        ),
        (
            "node_id = 1\npeer = \"224.0.0.18\"",
            "expected a unicast address",
        ),
        (
            "node_id = 1\npeer = \"192.0.2.2\"\nsync_port = 0",
            "ha.sync_port = 0: expected 1 to 65535",
        ),
        (
            "node_id = 1\npeer = \"192.0.2.2\"\nsync_port = 70000",
            "ha.sync_port = 70000",
        ),
        (
            "node_id = 1\npeer = \"192.0.2.2\"\nlisten = \"192.0.2.1:7946\"",
            "ha.listen = \"192.0.2.1:7946\": expected an IPv4 address of this node (no port",
        ),
        (
            "node_id = 1\npeer = \"192.0.2.2\"\nlisten = \"sync.example\"",
            "ha.listen = \"sync.example\": expected an IPv4 address",
        ),
        (
            "node_id = 1\npeer = \"192.0.2.2\"\nlisten = \"127.0.0.1\"",
            "ha.listen = \"127.0.0.1\": expected a unicast address of this node",
        ),
        (
            "node_id = 1\npeer = \"192.0.2.2\"\nlisten = \"224.0.0.1\"",
            "not loopback, multicast or broadcast",
        ),
        (
            "node_id = 1\npeer = \"192.0.2.2\"\nkey = \"x\"",
            "unknown field `key`",
        ),
        ("peer = \"192.0.2.2\"", "missing field `node_id`"),
    ] {
        let message = error(&format!("{GOOD}\n[ha]\n{table}\n"));
        assert!(message.contains(expected), "{table:?}: {message}");
    }
    let pinned = error(&format!(
        "{}\n[ha]\nnode_id = 1\npeer = \"192.0.2.2\"\n",
        GOOD.replace(
            "hook = \"auto\"",
            "hook = \"auto\"\npin_path = \"/sys/fs/bpf/gw\""
        )
    ));
    assert!(pinned.contains("[ha] with dataplane.pin_path"), "{pinned}");
}

#[test]
fn the_sync_key_is_read_from_its_file_and_refused_when_short() {
    let dir = std::env::temp_dir().join(format!("gateway-key-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.key");
    std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
    let short = dir.join("short.key");
    std::fs::write(&short, "0123456789abcde\n").unwrap();
    let table = |path: &str| {
        format!("{GOOD}\n[ha]\nnode_id = 1\npeer = \"192.0.2.2\"\nkey_file = {path:?}\n")
    };
    let ha = parse(&table(&good.display().to_string()))
        .unwrap()
        .ha
        .unwrap();
    assert_eq!(
        ha.key.as_ref().map(|key| key.bytes()),
        Some(&b"0123456789abcdef0123"[..])
    );
    assert_eq!(format!("{:?}", ha.key.unwrap()), "SyncKey(20 bytes)");
    let message = error(&table(&short.display().to_string()));
    assert!(message.contains("15 bytes: too short"), "{message}");
    let message = error(&table("relative.key"));
    assert!(message.contains("expected an absolute path"), "{message}");
    let message = error(&table(&dir.join("missing.key").display().to_string()));
    assert!(message.contains("cannot read it"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}
