//! fanlink's own D-Bus connection: `wire.rs` for the format, this file for the socket.
//!
//! No thread of its own reads the socket. Its owner polls it with everything else it waits
//! on and calls [`Bus::pump`] when it is readable; a call writes its message and reads the
//! socket itself until its reply comes. Either way, every message read that is not the
//! awaited reply goes to `inbound` (the networkd reader), in the order the bus sent it. The
//! daemon's worker does both, so a signal reaches it with no thread hop: a dedicated reader
//! thread cost a second wakeup per signal, and the worker waited for that thread's
//! hand-over.
//!
//! Incoming messages are read in place (`wire.rs`): only the awaited reply is copied out,
//! for its caller; signals reach `inbound` as a view of the read buffer, which is reused, so
//! a signal costs no allocation here.
//!
//! Only `unix:path=` addresses (the system bus's, and the harness's) and the EXTERNAL
//! mechanism (the kernel vouches for our uid): all a system daemon needs.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::frames::Frames;
use super::wire::{self, Arg, Call, Kind};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::MsgFlags;

/// Calls written on every connection of the process, for the daemon's counters (`status`).
static CALLS: AtomicU64 = AtomicU64::new(0);

/// How many method calls this process has sent on the bus.
pub fn calls_made() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// How long a call waits for its reply (each answer of a batch gives the next one as long).
/// Short: the worker that calls also serves the kernel's events and `status`, so a call
/// that is never answered (its reply lost, networkd stuck) must not hold it for
/// dbus-daemon's 25 s. A call that times out is a failed resync, retried with backoff.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages larger than this are read and dropped whole: nothing fanlink is sent legitimately
/// comes near it (a ListLinks reply of a thousand links is ~60 KiB), and a forged giant must
/// not become an allocation. dbus-daemon forwards only messages that it validated, so such
/// a length is true and the next message starts after it; ending the connection instead
/// would let any local user make fanlink reconnect and resync at will.
pub(super) const MAX_MESSAGE: usize = 1 << 20;
/// The specification's maximum message length (2^27): a header that claims more is no
/// D-Bus message, and the stream has lost its framing.
pub(super) const SPEC_MAX_MESSAGE: usize = 1 << 27;
/// The read buffer's first size, and the least room one read is given: a flap's signals are
/// ~1 KiB, a ListLinks reply of a few dozen links ~3 KiB.
pub(super) const READ_CHUNK: usize = 16 << 10;
/// Calls awaiting replies at once in `call_all`: dbus-daemon refuses calls beyond its
/// `max_replies_per_connection` (128 where the configuration leaves its default), and more in
/// flight would not make networkd answer sooner.
const WINDOW: usize = 32;
/// Reads one `pump` makes at most: a flood of messages must not keep the worker from its
/// other sources (the socket stays readable, and the next poll comes back here).
const PUMP_READS: usize = 16;

