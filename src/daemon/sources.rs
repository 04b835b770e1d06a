//! What wakes the worker, in one `poll`: the kernel's sockets (rtnetlink, nftables), the
//! bus socket and a signalfd are read by the worker itself, so neither a kernel event nor a
//! networkd signal costs a thread hop; what still comes from threads (the control socket, a
//! dhcp child's exit) is sent on a channel by a `Waker`, which then wakes the worker through
//! an eventfd. The bus's events go on the same channel, from the worker's own thread, with
//! no wakeup: `wait` looks at the channel before it polls.

use super::Event;
use crate::netlink::monitor::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_TC, RTNLGRP_IPV4_NETCONF, RTNLGRP_TUNNEL,
};
use crate::netlink::Netlink;
use crate::networkd::Networkd;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The signals the daemon handles. They are blocked in every thread (the mask is set before
/// any thread starts, and threads inherit it) and read from a signalfd by the worker.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Hands an event from another thread to the worker: the channel, then the eventfd.
#[derive(Clone)]
pub struct Waker {
    tx: Sender<Event>,
    wake: Arc<EventFd>,
}

impl Waker {
    /// `false` when the worker is gone.
    pub fn send(&self, event: Event) -> bool {
        if self.tx.send(event).is_err() {
            return false;
        }
        // Fails only when the counter is at its maximum: the worker is woken already.
        let _ = self.wake.write(1);
        true
    }

    /// The channel alone, for events sent on the worker's own thread (the bus, which the
    /// worker reads): it looks at the channel before it waits, so they need no wakeup.
    pub fn same_thread(&self) -> Sender<Event> {
        self.tx.clone()
    }
}

/// Everything the worker waits on.
pub struct Sources {
    signals: SignalFd,
    /// Kernel link, address, tc, route and netconf changes: what networkd does not signal (a
    /// DHCP renew to a new address, an address added by hand, someone deleting a fan's bridge
    /// or program, or turning forwarding off). Non-blocking: drained until EAGAIN.
    kernel: Netlink,
    /// nftables changes; `None` where they cannot be watched.
    firewall: Option<OwnedFd>,
    wake: Arc<EventFd>,
    rx: Receiver<Event>,
    /// Whether route changes pass the kernel socket's filter (`follow_routes`).
    routes: bool,
    /// Until when a socket that failed with an unexpected error is left unread: each failure
    /// costs a full re-read, and a socket that keeps failing must not make that a busy loop.
    kernel_rests: Option<Instant>,
    firewall_rests: Option<Instant>,
}

/// How long a monitor socket rests after an error other than "nothing queued" or "overrun".
const REST_AFTER_ERROR: Duration = Duration::from_secs(1);

impl Sources {
    /// Call after `handled_signals` are blocked, before the first snapshot (subscribe, then
    /// read, then handle events).
    pub fn open() -> anyhow::Result<(Sources, Waker)> {
        let signals =
            SignalFd::with_flags(&handled_signals(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        let kernel = kernel_monitor()?;
        let firewall = firewall_monitor()
            .inspect_err(|e| {
                log::warn!(
                    "cannot watch nftables ({e}); a deleted NAT table is restored only on the next event"
                )
            })
            .ok();
        let wake = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?);
        let (tx, rx) = mpsc::channel();
        let waker = Waker { tx, wake: wake.clone() };
        Ok((
            Sources {
                signals,
                kernel,
                firewall,
                wake,
                rx,
                routes: true,
                kernel_rests: None,
                firewall_rests: None,
            },
            waker,
        ))
    }

    /// Lets route changes through only while they matter: while the daemon follows the
    /// kernel rather than networkd, a route decides "routable"; otherwise each flap's dozen
    /// route messages would each wake the worker for nothing. Says whether routes were just
    /// let in again, so that what is kept of them, stale by now, is read again.
    pub fn follow_routes(&mut self, routes: bool) -> bool {
        if routes == self.routes {
            return false;
        }
        match self.kernel.filter_events(routes) {
            Ok(()) => self.routes = routes,
            // The old filter stays: at worst the worker still wakes for routes.
            Err(e) => log::warn!("{e}"),
        }
        self.routes && routes
    }

    /// Blocks until something happens or `deadline` passes, and returns all that is ready:
    /// a burst is handled at once. Empty only when the deadline passed. `bus`: the networkd
    /// connection, read here when its socket is readable.
    pub fn wait(&mut self, deadline: Option<Instant>, bus: Option<&Networkd>) -> Vec<Event> {
        // Sent while the last events were handled (a bus call reads, and delivers, what
        // came before its reply): nothing will wake the poll for these.
        let mut events: Vec<Event> = self.rx.try_iter().collect();
        loop {
            // Rounded up: a deadline a fraction of a millisecond away must not spin. One that
            // has passed still polls (without waiting): a signal must not wait behind a timer.
            let timeout = match wake_at(deadline, [self.kernel_rests, self.firewall_rests], Instant::now()) {
                _ if !events.is_empty() => PollTimeout::ZERO,
                None => PollTimeout::NONE,
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left.as_micros().div_ceil(1000)).unwrap_or(PollTimeout::MAX)
                }
            };
            let [signals, kernel, wake, firewall, networkd] = match self.poll(timeout, bus) {
                Ok(ready) => ready,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if signals {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    let hup = info.ssi_signo == Signal::SIGHUP as u32;
                    events.push(if hup { Event::Reload } else { Event::Stop });
                }
            }
            if kernel {
                events.extend(self.kernel_events());
            }
            if firewall {
                events.extend(self.firewall_event());
            }
            if networkd {
                // Its events come on the channel, read just below.
                if let Some(bus) = bus {
                    bus.pump();
                }
            }
            if wake {
                // Reset the counter first: a send after it wakes the next poll.
                let _ = self.wake.read();
            }
            if wake || networkd {
                events.extend(self.rx.try_iter());
            }
            if !events.is_empty() || deadline.is_some_and(|at| at <= Instant::now()) {
                return events;
            }
        }
    }

    /// Which of signals, kernel, wake, firewall, bus are readable (a resting socket is not
    /// polled, nor a bus connection that has ended).
    fn poll(&mut self, timeout: PollTimeout, bus: Option<&Networkd>) -> nix::Result<[bool; 5]> {
        let now = Instant::now();
        let awake = |rests: &mut Option<Instant>| {
            if rests.is_some_and(|until| until <= now) {
                *rests = None;
            }
            rests.is_none()
        };
        let kernel = awake(&mut self.kernel_rests).then(|| self.kernel.as_fd());
        let firewall =
            self.firewall.as_ref().filter(|_| awake(&mut self.firewall_rests)).map(|fd| fd.as_fd());
        let networkd = bus.and_then(|bus| bus.fd());
        let wanted = [Some(self.signals.as_fd()), kernel, Some(self.wake.as_fd()), firewall, networkd];
        let mut fds = Vec::with_capacity(5);
        let slots = wanted.map(|fd| {
            fd.map(|fd| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                fds.len() - 1
            })
        });
        poll(&mut fds, timeout)?;
        let ready = |i: Option<usize>| {
            i.and_then(|i| fds.get(i)).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty())
        };
        Ok(slots.map(ready))
    }

    /// Every queued kernel notification, as one batch; an empty batch when events were lost
    /// (ENOBUFS): the worker then reads everything again.
    fn kernel_events(&mut self) -> Option<Event> {
        let (mut batch, mut lost) = (Vec::new(), false);
        loop {
            match self.kernel.recv_events() {
                Ok(events) => batch.extend(events),
                Err(e) if e.errno == Errno::EAGAIN => break,
                Err(e) if e.errno == Errno::ENOBUFS => {
                    log::debug!("rtnetlink overrun; resyncing");
                    lost = true;
                }
                Err(e) => {
                    log::error!(
                        "rtnetlink monitor: {e}; reading it again in {} s",
                        REST_AFTER_ERROR.as_secs()
                    );
                    self.kernel_rests = Some(Instant::now() + REST_AFTER_ERROR);
                    lost = true;
                    break;
                }
            }
        }
        match (lost, batch.is_empty()) {
            (true, _) => Some(Event::Kernel(Vec::new())),
            (false, true) => None,
            (false, false) => Some(Event::Kernel(batch)),
        }
    }

    /// One `Firewall` event for what other processes changed: a transaction counts when its
    /// end (NFT_MSG_NEWGEN) names another process. fanlink's own writes (it forgets its NAT
    /// cache when it writes) would each cost a second reconcile for nothing.
    fn firewall_event(&mut self) -> Option<Event> {
        let fd = self.firewall.as_ref()?;
        let mut buf = [0u8; 512];
        let mut changed = false;
        // The kernel names the writing thread (in the initial pid namespace: in a container of
        // its own the ids differ, and each write costs one reconcile more, as before). The
        // worker writes from this same thread.
        let own = nix::unistd::gettid().as_raw() as u32;
        loop {
            // MSG_TRUNC: a message about an object may be larger than the buffer; only a
            // transaction's end is read, and it is small.
            let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_TRUNC;
            match nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, flags) {
                Ok(n) => {
                    let by = crate::netlink::nfnl::transaction_by(&buf[..n.min(buf.len())]);
                    changed |= by.is_some_and(|tid| tid != own);
                }
                // ENOBUFS: changes were lost; a re-read covers them like any change.
                Err(Errno::ENOBUFS) => changed = true,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    log::error!(
                        "nftables monitor: {e}; reading it again in {} s",
                        REST_AFTER_ERROR.as_secs()
                    );
                    self.firewall_rests = Some(Instant::now() + REST_AFTER_ERROR);
                    changed = true;
                    break;
                }
            }
        }
        changed.then_some(Event::Firewall)
    }
}

