//! fanlink's own D-Bus connection: zbus for the wire format (building and decoding
//! messages), this file for the socket.
//!
//! No thread of its own reads the socket. Its owner polls it with everything else it waits
//! on and calls [`Bus::pump`] when it is readable; a call writes its message and reads the
//! socket itself until its reply comes. Either way, every message read that is not the
//! awaited reply goes to `inbound` (the networkd reader), in the order the bus sent it. The
//! daemon's worker does both, so a signal reaches it with no thread hop: a dedicated reader
//! thread cost a second wakeup per signal, and the worker waited for that thread's
//! hand-over.
//!
//! Incoming messages are read in place (`wire.rs`): only the awaited reply becomes a
//! `zbus::Message`, for its caller; signals reach `inbound` as a view of the read buffer,
//! which is reused, so a signal costs no allocation here.
//!
//! Only `unix:path=` addresses (the system bus's, and the harness's) and the EXTERNAL
//! mechanism (the kernel vouches for our uid): all a system daemon needs.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::MsgFlags;
use serde::Serialize;
use zbus::message::Type;
use zbus::zvariant::{serialized::Context, serialized::Data, DynamicType, Endian};
use zbus::Message;

use super::wire::{self, message_length, Kind, FIXED_HEADER};

/// How long a call waits for its reply: dbus-daemon's own default reply timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(25);
/// Messages larger than this are read and dropped whole: nothing fanlink is sent legitimately
/// comes near it (a ListLinks reply of a thousand links is ~60 KiB), and a forged giant must
/// not become an allocation.
const MAX_MESSAGE: usize = 1 << 20;
/// The read buffer's first size, and the least room one read is given: a flap's signals are
/// ~1 KiB, a ListLinks reply of a few dozen links ~3 KiB.
const READ_CHUNK: usize = 16 << 10;
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
    /// The connection was lost (EOF or an error); the last call. Not made when we hung up.
    Ended(&'a std::io::Error),
}

