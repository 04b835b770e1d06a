//! The D-Bus edge: what systemd-networkd says about links, and nothing it should not.
//!
//! Start-up order (the daemon loop of STYLE.md):
//! 1. [`Networkd::connect`] to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` is honoured).
//! 2. [`Networkd::subscribe`]: add the match rules, then read the current owner of
//!    `org.freedesktop.network1` (the seed for the classifier's sender check).
//! 3. [`Subscription::deliver`]: from now on every message read becomes a [`BusEvent`]
//!    for the sink (what was read before is kept until then, and goes first).
//! 4. [`Networkd::snapshot`]: the full state. Then apply queued events in order.
//!
//! No thread reads the bus: the caller polls [`Networkd::fd`] with whatever else it waits
//! on and calls [`Networkd::pump`] when it is readable; a call reads the socket itself while
//! it waits for its reply and hands on what comes before it (`bus.rs`). Events thus reach
//! the sink on the thread that pumps or calls, in bus order.
//!
//! [`attach`] does all four. Subscribing before reading the state means no change falls
//! between the two; an event older than the snapshot may be applied after it, which is
//! harmless because networkd's signals carry the *new* values and every later change sends
//! another, so applying events in order converges on networkd's state. Drain what is
//! queued before acting, or such a stale event may flip a Fan down and up again.
//!
//! On `BusEvent::OwnerChanged { new_owner: Some(_) }` take a new snapshot (networkd
//! announces nothing per link when it stops or starts); on `Lost` take one too (a message may
//! have been dropped by the bus); on `OwnerInDoubt` call [`Networkd::recheck_owner`] (a
//! NameOwnerChanged may have been); on `Disconnected` call [`attach`] again, with backoff.
//! The caller rate-limits and retries; nothing here retries or sleeps, and a call waits for
//! its reply 2 s at most. Every connection ends with exactly
//! one `Disconnected` when the bus goes away, and with none when we hang up ourselves
//! (dropping the [`Networkd`], or an [`attach`] that failed half-way): a stale session can
//! never trigger another reconnect.
//!
//! Trust: a state reaches the caller only as a closed enum, a link only as an ifindex (and
//! an [`IfName`] that passed the kernel's rules); no bus string is handed on to become part
//! of a path or a command. A link path for calls is built from the number.

mod bus;
mod early;
mod frames;
mod links;
mod path;
mod reader;
#[cfg(test)]
mod reader_tests;
mod state;
mod wire;

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use bus::Inbound;
use early::{Early, EARLY_KEPT};
pub(crate) use wire::Arg;

use crate::ifname::IfName;

pub use bus::{calls_made, Bus, Error as BusError};
pub use path::{decode_link_path, escape, link_path, LINK_PATH_NAMESPACE};
pub use reader::{BusEvent, ReaderStats};
pub use state::{AdminState, OperState};

/// The system bus when `DBUS_SYSTEM_BUS_ADDRESS` is not set.
const SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

/// The socket path of the first `unix:path=` entry of a D-Bus address (entries are separated
/// by `;`, keys by `,`, and values may be %-escaped).
fn unix_path(address: &str) -> Option<std::path::PathBuf> {
    let entry = address.split(';').find(|e| e.starts_with("unix:"))?;
    let value = entry["unix:".len()..].split(',').find_map(|kv| kv.strip_prefix("path="))?;
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' && tail.len() >= 2 {
            let hex = std::str::from_utf8(&tail[..2]).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    let os: std::ffi::OsString = std::os::unix::ffi::OsStringExt::from_vec(bytes);
    Some(std::path::PathBuf::from(os))
}

/// networkd's well-known name.
pub const NETWORKD_NAME: &str = "org.freedesktop.network1";
/// The well-known name the daemon owns, so that the system bus applies the policy fanlink
/// ships (packaging/dbus/) to its connection: only root may own it or send to it. fanlink
/// serves no interface; the name is the handle a bus policy needs. Reverse-DNS of the
/// project's name, `Daemon` for which program holds it (the CLI never does), and a version
/// digit as systemd's `network1` has, should the daemon ever offer an API.
pub const DAEMON_NAME: &str = "org.fanlink.Daemon1";
/// The interface whose PropertiesChanged fanlink follows.
pub const LINK_INTERFACE: &str = "org.freedesktop.network1.Link";
const BUS_NAME: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";
const NETWORKD_PATH: &str = "/org/freedesktop/network1";
const MANAGER_INTERFACE: &str = "org.freedesktop.network1.Manager";
const PROPERTIES_INTERFACE: &str = "org.freedesktop.DBus.Properties";

