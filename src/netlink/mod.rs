//! A small rtnetlink client: the message codec, requests with acks, and dumps.
//!
//! Hand-rolled on purpose (see Cargo.toml): fanlink needs vxlan vnifilter, RTM_NEWTUNNEL and
//! cls_bpf options, and the whole protocol surface it uses fits in these files. `msg` is the
//! pure codec; this file owns the socket; `link`, `addr`, `vni`, `tc` and `monitor` are the
//! typed operations, each an `impl Netlink` block.

pub mod addr;
pub mod link;
pub mod monitor;
pub mod msg;
pub mod nfnl;
pub mod route;
pub mod tc;
pub mod vni;

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use log::{debug, trace};
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};

use msg::{MsgBuilder, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR};

pub use addr::AddrInfo;
pub use link::{LinkChanges, LinkInfo, LinkRef, NewBridge, NewVeth, NewVxlan, VxlanInfo};
pub use monitor::Event;
pub use route::RouteInfo;
pub use tc::FilterInfo;

/// A failed netlink operation, with what was being done and what the kernel said.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    /// What fanlink was doing, e.g. "create vxlan" or "RTM_NEWLINK".
    pub op: String,
    /// The interface concerned, where the operation knows it by name.
    pub ifname: Option<String>,
    pub errno: Errno,
    /// The kernel's extended-ack reason (NLMSGERR_ATTR_MSG), e.g. "VNI in use".
    pub ext_ack: Option<String>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.ifname {
            write!(f, "{name}: ")?;
        }
        write!(f, "{}: {}", self.op, self.errno)?;
        if let Some(msg) = &self.ext_ack {
            write!(f, " ({msg})")?;
        }
        Ok(())
    }
}

impl Error {
    pub fn new(op: impl Into<String>, errno: Errno) -> Self {
        Error { op: op.into(), ifname: None, errno, ext_ack: None }
    }

    /// Replaces the generic op (the message type) with what the caller was doing.
    pub fn context(mut self, op: impl Into<String>, ifname: Option<&str>) -> Self {
        self.op = op.into();
        if let Some(name) = ifname {
            self.ifname = Some(name.to_owned());
        }
        self
    }

    /// Names the interface, for callers that addressed it by index.
    pub fn on(mut self, ifname: &str) -> Self {
        self.ifname = Some(ifname.to_owned());
        self
    }

    /// The object already exists (a second create with NLM_F_EXCL).
    pub fn is_exists(&self) -> bool {
        self.errno == Errno::EEXIST
    }

    /// The object is gone: rtnetlink says ENODEV for links; the typed operations report every
    /// other "not there" as ENOENT, whatever the kernel's own errno.
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno, Errno::ENOENT | Errno::ENODEV)
    }
}

/// Turns the two "already in that state" errors into `Ok(false)`, so an idempotent apply can
/// say whether it changed anything: `nl.add_clsact(i).exists_ok()?`.
pub trait Tolerate {
    fn exists_ok(self) -> Result<bool, Error>;
    fn missing_ok(self) -> Result<bool, Error>;
}