type InboundFn = Box<dyn FnMut(Inbound<'_>) + Send>;

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
    ) -> zbus::Result<Bus> {
        let path = super::unix_path(address).ok_or_else(|| {
            zbus::Error::Address(format!("{address}: fanlink connects to unix:path= addresses only"))
        })?;
        let mut stream = UnixStream::connect(&path).map_err(io)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
        authenticate(&mut stream, &mut reader)?;
        stream.set_read_timeout(None).map_err(io)?;
        let mut frames = Frames::default();
        // Whatever the bus sent after its OK (nothing, in practice) is the first message's start.
        frames.extend(reader.buffer());
        let state = State {
            stream: stream.try_clone().map_err(io)?,
            frames,
            inbound: Box::new(inbound),
            ended: false,
        };
        let mut bus = Bus {
            state: Mutex::new(state),
            fd: stream,
            unique_name: String::new(),
            closing: AtomicBool::new(false),
        };
        let hello = bus.call_method(super::BUS_NAME, super::BUS_PATH, super::BUS_NAME, "Hello", &())?;
        bus.unique_name = hello.body().deserialize::<String>()?;
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

    /// Calls `member` and returns the reply; an error reply becomes `zbus::Error::MethodError`.
    pub fn call_method<B: Serialize + DynamicType>(
        &self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        body: &B,
    ) -> zbus::Result<Message> {
        self.call(method_call(destination, path, interface, member, body)?)
    }

    /// Writes `msg` and reads until its reply; what comes before it goes to `inbound`, and
    /// so does every whole message read after it, so nothing read waits for the next poll.
    fn call(&self, msg: Message) -> zbus::Result<Message> {
        self.call_all(&[msg]).pop().expect("one reply per call")
    }

    /// Calls each of `calls`, with up to `WINDOW` of them awaiting replies at once, and returns
    /// the replies in the same order (an error reply as `zbus::Error::MethodError`): the round
    /// trips overlap instead of adding up. What is read besides goes to `inbound`, in order.
    pub fn call_all(&self, calls: &[Message]) -> Vec<zbus::Result<Message>> {
        let mut replies: Vec<Option<zbus::Result<Message>>> = calls.iter().map(|_| None).collect();
        // (serial, index into `calls`) of the calls sent and not answered yet.
        let mut awaited: Vec<(u32, usize)> = Vec::new();
        let mut unsent = calls.iter().enumerate();
        let mut state = self.state.lock().expect("bus state");
        let mut deadline = Instant::now() + CALL_TIMEOUT;
        let mut timed_out = false;
        loop {
            while awaited.len() < WINDOW && !state.ended {
                let Some((at, msg)) = unsent.next() else { break };
                match state.stream.write_all(msg.data()) {
                    Ok(()) => awaited.push((msg.primary_header().serial_num().get(), at)),
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
            true => io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply in {} s", CALL_TIMEOUT.as_secs()),
            )),
            false => closed(),
        };
        replies
            .into_iter()
            .map(|reply| match reply.unwrap_or_else(|| Err(unanswered()))? {
                reply if reply.message_type() == Type::Error => Err(zbus::Error::from(reply)),
                reply => Ok(reply),
            })
            .collect()
    }

    /// Hands on the whole messages read so far, except replies to `awaited` calls, which go to
    /// their slots in `replies` (as zbus's messages). Says whether any came.
    fn deliver_replies(
        &self,
        state: &mut State,
        awaited: &mut Vec<(u32, usize)>,
        replies: &mut [Option<zbus::Result<Message>>],
    ) -> bool {
        let mut answered = false;
        loop {
            let bytes = match state.frames.next() {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return answered,
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
                    replies[at] = Some(to_zbus(&msg));
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
            match state.frames.next() {
                Ok(Some(bytes)) => {
                    if let Some(msg) = parse(bytes) {
                        (state.inbound)(Inbound::Message(msg));
                    }
                }
                Ok(None) => return true,
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
pub fn method_call<B: Serialize + DynamicType>(
    destination: &str,
    path: &str,
    interface: &str,
    member: &str,
    body: &B,
) -> zbus::Result<Message> {
    Message::method_call(path, member)?.destination(destination)?.interface(interface)?.build(body)
}

fn io(e: std::io::Error) -> zbus::Error {
    zbus::Error::InputOutput(Arc::new(e))
}

fn closed() -> zbus::Error {
    io(std::io::Error::new(std::io::ErrorKind::NotConnected, "the bus connection is closed"))
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
fn authenticate(stream: &mut UnixStream, reader: &mut impl BufRead) -> zbus::Result<()> {
    let uid = nix::unistd::Uid::current().as_raw().to_string();
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    stream.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes()).map_err(io)?;
    let mut line = Vec::new();
    reader.take(512).read_until(b'\n', &mut line).map_err(io)?;
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK ") {
        return Err(zbus::Error::Handshake(format!(
            "the bus refused EXTERNAL authentication: {}",
            line.trim_end().escape_debug()
        )));
    }
    stream.write_all(b"BEGIN\r\n").map_err(io)
}

/// A reply as zbus's message, for the caller to deserialize its body.
fn to_zbus(msg: &wire::Message<'_>) -> zbus::Result<Message> {
    let endian = if msg.big_endian { Endian::Big } else { Endian::Little };
    // SAFETY: `from_bytes` is unsafe only in that the bytes may be badly encoded, and then it
    // returns an error or a message whose body fails to deserialize; these are exactly the
    // checks zbus's own socket reader makes before the same call (a whole message by the
    // lengths of its header, in the endianness its first byte names), and `wire` has read
    // the header already.
    unsafe { Message::from_bytes(Data::new(msg.bytes().to_vec(), Context::new_dbus(endian, 0))) }
}

/// The bytes read from the socket, cut into whole messages in order. The buffer is reused
/// (a signal costs no allocation) and grows only for a message larger than it; it returns
/// to its first size once such a message is handed on.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
    /// The unread part is `buf[start..end]`.
    start: usize,
    end: usize,
    /// Bytes of a message too large to keep, still to be dropped as they come.
    skip: usize,
    /// The whole length of the message at `start`, while it is not all read yet.
    wanted: usize,
}

impl Frames {
    /// Room for the next read: at least `READ_CHUNK`, and all the message at `start` still
    /// needs.
    fn room(&mut self) -> &mut [u8] {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if self.buf.len() > 4 * READ_CHUNK {
                self.buf = Vec::new();
            }
        }
        let need = READ_CHUNK.max(self.wanted.saturating_sub(self.end - self.start));
        if self.buf.len() - self.end < need {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.buf.len() - self.end < need {
                self.buf.resize(self.end + need, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into `room`.
    fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Appends `bytes` as if read.
    fn extend(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.room();
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.filled(n);
            bytes = &bytes[n..];
        }
    }

    /// The next whole message; `None` until it is all read. A message over `MAX_MESSAGE` is
    /// dropped as it comes, unkept; an `Err` is a stream that lost its framing, and the
    /// connection with it.
    fn next(&mut self) -> std::io::Result<Option<&[u8]>> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.end - self.start);
                self.start += n;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let unread = &self.buf[self.start..self.end];
            let Some(fixed) = unread.first_chunk::<FIXED_HEADER>() else { return Ok(None) };
            let Some(total) = message_length(fixed) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a D-Bus message header",
                ));
            };
            if total > MAX_MESSAGE {
                log::debug!("dropped a D-Bus message of {total} bytes (more than {MAX_MESSAGE})");
                self.skip = total;
                continue;
            }
            if unread.len() < total {
                self.wanted = total;
                return Ok(None);
            }
            self.wanted = 0;
            let at = self.start;
            self.start += total;
            return Ok(Some(&self.buf[at..at + total]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(member: &str) -> Message {
        Message::signal("/org/example", "org.example.I", member).unwrap().build(&("x", 7u32)).unwrap()
    }

    /// The members of the messages `frames` yields now.
    fn members(frames: &mut Frames) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(bytes) = frames.next().unwrap() {
            out.push(wire::Message::parse(bytes).unwrap().member.unwrap().to_owned());
        }
        out
    }

    #[test]
    fn messages_come_whole_and_in_order_however_the_reads_cut_them() {
        let (a, b) = (signal("A"), signal("B"));
        let wire = [&a.data()[..], &b.data()[..]].concat();
        for cut in [1, 3, 16, 17, wire.len()] {
            let mut frames = Frames::default();
            let mut seen = Vec::new();
            for piece in wire.chunks(cut) {
                frames.extend(piece);
                seen.extend(members(&mut frames));
            }
            assert_eq!(seen, ["A", "B"], "reads of {cut} bytes");
            assert_eq!(frames.start, frames.end, "nothing left over");
        }
    }

    #[test]
    fn a_reply_becomes_zbus_s_message_with_its_body() {
        let msg = signal("B");
        let mut frames = Frames::default();
        frames.extend(msg.data());
        let bytes = frames.next().unwrap().unwrap();
        let reply = to_zbus(&wire::Message::parse(bytes).unwrap()).unwrap();
        assert_eq!(reply.body().deserialize::<(String, u32)>().unwrap(), ("x".into(), 7));
    }

    #[test]
    fn lengths_of_both_endiannesses_and_garbage() {
        let msg = signal("A");
        let fixed: [u8; 16] = msg.data()[..16].try_into().unwrap();
        assert_eq!(message_length(&fixed), Some(msg.data().len()));
        // Big-endian: body 8, fields 5 -> 16 + 5 = 21, padded to 24, + 8.
        let mut big = [0u8; 16];
        big[0] = b'B';
        big[4..8].copy_from_slice(&8u32.to_be_bytes());
        big[12..16].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(message_length(&big), Some(32));
        let mut garbage = fixed;
        garbage[0] = b'x';
        assert_eq!(message_length(&garbage), None);
    }

    #[test]
    fn a_message_too_large_is_dropped_as_it_comes_and_the_next_one_read() {
        let mut giant = [0u8; 16];
        giant[0] = b'l';
        giant[4..8].copy_from_slice(&(2 * MAX_MESSAGE as u32).to_le_bytes());
        let mut wire = giant.to_vec();
        wire.resize(16 + 2 * MAX_MESSAGE, 0xa5);
        wire.extend_from_slice(signal("After").data());
        let mut frames = Frames::default();
        let mut seen = Vec::new();
        for piece in wire.chunks(READ_CHUNK) {
            frames.extend(piece);
            seen.extend(members(&mut frames));
            assert!(frames.buf.len() <= 2 * READ_CHUNK, "the giant was kept: {} bytes", frames.buf.len());
        }
        assert_eq!(seen, ["After"]);
    }

    #[test]
    fn the_buffer_returns_to_its_size_after_a_large_message() {
        let big = Message::signal("/o", "o.I", "Big").unwrap().build(&vec![7u8; 200_000]).unwrap();
        let mut frames = Frames::default();
        frames.extend(big.data());
        assert_eq!(members(&mut frames), ["Big"]);
        frames.extend(signal("Small").data());
        assert_eq!(members(&mut frames), ["Small"]);
        assert!(frames.buf.len() <= READ_CHUNK, "{} bytes kept", frames.buf.len());
    }

    #[test]
    fn a_header_of_garbage_ends_the_connection() {
        let mut frames = Frames::default();
        frames.extend(&[b'x'; 64]);
        assert_eq!(frames.next().unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }
}
