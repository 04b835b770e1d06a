//! fanlink's own D-Bus connection: zbus for the wire format (building and decoding
//! messages), this file for the socket.
//!
//! zbus's connection runs two threads of its own, its executor and async-io's reactor, and
//! every signal crossed both before fanlink's reader saw it: three wakeups per signal, and
//! two threads for an idle daemon to keep. Here one thread reads the socket itself and
//! hands each message on as it comes: a reply to the call waiting for it, every message to
//! the caller's `inbound` (the networkd reader). A call is a write from the calling thread
//! and a wait for its reply; the reader thread never calls, so it can never wait for itself.
//!
//! Incoming messages are read in place (`wire.rs`): only a reply to a waiting call becomes a
//! `zbus::Message`, for its caller; signals reach `inbound` as a view of the read buffer,
//! which is reused, so a signal costs no allocation here.
//!
//! Only `unix:path=` addresses (the system bus's, and the harness's) and the EXTERNAL
//! mechanism (the kernel vouches for our uid): all a system daemon needs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// What the reader thread hands to `inbound`.
pub(crate) enum Inbound<'a> {
    /// A message, in the order the bus sent it (replies too, after they were routed).
    Message(wire::Message<'a>),
    /// The connection ended (EOF, an error, or we closed it); the last call.
    Ended(&'a std::io::Error),
}

/// Calls waiting for replies, by serial (the reply, or why zbus could not decode it); `None`
/// once the reader has ended.
type Pending = Mutex<Option<HashMap<u32, SyncSender<zbus::Result<Message>>>>>;

/// A connection to a bus. `Sync`: any thread may call; one thread reads.
#[derive(Debug)]
pub struct Bus {
    out: Mutex<UnixStream>,
    pending: Arc<Pending>,
    unique_name: String,
    /// Set before we close the socket ourselves.
    closing: Arc<AtomicBool>,
}

impl Bus {
    /// Connects to `address`, authenticates, starts the reader thread (named `thread`, handing
    /// each message to `inbound` until it returns `false` or the connection ends) and says
    /// Hello. `closing` is set when we hang up ourselves. The reader starts before Hello, so nothing the bus sends is ever unread.
    pub(crate) fn open(
        address: &str,
        thread: &str,
        inbound: impl FnMut(Inbound<'_>) -> bool + Send + 'static,
        closing: Arc<AtomicBool>,
    ) -> zbus::Result<(Bus, JoinHandle<()>)> {
        let path = super::unix_path(address).ok_or_else(|| {
            zbus::Error::Address(format!("{address}: fanlink connects to unix:path= addresses only"))
        })?;
        let io = |e: std::io::Error| zbus::Error::InputOutput(Arc::new(e));
        let mut stream = UnixStream::connect(&path).map_err(io)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
        authenticate(&mut stream, &mut reader)?;
        stream.set_read_timeout(None).map_err(io)?;
        let pending: Arc<Pending> = Arc::new(Mutex::new(Some(HashMap::new())));
        let handle = {
            let pending = Arc::clone(&pending);
            std::thread::Builder::new()
                .name(thread.into())
                .spawn(move || read_loop(reader, &pending, inbound))
                .map_err(io)?
        };
        let mut bus = Bus { out: Mutex::new(stream), pending, unique_name: String::new(), closing };
        let hello = bus.call(
            Message::method_call(super::BUS_PATH, "Hello")?
                .destination(super::BUS_NAME)?
                .interface(super::BUS_NAME)?
                .build(&())?,
        )?;
        bus.unique_name = hello.body().deserialize::<String>()?;
        Ok((bus, handle))
    }

    /// Our unique name on the bus.
    pub fn unique_name(&self) -> &str {
        &self.unique_name
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
        let msg = Message::method_call(path, member)?
            .destination(destination)?
            .interface(interface)?
            .build(body)?;
        self.call(msg)
    }

    fn call(&self, msg: Message) -> zbus::Result<Message> {
        let serial = msg.primary_header().serial_num().get();
        let (tx, rx) = sync_channel(1);
        match self.pending.lock().expect("pending calls").as_mut() {
            Some(pending) => pending.insert(serial, tx),
            None => return Err(closed()),
        };
        let forget = || {
            if let Some(pending) = self.pending.lock().expect("pending calls").as_mut() {
                pending.remove(&serial);
            }
        };
        if let Err(e) = self.out.lock().expect("bus socket").write_all(msg.data()) {
            forget();
            return Err(zbus::Error::InputOutput(Arc::new(e)));
        }
        let reply = match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(reply) => reply?,
            // Disconnected: the reader ended and dropped every waiting call.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(closed()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                forget();
                return Err(zbus::Error::InputOutput(Arc::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no reply in {} s", CALL_TIMEOUT.as_secs()),
                ))));
            }
        };
        match reply.message_type() {
            Type::Error => Err(zbus::Error::from(reply)),
            _ => Ok(reply),
        }
    }

    /// Hangs up: the reader thread ends (its `inbound` sees `Ended`), waiting calls fail.
    pub fn close(&self) -> std::io::Result<()> {
        self.closing.store(true, Ordering::Release);
        self.out.lock().expect("bus socket").shutdown(std::net::Shutdown::Both)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        // Already closed, or the bus is gone: nothing left to do either way.
        let _ = self.close();
    }
}

