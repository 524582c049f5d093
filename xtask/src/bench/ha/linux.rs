//! The Linux side of the pair: nftables SNAT to the public virtual address and conntrackd
//! (FTFW over UDP on the sync link), driven by keepalived with the actions of conntrackd's
//! own `primary-backup.sh`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway_tests::ha_lab::{HaLab, Node, sync_address};

use super::Daemon;

const CONNTRACKD_PORT: u16 = 3780;

/// A Linux router: forwarding on, the inside network SNATed to the public virtual address.
pub(super) fn linux_router(node: &Node) -> anyhow::Result<()> {
    node.netns.sh("sysctl -qw net.ipv4.ip_forward=1
         nft -f - <<'EOF'
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"veth-out\" ip saddr 10.0.0.0/24 snat to 203.0.113.1
    }
}
EOF")?;
    Ok(())
}

pub(super) fn start_conntrackd(lab: &HaLab, node: &Node, dir: &Path) -> anyhow::Result<Daemon> {
    use std::os::unix::process::CommandExt as _;
    std::fs::create_dir_all(dir)?;
    let peer = lab
        .nodes
        .iter()
        .find(|other| other.id != node.id)
        .context("no peer")?;
    let config = dir.join("conntrackd.conf");
    let socket = dir.join("conntrackd.ctl");
    std::fs::write(
        &config,
        format!(
            "Sync {{
    Mode FTFW {{
        DisableExternalCache Off
    }}
    UDP {{
        IPv4_address {own}
        IPv4_Destination_Address {peer}
        Port {CONNTRACKD_PORT}
        Interface veth-sync
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
    Options {{
        TCPWindowTracking Off
    }}
}}
General {{
    HashSize 32768
    HashLimit 131072
    LogFile {log}
    Syslog off
    LockFile {lock}
    UNIX {{
        Path {socket}
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    Filter From Userspace {{
        Protocol Accept {{
            TCP
            UDP
        }}
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv4_address {own}
            IPv4_address {inside}
            IPv4_address {outside}
        }}
    }}
}}
",
            own = sync_address(node),
            peer = sync_address(peer),
            inside = node.inside,
            outside = node.outside,
            log = dir.join("conntrackd.log").display(),
            lock = dir.join("conntrackd.lock").display(),
            socket = socket.display(),
        ),
    )?;
    let child = node
        .netns
        .command("conntrackd")
        .arg("-C")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("start conntrackd (cargo xtask setup installs it for the bench)")?;
    let daemon = Daemon(Some(child));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!(
                "conntrackd did not open {}; its log:\n{}",
                socket.display(),
                std::fs::read_to_string(dir.join("conntrackd.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(daemon)
}

/// keepalived's notify script for a Linux node: conntrackd's `primary-backup.sh` actions
/// (none without conntrackd).
pub(super) fn conntrackd_notify(dir: &Path, conntrackd: bool) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("notify");
    let command = format!("conntrackd -C {}", dir.join("conntrackd.conf").display());
    // When the commit is done: the bench's takeover time.
    let mark = dir.join("committed").display().to_string();
    let actions = if conntrackd {
        format!(
            "case \"$state\" in
    MASTER) {command} -c; touch {mark}; {command} -f; {command} -R; {command} -B ;;
    BACKUP) {command} -t; {command} -n ;;
    *) {command} -t ;;
esac"
        )
    } else {
        ":".to_owned()
    };
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n# keepalived appends: GROUP NAME STATE PRIORITY\neval \"state=\\${{$(($# - 1))}}\"\n{actions}\n"
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}