/// When `wait` must return or look again: the caller's deadline, or the end of a socket's
/// rest (then it is polled again), whichever comes first; rests already over do not count.
fn wake_at(deadline: Option<Instant>, rests: [Option<Instant>; 2], now: Instant) -> Option<Instant> {
    rests.into_iter().flatten().filter(|&until| until > now).chain(deadline).min()
}

fn kernel_monitor() -> Result<Netlink, crate::netlink::Error> {
    // Routes matter only where the kernel decides "routable" (no networkd), and are cheap.
    let mut monitor = Netlink::monitor(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_TC | RTMGRP_IPV4_ROUTE)?;
    // A fan's bridge's or underlay's forwarding turned off by someone: fanlink turns it back on.
    monitor.join(RTNLGRP_IPV4_NETCONF)?;
    // VNI filter changes (Linux 5.18, where vnifilter is): the kept VNIs are read again.
    // An older kernel has no such group and no VNI filters either.
    if let Err(e) = monitor.join(RTNLGRP_TUNNEL) {
        log::debug!("no vxlan VNI events: {e}");
    }
    let flags = nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(monitor.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| crate::netlink::Error::new("open netlink monitor", e))?;
    Ok(monitor)
}

/// nftables changes (any table, chain or rule, by anyone: `nft`, iptables-nft, Docker), so
/// a deleted NAT table is restored and a firewall that appears later gets the accept rules.
/// A bare NETLINK_NETFILTER socket in the NFNLGRP_NFTABLES group: a datagram per changed
/// object, then one NFT_MSG_NEWGEN per transaction.
fn firewall_monitor() -> nix::Result<OwnedFd> {
    use nix::sys::socket::{bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};
    /// `1 << (NFNLGRP_NFTABLES - 1)`, NFNLGRP_NFTABLES = 7.
    const NFTABLES_GROUP: u32 = 1 << 6;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, NFTABLES_GROUP))?;
    Ok(fd)
}