fn closed() -> zbus::Error {
    zbus::Error::InputOutput(Arc::new(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the bus connection is closed",
    )))
}

/// SASL EXTERNAL (D-Bus specification, "Authentication Protocol"): a NUL byte, our uid in
/// hex-encoded decimal, `OK <server guid>` back, then BEGIN. No unix fd passing is
/// negotiated, so the bus sends us none.
fn authenticate(stream: &mut UnixStream, reader: &mut impl BufRead) -> zbus::Result<()> {
    let io = |e: std::io::Error| zbus::Error::InputOutput(Arc::new(e));
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

/// The reader thread: routes replies to their calls and hands every message to `inbound`.
fn read_loop(
    mut reader: BufReader<UnixStream>,
    pending: &Pending,
    mut inbound: impl FnMut(Inbound<'_>) -> bool,
) {
    let mut buf = Vec::new();
    let ended = loop {
        match read_message(&mut reader, &mut buf) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => break e,
        }
        let msg = match wire::Message::parse(&buf) {
            Ok(msg) => msg,
            Err(why) => {
                log::debug!("dropped an undecodable D-Bus message: {why}");
                continue;
            }
        };
        if matches!(msg.kind, Kind::MethodReturn | Kind::Error) {
            let waiting = msg
                .reply_serial
                .and_then(|serial| pending.lock().expect("pending calls").as_mut()?.remove(&serial));
            if let Some(call) = waiting {
                let _ = call.send(to_zbus(&msg));
            }
        }
        if !inbound(Inbound::Message(msg)) {
            break std::io::Error::other("the reader's consumer went away");
        }
    };
    // Every waiting call fails at once (its sender is dropped), and no new one waits.
    pending.lock().expect("pending calls").take();
    inbound(Inbound::Ended(&ended));
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

/// Reads one whole message into `buf` (reused: its capacity stays). `Ok(false)`: one was read
/// and dropped (too large); `Err`: the stream ended or lost its framing, and the connection
/// with it.
pub(crate) fn read_message(reader: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut fixed = [0u8; FIXED_HEADER];
    reader.read_exact(&mut fixed)?;
    let Some(total) = message_length(&fixed) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a D-Bus message header"));
    };
    if total > MAX_MESSAGE {
        let rest = (total - FIXED_HEADER) as u64;
        std::io::copy(&mut reader.take(rest), &mut std::io::sink())?;
        log::debug!("dropped a D-Bus message of {total} bytes (more than {MAX_MESSAGE})");
        return Ok(false);
    }
    buf.clear();
    buf.resize(total, 0);
    buf[..FIXED_HEADER].copy_from_slice(&fixed);
    reader.read_exact(&mut buf[FIXED_HEADER..])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(member: &str) -> Message {
        Message::signal("/org/example", "org.example.I", member).unwrap().build(&("x", 7u32)).unwrap()
    }

    #[test]
    fn reads_back_what_zbus_writes_one_message_at_a_time() {
        let (a, b) = (signal("A"), signal("B"));
        let mut wire = a.data().to_vec();
        wire.extend_from_slice(b.data());
        let mut r = std::io::Cursor::new(wire);
        let mut buf = Vec::new();
        assert!(read_message(&mut r, &mut buf).unwrap());
        assert_eq!(wire::Message::parse(&buf).unwrap().member, Some("A"));
        assert!(read_message(&mut r, &mut buf).unwrap());
        let second = wire::Message::parse(&buf).unwrap();
        assert_eq!(second.member, Some("B"));
        let reply = to_zbus(&second).unwrap();
        assert_eq!(reply.body().deserialize::<(String, u32)>().unwrap(), ("x".into(), 7));
        let end = read_message(&mut r, &mut buf).unwrap_err();
        assert_eq!(end.kind(), std::io::ErrorKind::UnexpectedEof);
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
    fn a_message_too_large_is_skipped_whole_and_the_next_one_read() {
        let mut giant = [0u8; 16];
        giant[0] = b'l';
        giant[4..8].copy_from_slice(&(2 * MAX_MESSAGE as u32).to_le_bytes());
        let mut wire = giant.to_vec();
        wire.resize(16 + 2 * MAX_MESSAGE, 0xa5);
        wire.extend_from_slice(signal("After").data());
        let mut r = std::io::Cursor::new(wire);
        let mut buf = Vec::new();
        assert!(!read_message(&mut r, &mut buf).unwrap());
        assert!(read_message(&mut r, &mut buf).unwrap());
        assert_eq!(wire::Message::parse(&buf).unwrap().member, Some("After"));
    }

    #[test]
    fn a_header_of_garbage_ends_the_connection() {
        let mut r = std::io::Cursor::new(vec![b'x'; 64]);
        let err = read_message(&mut r, &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