/// Errors of the D-Bus edge; each says which step failed, the source says why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the system bus")]
    Connect(#[source] BusError),
    #[error("D-Bus call {call} failed")]
    Call {
        call: &'static str,
        #[source]
        source: BusError,
    },
    #[error("already subscribed on this connection")]
    Subscribed,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps a failed call's error with the call's name.
fn call(call: &'static str) -> impl FnOnce(BusError) -> Error {
    move |source| Error::Call { call, source }
}

/// Where the events go, in bus order. A channel of any event type that a `BusEvent`
/// converts into is one (the daemon feeds one worker from several sources).
pub trait EventSink: Send + 'static {
    /// Hands on one event; `false` when nobody listens any more.
    fn deliver(&self, event: BusEvent) -> bool;
}

impl<T: From<BusEvent> + Send + 'static> EventSink for Sender<T> {
    fn deliver(&self, event: BusEvent) -> bool {
        self.send(T::from(event)).is_ok()
    }
}

/// One link as networkd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: IfName,
    pub oper: OperState,
    pub admin: AdminState,
}

/// A connection to the system bus, for talking to networkd. What it reads is kept until
/// [`Networkd::subscribe`] and [`Subscription::deliver`] say what the owner is and where
/// events go. Dropping it closes the connection (without a `Disconnected`: we hung up).
#[derive(Debug)]
pub struct Networkd {
    bus: Bus,
    stage: Arc<Mutex<Stage>>,
    stats: Arc<ReaderStats>,
}

/// What [`Networkd::recheck_owner`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerCheck {
    /// The owner of `org.freedesktop.network1` now (`None`: networkd is not on the bus).
    pub owner: Option<String>,
    /// Not the owner the messages said: its NameOwnerChanged was lost. Otherwise the signal
    /// that raised the doubt was a forgery.
    pub changed: bool,
}

/// Match rules registered, owner seeded: say where events go ([`Subscription::deliver`]).
pub struct Subscription<'a> {
    owner: Option<String>,
    networkd: &'a Networkd,
}

/// What [`attach`] returns: the connection, delivering events, and networkd's links at
/// attach time.
#[derive(Debug)]
pub struct Attached {
    pub networkd: Networkd,
    /// `None`: networkd is not on the bus (yet); an `OwnerChanged` is delivered when it
    /// appears, and a snapshot is taken then.
    pub links: Option<Vec<LinkState>>,
}

/// Connects, subscribes, starts delivering to `sink` and, when networkd is on the bus,
/// takes a snapshot, in that order: the one way in for the daemon and the tests.
/// `address` overrides the system bus address (`None`: `DBUS_SYSTEM_BUS_ADDRESS` or the
/// default socket). `skip` names links whose states are not asked for (see
/// [`Networkd::snapshot`]). If the snapshot fails, the connection is dropped silently.
pub fn attach(address: Option<&str>, sink: impl EventSink, skip: impl Fn(u32) -> bool) -> Result<Attached> {
    let networkd = match address {
        Some(address) => Networkd::connect_address(address)?,
        None => Networkd::connect()?,
    };
    networkd.own_name();
    let subscription = networkd.subscribe()?;
    let present = subscription.owner().is_some();
    subscription.deliver(sink);
    let links = if present { Some(networkd.snapshot(skip)?) } else { None };
    Ok(Attached { networkd, links })
}

/// What becomes of each message read: kept (as bytes: the read buffer is reused) until the
/// owner is seeded, then classified and delivered.
enum Stage {
    Early(Early),
    Live(reader::Dispatch),
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Early(early) => write!(f, "Early({} kept, lost: {})", early.kept.len(), early.lost),
            Stage::Live(_) => f.write_str("Live"),
        }
    }
}