/// The control socket's path in the runtime directory.
pub fn control_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("control")
}

/// Serves `status` on a unix socket only root can reach (directory 0700, socket 0600).
/// One line in ("status"), one JSON document out.
pub fn spawn_control(runtime_dir: &Path, waker: Waker) -> std::io::Result<()> {
    std::fs::create_dir_all(runtime_dir)?;
    std::fs::set_permissions(runtime_dir, std::fs::Permissions::from_mode(0o700))?;
    let path = control_path(runtime_dir);
    let listener = bind_control(&path, STALE_GRACE)?;
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
            if !waker.send(Event::Status(reply)) {
                return;
            }
            if let Ok(json) = answer.recv_timeout(Duration::from_secs(5)) {
                let _ = (&stream).write_all(json.as_bytes());
            }
        }
    })?;
    Ok(())
}

/// How long a control socket that still accepts connections may take to go away before it is
/// taken for a running daemon's.
const STALE_GRACE: Duration = Duration::from_secs(2);

/// Binds the control socket at `path`. A socket left by a daemon that was killed is removed
/// first: nothing listens on it any more, so connect() is refused. Something may still hold
/// a killed daemon's listener for a moment, though: a child it had forked and that had not
/// exec'd yet keeps a copy of every descriptor until exec closes it. That made a restart
/// right after `kill -9` fail with "Address already in use" (connect() succeeded, so the
/// file stayed). So a socket that accepts is asked again until `grace` has passed; only then
/// is it another daemon's, and left alone.
fn bind_control(path: &Path, grace: Duration) -> std::io::Result<UnixListener> {
    let deadline = Instant::now() + grace;
    loop {
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
            match UnixListener::bind(path) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {}
                bound => return bound,
            }
        } else if Instant::now() >= deadline {
            let why = format!("another daemon answers on it (for {grace:?})");
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, why));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fanlink-control-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_killed_daemons_socket_is_taken_over_also_while_a_child_still_holds_it_for_a_moment() {
        let dir = scratch("stale");
        let path = dir.join("control");
        // Left by a daemon that was killed: the file stays, nothing listens.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        drop(bind_control(&path, Duration::from_secs(2)).expect("a stale socket is replaced"));
        // Still listening for 300 ms, as in a child between fork and exec when its parent
        // was killed; then closed.
        drop(std::fs::remove_file(&path));
        let held = UnixListener::bind(&path).unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let started = Instant::now();
        let bound = bind_control(&path, Duration::from_secs(2));
        holder.join().unwrap();
        assert!(bound.is_ok(), "{bound:?}");
        assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_running_daemons_socket_is_left_alone() {
        let dir = scratch("live");
        let path = dir.join("control");
        let live = UnixListener::bind(&path).unwrap();
        let e = bind_control(&path, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains("another daemon answers on it"), "{e}");
        // Its socket still reaches it.
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(live.accept().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_resting_socket_wakes_the_loop_when_its_rest_ends_unless_the_deadline_is_first() {
        let now = Instant::now();
        let (soon, later) = (now + Duration::from_millis(10), now + Duration::from_secs(1));
        assert_eq!(wake_at(None, [None, None], now), None);
        assert_eq!(wake_at(Some(later), [None, None], now), Some(later));
        assert_eq!(wake_at(None, [Some(later), None], now), Some(later));
        assert_eq!(wake_at(Some(later), [None, Some(soon)], now), Some(soon));
        assert_eq!(wake_at(Some(soon), [Some(later), Some(later)], now), Some(soon));
        // A rest that is over is no reason to wake: without a deadline, wait for events.
        assert_eq!(wake_at(None, [Some(now), Some(now - Duration::from_millis(1))], now), None);
    }
}
