//! What the agent asks of the host: privileges, interfaces, scheduling (the sysctls are
//! `crate::sysctl`'s).

use std::{fs, io, mem, os::fd::OwnedFd};

use rustix::{
    ioctl::{self, Opcode, Updater},
    net::{AddressFamily, SocketFlags, SocketType},
};

/// Capability numbers from linux/capability.h.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Checks that this process may load BPF programs and attach them to interfaces, so that a
/// missing privilege is reported as such instead of as a puzzling EPERM from deep in a load.
pub fn check_privileges() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|err| format!("cannot read /proc/self/status to check privileges: {err}"))?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or("cannot find CapEff in /proc/self/status")?;
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "insufficient privileges: missing {} (run as root)",
            missing.join(" and ")
        ))
    }
}

/// Whether `name` can be a Linux interface's name (1 to 15 bytes, no '/', no whitespace,
/// not "." or ".."): what may appear in a path such as `/proc/sys/net/ipv4/conf/<name>`.
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.contains(['/', ':', '\0'])
        && !name.chars().any(char::is_whitespace)
}

/// The index of interface `name` in the caller's network namespace, if there is one.
pub fn if_index(name: &str) -> Option<u32> {
    rustix::net::netdevice::name_to_index(ioctl_socket().ok()?, name).ok()
}

/// A socket to name an interface to the interface ioctls (any socket will do).
pub fn ioctl_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The driver behind an interface, from `ETHTOOL_GDRVINFO` (what `ethtool -i` shows).
#[derive(Debug, Clone)]
pub struct DriverInfo {
    pub driver: String,
    /// PCI (or other bus) address; empty for virtual devices such as veth or bridges.
    pub bus_info: String,
}

impl DriverInfo {
    /// A device with no bus behind it is virtual: veth, bridge, dummy, tun, vxlan, ...
    pub fn is_virtual(&self) -> bool {
        self.bus_info.is_empty()
    }
}

/// From linux/sockios.h and linux/ethtool.h: rustix and nix have no ethtool request of
/// their own, so its structs are spelled out here and rustix's typed ioctl makes the call.
const SIOCETHTOOL: Opcode = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
}

pub fn driver_info(interface: &str) -> io::Result<DriverInfo> {
    if interface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    let socket = ioctl_socket()?;
    // SAFETY: all-zero is a valid EthtoolDrvinfo.
    let mut info: EthtoolDrvinfo = unsafe { mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&mut info as *mut EthtoolDrvinfo).cast(),
    };
    request.name[..interface.len()].copy_from_slice(interface.as_bytes());
    // SAFETY: SIOCETHTOOL reads an ifreq whose data points at a live, correctly sized
    // ethtool_drvinfo, which it fills, for the call's duration.
    unsafe {
        ioctl::ioctl(
            &socket,
            Updater::<SIOCETHTOOL, IfreqData>::new(&mut request),
        )
    }?;
    let text = |bytes: &[u8]| {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };
    Ok(DriverInfo {
        driver: text(&info.driver),
        bus_info: text(&info.bus_info),
    })
}

/// Puts the calling thread under `SCHED_FIFO` at `priority`, or back under the ordinary
/// scheduler for `None`.
pub fn set_realtime_priority(priority: Option<u8>) -> io::Result<()> {
    let (policy, priority) = match priority {
        Some(priority) => (libc::SCHED_FIFO, i32::from(priority)),
        None => (libc::SCHED_OTHER, 0),
    };
    // libc's: rustix leaves sched_setscheduler out on purpose and nix has no wrapper for it.
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's CPU latency QoS device: the wake-up latency its requests allow idle CPUs.
const CPU_LATENCY_QOS: &str = "/dev/cpu_dma_latency";

/// A request on the kernel's CPU latency QoS (`/dev/cpu_dma_latency`): while it is held, no
/// CPU idles in a state that takes longer than `us` microseconds to wake from (0: idle CPUs
/// poll instead of halting). The request lives as long as the open file: dropped, or the
/// process gone (killed too), the kernel withdraws it, so nothing stays on the host.
#[derive(Debug)]
pub struct CpuLatencyRequest {
    file: fs::File,
    us: u32,
}

impl CpuLatencyRequest {
    /// Opens a request for `us` microseconds.
    pub fn hold(us: u32) -> io::Result<CpuLatencyRequest> {
        let file = fs::OpenOptions::new().write(true).open(CPU_LATENCY_QOS)?;
        let mut request = CpuLatencyRequest { file, us };
        request.update(us)?;
        Ok(request)
    }

    /// Changes the request to `us` microseconds.
    pub fn update(&mut self, us: u32) -> io::Result<()> {
        use std::io::Write as _;
        // The device takes the value as a native s32 (or a hex string).
        let value = i32::try_from(us).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.file.write_all(&value.to_ne_bytes())?;
        self.us = us;
        Ok(())
    }

    pub fn us(&self) -> u32 {
        self.us
    }
}

/// The wake-up latency the CPUs are held to now (every process's requests together; the
/// kernel's "no constraint" is 2,000,000,000 us).
pub fn cpu_latency_limit() -> io::Result<i32> {
    use std::io::Read as _;
    let mut value = [0u8; 4];
    fs::File::open(CPU_LATENCY_QOS)?.read_exact(&mut value)?;
    Ok(i32::from_ne_bytes(value))
}

/// Packets `interface` dropped on transmission, from `/proc/net/dev` (of the caller's network
/// namespace, unlike `/sys/class/net`, which shows the namespace sysfs was mounted in).
pub fn tx_dropped(interface: &str) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/dev").ok()?;
    parse_tx_dropped(&table, interface)
}

/// `/proc/net/dev`: after "name:", 8 receive fields, then transmit bytes, packets, errs, drop.
fn parse_tx_dropped(table: &str, interface: &str) -> Option<u64> {
    table.lines().find_map(|line| {
        let (name, fields) = line.split_once(':')?;
        if name.trim() != interface {
            return None;
        }
        fields.split_whitespace().nth(11)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_dropped_is_the_fourth_transmit_field() {
        let table = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  100  2  0  0  0  0  0  0  100  2  0  0  0  0  0  0\ngwpunt0: 5000 40 0 1 0 0 0 0 9000 70 0 17 0 0 0 0\n";
        assert_eq!(parse_tx_dropped(table, "gwpunt0"), Some(17));
        assert_eq!(parse_tx_dropped(table, "lo"), Some(0));
        assert_eq!(parse_tx_dropped(table, "eth9"), None);
    }
}