impl Networkd {
    /// Connects to the system bus (honours `DBUS_SYSTEM_BUS_ADDRESS`).
    pub fn connect() -> Result<Self> {
        let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| SYSTEM_BUS.to_string());
        Self::connect_address(&address)
    }

    /// Connects to the bus at a D-Bus address such as `unix:path=/run/x/bus.sock`.
    pub fn connect_address(address: &str) -> Result<Self> {
        let stats = Arc::new(ReaderStats::default());
        let stage = Arc::new(Mutex::new(Stage::Early(Early::default())));
        let inbound = {
            let stage = Arc::clone(&stage);
            move |inbound: Inbound<'_>| match (&mut *stage.lock().expect("networkd stage"), inbound) {
                (Stage::Live(dispatch), Inbound::Message(msg)) => dispatch.message(&msg),
                (Stage::Live(dispatch), Inbound::Oversized) => dispatch.oversized(),
                (Stage::Live(dispatch), Inbound::Ended(why)) => dispatch.ended(why),
                (Stage::Early(early), Inbound::Message(msg)) => early.keep(msg.bytes()),
                (Stage::Early(early), Inbound::Oversized) => early.lost(),
                // Before anyone listens: the call under way fails, and says so.
                (Stage::Early(_), Inbound::Ended(why)) => log::debug!("bus connection lost early: {why}"),
            }
        };
        let bus = Bus::open(address, inbound).map_err(Error::Connect)?;
        Ok(Networkd { bus, stage, stats })
    }

    /// The socket to poll for reading (then [`Networkd::pump`]); `None` once the connection
    /// ended.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.bus.fd()
    }

    /// Reads what the bus has sent, without waiting, and delivers it: call when `fd` is
    /// readable.
    pub fn pump(&self) {
        self.bus.pump()
    }

    /// The counters of what was read (shared, live).
    pub fn stats(&self) -> Arc<ReaderStats> {
        Arc::clone(&self.stats)
    }

    /// Messages dropped so far as not from networkd or malformed.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// The bus connection, for calls to other services on the same bus (systemd's units).
    pub fn connection(&self) -> &Bus {
        &self.bus
    }

    /// Our unique name on the bus.
    pub fn unique_name(&self) -> Option<String> {
        Some(self.bus.unique_name().to_string())
    }

    /// Asks the bus for [`DAEMON_NAME`], without queueing; says whether we own it. Not owning
    /// it is a warning, not an error: fanlink follows networkd all the same, only without
    /// the bus's protection (a bus without fanlink's policy file refuses the name even to
    /// root, and a second daemon finds it taken).
    pub fn own_name(&self) -> bool {
        const DO_NOT_QUEUE: u32 = 4;
        const PRIMARY_OWNER: u32 = 1;
        const ALREADY_OWNER: u32 = 4;
        let args = [Arg::Str(DAEMON_NAME), Arg::U32(DO_NOT_QUEUE)];
        let reply = self.bus.call_method(BUS_NAME, BUS_PATH, BUS_NAME, "RequestName", &args);
        match reply.and_then(|r| r.read("u", |body| body.u32())) {
            Ok(PRIMARY_OWNER | ALREADY_OWNER) => true,
            Ok(_) => {
                log::warn!("{DAEMON_NAME} is owned by another connection: another fanlink daemon?");
                false
            }
            Err(e) => {
                log::warn!("cannot own {DAEMON_NAME} ({e}): is fanlink's bus policy installed? Without it any local user can flood this connection");
                false
            }
        }
    }

    /// Registers the match rules and seeds the owner. Call before [`Networkd::snapshot`].
    ///
    /// Every message is classified in the order the bus sent it: the sender check needs
    /// NameOwnerChanged and PropertiesChanged in that order. What is read from the moment the
    /// connection exists is kept, so nothing the rules match is missed.
    ///
    /// Race: a NameOwnerChanged may arrive between AddMatch and the GetNameOwner reply. It
    /// is then read *before* the reply, so the classifier starts with an owner newer than
    /// the messages ahead of it. NameOwnerChanged carries the new owner, so replaying it
    /// still ends at the right owner; the only cost is that the old owner's last
    /// PropertiesChanged are dropped, and the OwnerChanged event asks for a resync anyway.
    /// A message is accepted only from the seed owner or one a later NameOwnerChanged
    /// names, so only from a connection that owned the name at some point; the system
    /// bus policy lets only networkd's user own it.
    pub fn subscribe(&self) -> Result<Subscription<'_>> {
        if !matches!(*self.stage.lock().expect("networkd stage"), Stage::Early(_)) {
            return Err(Error::Subscribed);
        }
        for (what, rule) in
            [("AddMatch NameOwnerChanged", owner_rule()), ("AddMatch PropertiesChanged", link_rule())]
        {
            let rule = [Arg::Str(&rule)];
            self.bus.call_method(BUS_NAME, BUS_PATH, BUS_NAME, "AddMatch", &rule).map_err(call(what))?;
        }
        let owner = self.owner()?;
        Ok(Subscription { owner, networkd: self })
    }

    /// The unique name that owns `org.freedesktop.network1` now, `None` if networkd is
    /// not running.
    pub fn owner(&self) -> Result<Option<String>> {
        let name = [Arg::Str(NETWORKD_NAME)];
        match self.bus.call_method(BUS_NAME, BUS_PATH, BUS_NAME, "GetNameOwner", &name) {
            Ok(reply) => Ok(Some(reply.string().map_err(call("GetNameOwner"))?)),
            Err(e) if e.name() == Some("org.freedesktop.DBus.Error.NameHasNoOwner") => Ok(None),
            Err(e) => Err(call("GetNameOwner")(e)),
        }
    }

    /// Asks the bus who owns `org.freedesktop.network1` now and, if that is not the owner the
    /// messages said (a NameOwnerChanged was lost), trusts the bus's answer from now on. A
    /// signal read before the answer stays dropped: take a snapshot after a change.
    ///
    /// A NameOwnerChanged read while the call waited (before or after its reply: the order is
    /// not known here) wins: its `OwnerChanged` is on its way to the caller, which resyncs
    /// for it, and should it be the older news, the next signal in doubt asks again.
    pub fn recheck_owner(&self) -> Result<OwnerCheck> {
        let known = || match &*self.stage.lock().expect("networkd stage") {
            Stage::Live(dispatch) => Some(dispatch.classifier.owner().map(str::to_owned)),
            Stage::Early(_) => None,
        };
        let before = known();
        let owner = self.owner()?;
        let mut stage = self.stage.lock().expect("networkd stage");
        let Stage::Live(dispatch) = &mut *stage else { return Ok(OwnerCheck { owner, changed: false }) };
        let now = dispatch.classifier.owner().map(str::to_owned);
        if Some(&now) != before.as_ref() {
            return Ok(OwnerCheck { owner: now, changed: false });
        }
        let changed = now != owner;
        if changed {
            dispatch.classifier.set_owner(owner.clone());
        }
        Ok(OwnerCheck { owner, changed })
    }

    /// Closes the connection now, without a `Disconnected`.
    /// Dropping does the same, ignoring errors.
    pub fn close(self) -> Result<()> {
        self.bus.close().map_err(|e| call("close")(e.into()))
    }
}

