//! The gateway's test bench: network namespaces joined by veth pairs, the reference lab
//! topology built from them, packet capture, traffic generators and a handle on a running
//! `gateway`. Used by the tests in `tests/tests`, and by `cargo xtask lab|demo`.
//!
//! Network rule: everything here lives in namespaces this code creates, joined only by veth
//! pairs between them. Nothing is created in the root namespace, and every guard removes what
//! it made when dropped, also when a test panics.

pub mod bpffs;
pub mod capture;
#[cfg(feature = "dataplane")]
pub mod dataplane;
pub mod frame;
pub mod ftp;
pub mod gateway;
pub mod ha_flows;
pub mod ha_lab;
pub mod ha_nodes;
pub mod lab;
pub mod netns;
pub mod oracle;
pub mod packet;
pub mod transfer;

use std::process::{Command, Output};

use anyhow::{Context as _, bail};

/// A temporary file (a config, say), removed when dropped.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// Writes `text` to `name` in the temporary directory.
    pub fn write(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, text).expect("write a temporary file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A directory (keepalived's files, say), removed with what is in it when dropped.
pub struct RemoveDir(pub std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command to completion; a non-zero exit is an error that carries its stderr.
pub fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// The index of `interface` in the calling thread's namespace.
pub fn if_index(interface: &str) -> anyhow::Result<u32> {
    let socket = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::netdevice::name_to_index(socket, interface)
        .with_context(|| format!("no interface {interface}"))
}

/// The smallest XDP program (`return XDP_PASS`), attached in native mode to `interface` of the
/// calling thread's namespace through a BPF link, which lasts as long as the returned
/// descriptor. Loaded with bpf(2) directly: it needs no object file.
pub fn xdp_pass_link(interface: &str) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let ifindex = if_index(interface)?;
    let insns: [u64; 2] = [
        0x0000_0002_0000_00b7, // r0 = XDP_PASS
        0x0000_0000_0000_0095, // exit
    ];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: 6, // BPF_PROG_TYPE_XDP
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr is a valid, zero-padded bpf_attr for BPF_PROG_LOAD (cmd 5).
    let prog = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if prog < 0 {
        return Err(std::io::Error::last_os_error()).context("loading an XDP_PASS program");
    }
    // SAFETY: a descriptor bpf(2) just returned to us.
    let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(prog as i32) };
    #[repr(C)]
    #[derive(Default)]
    struct LinkCreateAttr {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        _rest: [u64; 8],
    }
    let attr = LinkCreateAttr {
        prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
        target_ifindex: ifindex,
        attach_type: 37, // BPF_XDP
        ..Default::default()
    };
    // SAFETY: attr is a valid, zero-padded bpf_attr for BPF_LINK_CREATE (cmd 28).
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            28,
            &attr as *const LinkCreateAttr,
            std::mem::size_of::<LinkCreateAttr>(),
        )
    };
    if link < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("attaching XDP_PASS to {interface}"));
    }
    // SAFETY: as above; the link holds its own reference to the program.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(link as i32) })
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    _rest: [u64; 12],
}

/// Checks what the namespace tests need: root, and a kernel that lets us load BPF programs.
pub fn check_environment() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the gateway tests must run as root (they create network namespaces and load BPF programs)"
        );
    }
    // The smallest possible program: proves bpf(2) works here, without our own object.
    let insns: [u64; 2] = [
        0x0000_0000_0000_00b7, // r0 = 0
        0x0000_0000_0000_0095, // exit
    ];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: 3, // BPF_PROG_TYPE_SCHED_CLS
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr is a valid, zero-padded bpf_attr for BPF_PROG_LOAD (cmd 5).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        bail!(
            "this kernel refuses to load BPF programs ({}); the gateway tests need bpf(2)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd was just returned to us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}