/// What the connection hands to `inbound`.
pub(crate) enum Inbound<'a> {
    /// A message, in the order the bus sent it (replies too, except the one a call awaited).
    Message(wire::Message<'a>),
    /// A message over `MAX_MESSAGE` was dropped unread: nothing legitimate sends fanlink one,
    /// and a flood of them fills the bus's queue for us, which then drops networkd's signals.
    Oversized,
    /// The connection was lost (EOF or an error); the last call. Not made when we hung up.
    Ended(&'a std::io::Error),
}

type InboundFn = Box<dyn FnMut(Inbound<'_>) + Send>;

/// Why a connection or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: fanlink connects to unix:path= addresses only")]
    Address(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the bus refused EXTERNAL authentication: {0}")]
    Handshake(String),
    /// An error reply: its name and, where it sent one, its message.
    #[error("{name}: {message}")]
    Method { name: String, message: String },
    #[error("an unexpected reply: {0}")]
    Reply(String),
    #[error("a call the bus would refuse: {0}")]
    Invalid(&'static str),
}

impl Error {
    /// The error reply's name, for an error reply.
    pub fn name(&self) -> Option<&str> {
        match self {
            Error::Method { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// A method's return, kept whole for its caller to read.
#[derive(Debug)]
pub struct Reply {
    bytes: Vec<u8>,
}

impl Reply {
    /// The body, read by `read`: it must be of type `signature` and `read` must take all of
    /// it; anything else is `Error::Reply`.
    pub(crate) fn read<T>(
        &self,
        signature: &str,
        read: impl FnOnce(&mut wire::Cursor<'_>) -> Option<T>,
    ) -> Result<T, Error> {
        let msg = wire::Message::parse(&self.bytes).map_err(|why| Error::Reply(why.to_owned()))?;
        if msg.signature != signature {
            return Err(Error::Reply(format!("of type \"{}\", not \"{signature}\"", msg.signature)));
        }
        let mut body = msg.body();
        match read(&mut body) {
            Some(value) if body.at_end() => Ok(value),
            _ => Err(Error::Reply(format!("a body of type \"{signature}\" that does not decode"))),
        }
    }

    /// A reply of one string (Hello, GetNameOwner).
    pub(crate) fn string(&self) -> Result<String, Error> {
        self.read("s", |body| body.string().map(str::to_owned))
    }
}

/// A connection to a bus. Any thread may use it; a call holds it until its reply is read.
pub struct Bus {
    state: Mutex<State>,
    /// The socket, for polling; reads and writes go through `state`.
    fd: UnixStream,
    unique_name: String,
    /// Set before we close the socket ourselves: the end that follows is no loss.
    closing: AtomicBool,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("unique_name", &self.unique_name).finish_non_exhaustive()
    }
}

struct State {
    stream: UnixStream,
    frames: Frames,
    /// The last serial sent (0: none yet), and the buffer a call is stamped in.
    serial: u32,
    out: Vec<u8>,
    inbound: InboundFn,
    /// The connection ended: nothing more is read or written.
    ended: bool,
}

impl Bus {
    /// Connects to `address`, authenticates and says Hello. Every message read from then on
    /// that no call awaits goes to `inbound`, the Hello's neighbours too.
    pub(crate) fn open(
        address: &str,
        inbound: impl FnMut(Inbound<'_>) + Send + 'static,
    ) -> Result<Bus, Error> {
        let path = super::unix_path(address).ok_or_else(|| Error::Address(address.to_owned()))?;
        let mut stream = UnixStream::connect(&path)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        authenticate(&mut stream, &mut reader)?;
        stream.set_read_timeout(None)?;
        let mut frames = Frames::default();
        // Whatever the bus sent after its OK (nothing, in practice) is the first message's start.
        frames.extend(reader.buffer());
        let state = State {
            stream: stream.try_clone()?,
            frames,
            serial: 0,
            out: Vec::new(),
            inbound: Box::new(inbound),
            ended: false,
        };
        let mut bus = Bus {
            state: Mutex::new(state),
            fd: stream,
            unique_name: String::new(),
            closing: AtomicBool::new(false),
        };
        let hello = bus.call_method(super::BUS_NAME, super::BUS_PATH, super::BUS_NAME, "Hello", &[])?;
        bus.unique_name = hello.string()?;
        Ok(bus)
    }

    /// Our unique name on the bus.
    pub fn unique_name(&self) -> &str {
        &self.unique_name
    }

    /// The socket to poll for reading, then [`Bus::pump`]; `None` once the connection ended.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        let ended = self.state.lock().expect("bus state").ended;
        (!ended).then(|| self.fd.as_fd())
    }

    /// Reads what the socket holds, without waiting, and hands every whole message to
    /// `inbound`; at the end of the connection, `Ended`.
    pub fn pump(&self) {
        let mut state = self.state.lock().expect("bus state");
        for _ in 0..PUMP_READS {
            if state.ended || !self.deliver_queued(&mut state) {
                return;
            }
            match state.read() {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => return self.end(&mut state, e),
            }
        }
        self.deliver_queued(&mut state);
    }

    /// Calls `member` and returns the reply; an error reply becomes `Error::Method`.
    pub(crate) fn call_method(
        &self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        args: &[Arg<'_>],
    ) -> Result<Reply, Error> {
        self.call(method_call(destination, path, interface, member, args)?)
    }

    /// Writes `call` and reads until its reply; what comes before it goes to `inbound`, and
    /// so does every whole message read after it, so nothing read waits for the next poll.
    fn call(&self, call: Call) -> Result<Reply, Error> {
        self.call_all(&[call]).pop().expect("one reply per call")
    }

    /// Calls each of `calls`, with up to `WINDOW` of them awaiting replies at once, and returns
    /// the replies in the same order (an error reply as `Error::Method`): the round trips
    /// overlap instead of adding up. What is read besides goes to `inbound`, in order.
    pub(crate) fn call_all(&self, calls: &[Call]) -> Vec<Result<Reply, Error>> {
        let mut replies: Vec<Option<Result<Reply, Error>>> = calls.iter().map(|_| None).collect();
        // (serial, index into `calls`) of the calls sent and not answered yet.
        let mut awaited: Vec<(u32, usize)> = Vec::new();
        let mut unsent = calls.iter().enumerate();
        let mut state = self.state.lock().expect("bus state");
        let mut deadline = Instant::now() + CALL_TIMEOUT;
        let mut timed_out = false;
        loop {
            while awaited.len() < WINDOW && !state.ended {
                let Some((at, call)) = unsent.next() else { break };
                // Serials only have to be unique among our calls awaiting replies; 0 is invalid.
                state.serial = state.serial.checked_add(1).unwrap_or(1);
                let serial = state.serial;
                let State { stream, out, .. } = &mut *state;
                call.stamped(serial, out);
                CALLS.fetch_add(1, Ordering::Relaxed);
                match stream.write_all(out) {
                    Ok(()) => awaited.push((serial, at)),
                    Err(e) => self.end(&mut state, e),
                }
            }
            if self.deliver_replies(&mut state, &mut awaited, &mut replies) {
                // Each answer gives the next one the whole timeout again.
                deadline = Instant::now() + CALL_TIMEOUT;
            }
            if state.ended || (awaited.is_empty() && unsent.len() == 0) {
                break;
            }
            if awaited.len() < WINDOW && unsent.len() > 0 {
                // Answers made room: send the next calls before waiting for more.
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                timed_out = true;
                break;
            }
            if let Err(e) = state.wait_readable(left).and_then(|_| state.read().map(|_| ())) {
                self.end(&mut state, e);
            }
        }
        self.deliver_queued(&mut state);
        let unanswered = || match timed_out {
            true => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply in {} s", CALL_TIMEOUT.as_secs()),
            ),
            false => std::io::Error::new(std::io::ErrorKind::NotConnected, "the bus connection is closed"),
        };
        replies.into_iter().map(|reply| reply.unwrap_or_else(|| Err(unanswered().into()))).collect()
    }

    /// Hands on the whole messages read so far, except replies to `awaited` calls, which go to
    /// their slots in `replies`. Says whether any came.
    fn deliver_replies(
        &self,
        state: &mut State,
        awaited: &mut Vec<(u32, usize)>,
        replies: &mut [Option<Result<Reply, Error>>],
    ) -> bool {
        let mut answered = false;
        loop {
            if state.frames.take_oversized() {
                (state.inbound)(Inbound::Oversized);
            }
            let bytes = match state.frames.next() {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    if state.frames.take_oversized() {
                        (state.inbound)(Inbound::Oversized);
                    }
                    return answered;
                }
                Err(e) => {
                    self.end(state, e);
                    return answered;
                }
            };
            let Some(msg) = parse(bytes) else { continue };
            let reply_to = match msg.kind {
                Kind::MethodReturn | Kind::Error => msg.reply_serial,
                _ => None,
            };
            match reply_to.and_then(|serial| awaited.iter().position(|&(s, _)| s == serial)) {
                Some(slot) => {
                    let (_, at) = awaited.swap_remove(slot);
                    replies[at] = Some(reply(&msg));
                    answered = true;
                }
                None => (state.inbound)(Inbound::Message(msg)),
            }
        }
    }

    /// Hands on every whole message read so far; `false` if the framing was lost (the
    /// connection has ended then).
    fn deliver_queued(&self, state: &mut State) -> bool {
        loop {
            if state.frames.take_oversized() {
                (state.inbound)(Inbound::Oversized);
            }
            match state.frames.next() {
                Ok(Some(bytes)) => {
                    if let Some(msg) = parse(bytes) {
                        (state.inbound)(Inbound::Message(msg));
                    }
                }
                Ok(None) => {
                    if state.frames.take_oversized() {
                        (state.inbound)(Inbound::Oversized);
                    }
                    return true;
                }
                Err(e) => {
                    self.end(state, e);
                    return false;
                }
            }
        }
    }

    /// The connection is over: reported to `inbound` unless we hung up ourselves.
    fn end(&self, state: &mut State, why: std::io::Error) {
        if state.ended {
            return;
        }
        state.ended = true;
        if self.closing.load(Ordering::Acquire) {
            log::debug!("bus connection closed by us: {why}");
        } else {
            (state.inbound)(Inbound::Ended(&why));
        }
    }

    /// Hangs up: nothing more is read, waiting calls fail, `inbound` hears no `Ended`.
    pub fn close(&self) -> std::io::Result<()> {
        self.closing.store(true, Ordering::Release);
        self.fd.shutdown(std::net::Shutdown::Both)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        // Already closed, or the bus is gone: nothing left to do either way.
        let _ = self.close();
    }
}

impl State {
    /// Reads what the socket has now, without waiting. `Ok(false)`: nothing was there; EOF
    /// is an error (the connection ended).
    fn read(&mut self) -> std::io::Result<bool> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.stream);
        let room = self.frames.room();
        loop {
            return match nix::sys::socket::recv(fd, room, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the bus hung up")),
                Ok(n) => {
                    self.frames.filled(n);
                    Ok(true)
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => Ok(false),
                Err(e) => Err(e.into()),
            };
        }
    }

    /// Waits until the socket is readable (or hung up), at most `left`.
    fn wait_readable(&self, left: Duration) -> std::io::Result<()> {
        let ms = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, ms) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A method call to `destination`, for [`Bus::call_all`].
pub(crate) fn method_call(
    destination: &str,
    path: &str,
    interface: &str,
    member: &str,
    args: &[Arg<'_>],
) -> Result<Call, Error> {
    Call::new(destination, path, interface, member, args).map_err(Error::Invalid)
}

/// A reply to a call: a return kept whole, an error by its name and message.
fn reply(msg: &wire::Message<'_>) -> Result<Reply, Error> {
    match msg.kind {
        Kind::Error => {
            let message = match msg.signature.starts_with('s') {
                true => msg.body().string().unwrap_or_default(),
                false => "",
            };
            let name = msg.error_name.unwrap_or_default();
            Err(Error::Method { name: name.to_owned(), message: message.to_owned() })
        }
        _ => Ok(Reply { bytes: msg.bytes().to_vec() }),
    }
}

/// A message's header, or `None` (logged) for one that does not decode: dropped, like any
/// message fanlink cannot read.
fn parse(bytes: &[u8]) -> Option<wire::Message<'_>> {
    wire::Message::parse(bytes)
        .inspect_err(|why| log::debug!("dropped an undecodable D-Bus message: {why}"))
        .ok()
}

/// SASL EXTERNAL (D-Bus specification, "Authentication Protocol"): a NUL byte, our uid in
/// hex-encoded decimal, `OK <server guid>` back, then BEGIN. No unix fd passing is
/// negotiated, so the bus sends us none.
fn authenticate(stream: &mut UnixStream, reader: &mut impl BufRead) -> Result<(), Error> {
    let uid = nix::unistd::Uid::current().as_raw().to_string();
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    stream.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
    let mut line = Vec::new();
    reader.take(512).read_until(b'\n', &mut line)?;
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK ") {
        return Err(Error::Handshake(line.trim_end().escape_debug().to_string()));
    }
    Ok(stream.write_all(b"BEGIN\r\n")?)
}

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