impl Subscription<'_> {
    /// The owner of `org.freedesktop.network1` when subscribing (`None`: not running).
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Says where events go, in bus order: what was read so far first, then everything that
    /// is read from now on, whichever thread pumps or calls.
    pub fn deliver(self, sink: impl EventSink) {
        let mut dispatch = reader::Dispatch {
            classifier: reader::Classifier::new(self.owner),
            send: Box::new(move |e| sink.deliver(e)),
            stats: Arc::clone(&self.networkd.stats),
        };
        let mut stage = self.networkd.stage.lock().expect("networkd stage");
        if let Stage::Early(early) = &*stage {
            // They parsed when read; parsing the same bytes again cannot fail.
            for msg in early.kept.iter().filter_map(|bytes| wire::Message::parse(bytes).ok()) {
                dispatch.message(&msg);
            }
            if early.lost {
                log::debug!(
                    "messages read before the owner was known were not kept (over {EARLY_KEPT} bytes)"
                );
                (dispatch.send)(BusEvent::Lost);
            }
        }
        *stage = Stage::Live(dispatch);
    }
}

/// A match rule of `key='value'` pairs (none of fanlink's values holds a quote).
fn match_rule(pairs: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = pairs.iter().map(|(key, value)| format!("{key}='{value}'")).collect();
    pairs.join(",")
}

/// NameOwnerChanged for networkd's name only (arg0).
fn owner_rule() -> String {
    match_rule(&[
        ("type", "signal"),
        ("sender", BUS_NAME),
        ("interface", BUS_NAME),
        ("member", "NameOwnerChanged"),
        ("path", BUS_PATH),
        ("arg0", NETWORKD_NAME),
    ])
}

/// One rule for all links: the bus delivers only what networkd's current owner sends.
fn link_rule() -> String {
    match_rule(&[
        ("type", "signal"),
        ("sender", NETWORKD_NAME),
        ("interface", PROPERTIES_INTERFACE),
        ("member", "PropertiesChanged"),
        ("path_namespace", LINK_PATH_NAMESPACE),
        ("arg0", LINK_INTERFACE),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_rules_are_the_documented_ones() {
        assert_eq!(
            link_rule(),
            "type='signal',sender='org.freedesktop.network1',interface='org.freedesktop.DBus.Properties',\
             member='PropertiesChanged',path_namespace='/org/freedesktop/network1/link',\
             arg0='org.freedesktop.network1.Link'"
        );
        assert_eq!(
            owner_rule(),
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',\
             member='NameOwnerChanged',path='/org/freedesktop/DBus',arg0='org.freedesktop.network1'"
        );
    }
}

#[cfg(test)]
mod address_tests {
    use super::unix_path;

    #[test]
    fn unix_paths_of_dbus_addresses() {
        let p = |a: &str| unix_path(a).map(|p| p.display().to_string());
        assert_eq!(
            p("unix:path=/run/dbus/system_bus_socket").as_deref(),
            Some("/run/dbus/system_bus_socket")
        );
        assert_eq!(p("unix:path=/tmp/a%20b/bus.sock,guid=0123").as_deref(), Some("/tmp/a b/bus.sock"));
        assert_eq!(p("tcp:host=h,port=1;unix:path=/x").as_deref(), Some("/x"));
        assert_eq!(p("unix:abstract=/x"), None);
        assert_eq!(p("tcp:host=h,port=1"), None);
    }
}