impl<T> Tolerate for Result<T, Error> {
    fn exists_ok(self) -> Result<bool, Error> {
        match self {
            Ok(_) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn missing_ok(self) -> Result<bool, Error> {
        match self {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Requests (and dumps) sent on every netlink socket of the process, for the daemon's
/// "requests per event" figure.
static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many netlink requests (rtnetlink and nf_tables, dumps included) this process sent.
pub fn requests_sent() -> u64 {
    REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
}

fn count_request() {
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

const SOL_NETLINK: libc::c_int = 270;
/// Echo only the header of a failed request, not the whole request, in NLMSG_ERROR.
const NETLINK_CAP_ACK: libc::c_int = 10;
/// Ask for extended acks: the kernel's reason string comes back with the errno.
const NETLINK_EXT_ACK: libc::c_int = 11;
/// A dump whose generation changed underneath is retried this many times.
const DUMP_RETRIES: usize = 5;

/// A NETLINK_ROUTE socket. One request is in flight at a time; replies are matched by
/// sequence number so leftovers of an aborted exchange are skipped.
pub struct Netlink {
    fd: OwnedFd,
    pid: u32,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// A socket for requests and dumps, in the calling thread's network namespace.
    pub fn new() -> Result<Self, Error> {
        Self::open(SockProtocol::NetlinkRoute, 0)
    }

    fn open(protocol: SockProtocol, groups: u32) -> Result<Self, Error> {
        let err = |e| Error::new("open netlink socket", e);
        let fd = socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, protocol)
            .map_err(err)?;
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            set_int_opt(&fd, SOL_NETLINK, opt, 1).map_err(err)?;
        }
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(err)?;
        let pid = socket::getsockname::<NetlinkAddr>(fd.as_raw_fd()).map_err(err)?.pid();
        // Start from a time-derived number so that replies meant for an earlier process
        // that had the same port id cannot match.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        Ok(Netlink { fd, pid, seq, buf: vec![0; 64 * 1024] })
    }

    /// Sends `msg` with NLM_F_ACK and waits for the kernel's verdict.
    pub fn request(&mut self, msg: MsgBuilder) -> Result<(), Error> {
        let op = type_name(msg.ty());
        let (data, _) = self.exchange(msg, NLM_F_ACK)?;
        if !data.is_empty() {
            debug!("{op}: ignoring {} unexpected reply messages", data.len());
        }
        Ok(())
    }

    /// Sends a non-dump query (NLM_F_ACK) and returns the payloads of its replies.
    pub fn get(&mut self, msg: MsgBuilder) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.exchange(msg, NLM_F_ACK)?.0)
    }

    /// Sends `msg` with NLM_F_DUMP and collects every reply payload (after the nlmsghdr)
    /// until NLMSG_DONE. A dump the kernel marks inconsistent (a link came or went while it
    /// was being written) is redone.
    pub fn dump(&mut self, msg: MsgBuilder) -> Result<Vec<Vec<u8>>, Error> {
        for _ in 0..DUMP_RETRIES {
            let (data, interrupted) = self.exchange(msg.clone(), NLM_F_DUMP)?;
            if !interrupted {
                return Ok(data);
            }
            debug!("{}: dump interrupted, retrying", type_name(msg.ty()));
        }
        Err(Error::new(type_name(msg.ty()), Errno::EAGAIN))
    }

    fn exchange(&mut self, mut msg: MsgBuilder, flags: u16) -> Result<(Vec<Vec<u8>>, bool), Error> {
        let op = type_name(msg.ty());
        msg.add_flags(flags);
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq, 0);
        trace!("netlink send {op}: {}", hex(&bytes));
        count_request();
        socket::send(self.fd.as_raw_fd(), &bytes, MsgFlags::empty()).map_err(|e| Error::new(&op, e))?;

        let (mut out, mut interrupted) = (Vec::new(), false);
        loop {
            let n = self.recv().map_err(|e| Error::new(&op, e))?;
            let buf = &self.buf[..n];
            trace!("netlink recv {op}: {}", hex(buf));
            for m in msg::messages(buf) {
                let m = m.map_err(|e| malformed(&op, e))?;
                if m.seq != seq || m.pid != self.pid {
                    trace!("skipping stale reply seq {} (want {seq})", m.seq);
                    continue;
                }
                let status = match m.ty {
                    NLMSG_ERROR => msg::parse_error(&m).map_err(|e| malformed(&op, e))?,
                    NLMSG_DONE => msg::parse_done(&m),
                    NLMSG_OVERRUN => return Err(Error::new(&op, Errno::ENOBUFS)),
                    msg::NLMSG_NOOP => continue,
                    _ => {
                        interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                        out.push(m.payload.to_vec());
                        continue;
                    }
                };
                if status.errno != 0 {
                    let mut e = Error::new(&op, Errno::from_raw(status.errno));
                    e.ext_ack = status.ext_ack;
                    return Err(e);
                }
                if let Some(warning) = status.ext_ack {
                    debug!("{op}: kernel says: {warning}");
                }
                return Ok((out, interrupted));
            }
        }
    }

    /// Receives one datagram into `self.buf`, growing it first if the datagram is larger:
    /// a zero-length MSG_PEEK|MSG_TRUNC read returns the real size without consuming it.
    fn recv(&mut self) -> Result<usize, Errno> {
        let fd = self.fd.as_raw_fd();
        let flags = libc::MSG_PEEK | libc::MSG_TRUNC;
        // SAFETY: a zero-length read writes nothing, so the null buffer is never touched.
        let size = retry_eintr(|| Errno::result(unsafe { libc::recv(fd, std::ptr::null_mut(), 0, flags) }))?;
        if size as usize > self.buf.len() {
            self.buf.resize(size as usize, 0);
        }
        retry_eintr(|| socket::recv(fd, &mut self.buf, MsgFlags::empty()))
    }
}

fn retry_eintr<T>(mut f: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

impl AsFd for Netlink {
    /// For `poll`: a monitor socket is readable when events are queued.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn set_int_opt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> Result<(), Errno> {
    // SAFETY: a valid fd and a pointer to a live c_int of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

pub(crate) fn malformed(op: &str, e: msg::DecodeError) -> Error {
    debug!("{op}: {e}");
    Error::new(op, Errno::EBADMSG)
}

/// The rtnetlink message type's name, the default `op` of an error.
fn type_name(ty: u16) -> String {
    let name = match ty {
        16 => "RTM_NEWLINK",
        17 => "RTM_DELLINK",
        18 => "RTM_GETLINK",
        19 => "RTM_SETLINK",
        20 => "RTM_NEWADDR",
        21 => "RTM_DELADDR",
        22 => "RTM_GETADDR",
        36 => "RTM_NEWQDISC",
        37 => "RTM_DELQDISC",
        38 => "RTM_GETQDISC",
        44 => "RTM_NEWTFILTER",
        45 => "RTM_DELTFILTER",
        46 => "RTM_GETTFILTER",
        120 => "RTM_NEWTUNNEL",
        121 => "RTM_DELTUNNEL",
        122 => "RTM_GETTUNNEL",
        0x0a01 => "NFT_MSG_GETTABLE",
        0x0a04 => "NFT_MSG_GETCHAIN",
        0x0a07 => "NFT_MSG_GETRULE",
        _ => return format!("netlink message type {ty}"),
    };
    name.to_owned()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_link_op_errno_and_reason() {
        let mut e = Error::new("RTM_NEWTUNNEL", Errno::EADDRINUSE).context("add vni 7", Some("fan-vx"));
        e.ext_ack = Some("VNI in use".into());
        assert_eq!(e.to_string(), "fan-vx: add vni 7: EADDRINUSE: Address already in use (VNI in use)");
        assert_eq!(Error::new("x", Errno::EPERM).to_string(), "x: EPERM: Operation not permitted");
    }

    #[test]
    fn tolerate_only_the_named_errno() {
        let exists: Result<(), Error> = Err(Error::new("x", Errno::EEXIST));
        assert!(!exists.exists_ok().unwrap());
        assert!(Err::<(), _>(Error::new("x", Errno::EEXIST)).missing_ok().is_err());
        assert!(!Err::<(), _>(Error::new("x", Errno::ENODEV)).missing_ok().unwrap());
        assert!(Ok::<(), Error>(()).exists_ok().unwrap());
    }
}
