//! The daemon's event sources, each a thread that blocks on one thing and sends `Event`s
//! to the worker: signals, the kernel's link and address changes, and the control socket.
//! None of them does any work itself, so none can hold up another.

use super::Event;
use crate::netlink::monitor::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_TC, RTNLGRP_TUNNEL,
};
use crate::netlink::Netlink;
use nix::sys::signal::{SigSet, Signal};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

/// The signals the daemon handles. They are blocked in every thread (the mask is set before
/// any thread starts, and threads inherit it) and taken by `sigwait` in one thread.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

pub fn spawn_signals(tx: Sender<Event>) -> std::io::Result<()> {
    let set = handled_signals();
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        let event = match set.wait() {
            Ok(Signal::SIGHUP) => Event::Reload,
            Ok(_) => Event::Stop,
            Err(e) => {
                log::error!("sigwait: {e}");
                return;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    })?;
    Ok(())
}

/// Kernel link, address and tc changes: what networkd does not signal (a DHCP renew to a
/// new address, an address added by hand, someone deleting a fan's bridge or program).
pub fn spawn_kernel_monitor(tx: Sender<Event>) -> Result<(), crate::netlink::Error> {
    // Routes matter only where the kernel decides "routable" (no networkd), and are cheap.
    let mut monitor = Netlink::monitor(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_TC | RTMGRP_IPV4_ROUTE)?;
    // VNI filter changes (Linux 5.18, where vnifilter is): the kept VNIs are read again.
    // An older kernel has no such group and no VNI filters either.
    if let Err(e) = monitor.join(RTNLGRP_TUNNEL) {
        log::debug!("no vxlan VNI events: {e}");
    }
    let spawned = std::thread::Builder::new().name("rtnetlink".into()).spawn(move || loop {
        let events = match monitor.recv_events() {
            Ok(events) if events.is_empty() => continue,
            Ok(events) => events,
            // ENOBUFS: the kernel dropped events; an empty batch asks the worker to resync.
            Err(e) if e.errno == nix::errno::Errno::ENOBUFS => {
                log::debug!("rtnetlink overrun; resyncing");
                Vec::new()
            }
            Err(e) => {
                log::error!("rtnetlink monitor: {e}");
                std::thread::sleep(Duration::from_secs(1));
                Vec::new()
            }
        };
        if tx.send(Event::Kernel(events)).is_err() {
            return;
        }
    });
    spawned
        .map(drop)
        .map_err(|e| crate::netlink::Error::new(format!("spawn monitor: {e}"), nix::errno::Errno::EAGAIN))
}

/// nftables changes (any table, chain or rule, by anyone: `nft`, iptables-nft, Docker), so
/// a deleted NAT table is restored and a firewall that appears later gets the accept rules.
/// A bare NETLINK_NETFILTER socket in the NFNLGRP_NFTABLES group: each datagram is one
/// change; the worker re-reads what it needs.
pub fn spawn_firewall_monitor(tx: Sender<Event>) -> nix::Result<()> {
    use nix::sys::socket::{
        bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
    };
    use std::os::fd::AsRawFd;
    /// `1 << (NFNLGRP_NFTABLES - 1)`, NFNLGRP_NFTABLES = 7.
    const NFTABLES_GROUP: u32 = 1 << 6;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, NFTABLES_GROUP))?;
    std::thread::Builder::new()
        .name("nftables".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    // ENOBUFS: changes were lost; a re-read covers them like any change.
                    Ok(_) | Err(nix::errno::Errno::ENOBUFS) => {}
                    Err(e) => {
                        log::error!("nftables monitor: {e}");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                if tx.send(Event::Firewall).is_err() {
                    return;
                }
            }
        })
        .map_err(|_| nix::errno::Errno::EAGAIN)?;
    Ok(())
}

/// The control socket's path in the runtime directory.
pub fn control_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("control")
}

/// Serves `status` on a unix socket only root can reach (directory 0700, socket 0600).
/// One line in ("status"), one JSON document out.
pub fn spawn_control(runtime_dir: &Path, tx: Sender<Event>) -> std::io::Result<()> {
    std::fs::create_dir_all(runtime_dir)?;
    std::fs::set_permissions(runtime_dir, std::fs::Permissions::from_mode(0o700))?;
    let path = control_path(runtime_dir);
    // A socket left by a daemon that was killed: nothing listens on it any more.
    if std::os::unix::net::UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new().name("control".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            let mut reader = BufReader::new(&stream).take_line(64);
            if reader.read_line(&mut line).is_err() || line.trim() != "status" {
                let _ = (&stream).write_all(b"{\"error\":\"unknown request\"}\n");
                continue;
            }
            let (reply, answer) = mpsc::channel();
            if tx.send(Event::Status(reply)).is_err() {
                return;
            }
            if let Ok(json) = answer.recv_timeout(Duration::from_secs(5)) {
                let _ = (&stream).write_all(json.as_bytes());
            }
        }
    })?;
    Ok(())
}

/// Reads at most `limit` bytes: a client cannot make the control thread buffer without end.
trait TakeLine: Sized {
    fn take_line(self, limit: u64) -> BufReader<std::io::Take<Self>>;
}

impl<R: std::io::Read> TakeLine for BufReader<R> {
    fn take_line(self, limit: u64) -> BufReader<std::io::Take<Self>> {
        BufReader::new(std::io::Read::take(self, limit))
    }
}
