//! A D-Bus proxy between `fanlink run` and the harness's dbus-daemon that drops exactly the
//! messages a test names: what dbus-daemon does to a client whose queue is full ("destination
//! has a full message queue"), made deterministic. The authentication lines pass as they
//! are; after BEGIN each message is read whole (zbus parses its header) and passed on or
//! dropped.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use zbus::message::Type;

use crate::cli::TempDir;

/// What to drop, armed by the test.
#[derive(Default)]
struct Rules {
    /// The next NameOwnerChanged that names a new owner (networkd's arrival).
    owner_change: AtomicBool,
    /// The reply to the next call of this member.
    reply_to: Mutex<Option<String>>,
    /// The serials of calls whose replies are to be dropped.
    serials: Mutex<HashSet<u32>>,
    /// Every PropertiesChanged, while set.
    properties: AtomicBool,
    dropped: AtomicUsize,
}

pub struct Proxy {
    dir: TempDir,
    rules: Arc<Rules>,
}

impl Proxy {
    /// Listens on a socket of its own and connects each client to `bus` (`unix:path=...`).
    pub fn start(bus: &str) -> Proxy {
        let upstream = PathBuf::from(bus.strip_prefix("unix:path=").expect("a unix:path= bus"));
        let dir = TempDir::new("proxy");
        let listener = UnixListener::bind(dir.path().join("bus.sock")).unwrap();
        let rules = Arc::new(Rules::default());
        let shared = Arc::clone(&rules);
        // The accept thread outlives the test's use of it; a leaked thread blocked in accept.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = UnixStream::connect(&upstream) else { continue };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = Arc::clone(&shared);
                std::thread::spawn(move || pump(client, server, &up, Direction::Up));
                let down = Arc::clone(&shared);
                std::thread::spawn(move || pump(s2, c2, &down, Direction::Down));
            }
        });
        Proxy { dir, rules }
    }

    /// The address to give `fanlink run` as `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("bus.sock").display())
    }

    pub fn drop_next_owner_change(&self) {
        self.rules.owner_change.store(true, Ordering::SeqCst);
    }

    pub fn drop_reply_to_next(&self, member: &str) {
        *self.rules.reply_to.lock().unwrap() = Some(member.to_owned());
    }

    pub fn drop_properties_changed(&self, on: bool) {
        self.rules.properties.store(on, Ordering::SeqCst);
    }

    /// Whether an armed owner change or reply drop is still waiting for its message.
    pub fn armed(&self) -> bool {
        self.rules.owner_change.load(Ordering::SeqCst)
            || self.rules.reply_to.lock().unwrap().is_some()
            || !self.rules.serials.lock().unwrap().is_empty()
    }

    /// How many messages were dropped so far.
    pub fn dropped(&self) -> usize {
        self.rules.dropped.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to bus: the SASL lines until BEGIN, then calls (whose serials are noted).
    Up,
    /// Bus to client: the OK line, then messages (some dropped).
    Down,
}

/// Copies `from` to `to` until either end closes.
fn pump(mut from: UnixStream, mut to: UnixStream, rules: &Rules, dir: Direction) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    // The authentication: up to BEGIN from the client, the one OK line from the bus, passed
    // on as it comes (the client waits for the bus's answer to each line).
    let end: &[u8] = if dir == Direction::Up { b"BEGIN\r\n" } else { b"\r\n" };
    loop {
        let Ok(n) = from.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let (upto, done) = match buf.windows(end.len()).position(|w| w == end) {
            Some(at) => (at + end.len(), true),
            // Kept back: only what may be the start of a marker cut by the read.
            None => {
                let cut = (1..end.len()).rev().find(|&k| buf.ends_with(&end[..k])).unwrap_or(0);
                (buf.len() - cut, false)
            }
        };
        if to.write_all(&buf[..upto]).is_err() {
            return;
        }
        buf.drain(..upto);
        if done {
            break;
        }
    }
    loop {
        while let Some(len) = buf.get(..16).and_then(length) {
            if buf.len() < len {
                break;
            }
            let message: Vec<u8> = buf.drain(..len).collect();
            if passes(&message, rules, dir) && to.write_all(&message).is_err() {
                return;
            }
        }
        match from.read(&mut chunk) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A message's whole length from its fixed header.
fn length(fixed: &[u8]) -> Option<usize> {
    let word = |at: usize| {
        let b: [u8; 4] = fixed[at..at + 4].try_into().unwrap();
        match fixed[0] {
            b'l' => Some(u32::from_le_bytes(b) as usize),
            b'B' => Some(u32::from_be_bytes(b) as usize),
            _ => None,
        }
    };
    Some((16 + word(12)?).next_multiple_of(8) + word(4)?)
}

/// Whether `bytes` goes on; notes the serials of calls whose replies are to be dropped.
fn passes(bytes: &[u8], rules: &Rules, dir: Direction) -> bool {
    let endian = if bytes[0] == b'B' { zbus::zvariant::BE } else { zbus::zvariant::LE };
    let data = zbus::zvariant::serialized::Data::new(
        bytes.to_vec(),
        zbus::zvariant::serialized::Context::new_dbus(endian, 0),
    );
    // SAFETY: the bytes are a message dbus-daemon validated (or fanlink sent it), with no fds.
    let Ok(msg) = (unsafe { zbus::Message::from_bytes(data) }) else { return true };
    let header = msg.header();
    let member = header.member().map(|m| m.as_str().to_owned());
    let drop = match (dir, header.message_type()) {
        (Direction::Up, Type::MethodCall) => {
            let mut armed = rules.reply_to.lock().unwrap();
            if armed.is_some() && *armed == member {
                *armed = None;
                rules.serials.lock().unwrap().insert(header.primary().serial_num().get());
            }
            false
        }
        (Direction::Up, _) => false,
        (Direction::Down, Type::MethodReturn | Type::Error) => {
            header.reply_serial().is_some_and(|s| rules.serials.lock().unwrap().remove(&s.get()))
        }
        (Direction::Down, Type::Signal) => match member.as_deref() {
            Some("NameOwnerChanged") => {
                let new_owner = msg.body().deserialize::<(String, String, String)>().map(|(_, _, new)| new);
                new_owner.is_ok_and(|new| !new.is_empty()) && rules.owner_change.swap(false, Ordering::SeqCst)
            }
            Some("PropertiesChanged") => rules.properties.load(Ordering::SeqCst),
            _ => false,
        },
        (Direction::Down, _) => false,
    };
    if drop {
        rules.dropped.fetch_add(1, Ordering::SeqCst);
        eprintln!("[proxy] dropped {:?} {member:?}", header.message_type());
    }
    !drop
}
