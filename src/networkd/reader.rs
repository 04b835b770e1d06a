//! The bus reader: turns each incoming message into at most one [`BusEvent`].
//!
//! It runs on whichever thread reads the bus (`bus.rs`: the one that pumps, or a call
//! reading up to its reply), on a view of each message's bytes (`wire.rs`: reading a signal
//! allocates nothing), and does nothing but decode and `send` on an unbounded channel, never
//! a method call: it runs inside the connection's read.
//!
//! Trust: the bus filters broadcasts by our match rules, but anyone may send a signal
//! *addressed* to us, and a client cannot match a well-known sender by itself. So
//! every message is checked here: a PropertiesChanged counts only if its unique sender is
//! the current owner of `org.freedesktop.network1`, its path is a link path, its interface
//! argument is `org.freedesktop.network1.Link` and the states are strings;
//! NameOwnerChanged counts only from the bus itself. Everything else is dropped, counted
//! and logged at debug with its strings escaped.
//!
//! Never depend on every message arriving: the bus drops messages to a client whose queue is
//! full, and a local user can fill it. A PropertiesChanged on a link path from a sender
//! that is not the owner fanlink knows is still dropped, but says `OwnerInDoubt`: the
//! NameOwnerChanged naming a new networkd may be what was lost, and the daemon asks the bus
//! (rate-limited) rather than trust the signal. A giant message dropped unread, or the bus
//! reporting a limit, says `Lost`: the daemon reads networkd's state again.

use std::sync::atomic::{AtomicU64, Ordering};

use super::path::{decode_link_path, escape};
use super::state::{AdminState, OperState};
use super::wire::{unique_name_ok, Cursor, Kind, Message};
use super::{BUS_NAME, BUS_PATH, LINK_INTERFACE, NETWORKD_NAME, PROPERTIES_INTERFACE};

/// What the reader reports, in the order the bus delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// networkd changed a link's state; `None` means "not in this signal" (networkd sends
    /// only what changed, and AdministrativeState alone).
    LinkChanged { index: u32, oper: Option<OperState>, admin: Option<AdminState> },
    /// `org.freedesktop.network1` changed hands (`None`: networkd is gone). Whatever was
    /// known about links is stale: take a new snapshot when it is `Some`.
    OwnerChanged { new_owner: Option<String> },
    /// A signal claimed to be networkd's but came from another sender (and was dropped):
    /// ask the bus who owns `org.freedesktop.network1` now, in case its NameOwnerChanged was
    /// lost. Never a reason to trust the signal.
    OwnerInDoubt,
    /// Messages to fanlink may have been lost (a message too large to keep was dropped,
    /// the bus reported a limit): read networkd's state again.
    Lost,
    /// The bus connection ended; connect again (with backoff) and resync.
    Disconnected,
}

/// Counters shared with the caller, e.g. for `status` or tests.
#[derive(Debug, Default)]
pub struct ReaderStats {
    /// Messages turned into events.
    pub delivered: AtomicU64,
    /// Messages rejected as not from networkd or malformed.
    pub dropped: AtomicU64,
}

/// What to do with one message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Deliver(BusEvent),
    /// Legitimate but of no interest (method replies, other properties, our own name).
    Ignore,
    /// Not from networkd or malformed; the reason goes to the debug log.
    Drop(&'static str),
    /// Dropped like `Drop`, from a sender that claims networkd's link paths: is the owner
    /// fanlink knows still the owner?
    Doubt(&'static str),
}

/// Decides on messages, tracking the owner of `org.freedesktop.network1` as it goes.
#[derive(Debug)]
pub(crate) struct Classifier {
    owner: Option<String>,
}

impl Classifier {
    pub(crate) fn new(owner: Option<String>) -> Self {
        Classifier { owner }
    }

    /// The owner of `org.freedesktop.network1` as the messages so far say.
    pub(crate) fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The owner as the bus says now (GetNameOwner), when its NameOwnerChanged was lost.
    pub(crate) fn set_owner(&mut self, owner: Option<String>) {
        self.owner = owner;
    }

    pub(crate) fn classify(&mut self, msg: &Message<'_>) -> Verdict {
        match msg.kind {
            // The bus refused to pass on something of ours or to us (dbus-daemon stamps the
            // sender, so no client can say this): a reply that came too late to be awaited.
            Kind::Error
                if msg.sender == Some(BUS_NAME)
                    && msg.error_name == Some("org.freedesktop.DBus.Error.LimitsExceeded") =>
            {
                return Verdict::Deliver(BusEvent::Lost)
            }
            // Replies to our own calls (snapshot) arrive on the same unfiltered stream.
            Kind::MethodReturn | Kind::Error => return Verdict::Ignore,
            Kind::MethodCall => return Verdict::Drop("a method call (fanlink serves nothing)"),
            Kind::Signal => {}
        }
        match (msg.interface, msg.member) {
            (Some(BUS_NAME), Some("NameOwnerChanged")) => self.name_owner_changed(msg),
            // Unsolicited after Hello, about our own unique name.
            (Some(BUS_NAME), Some("NameAcquired" | "NameLost")) if msg.sender == Some(BUS_NAME) => {
                Verdict::Ignore
            }
            (Some(PROPERTIES_INTERFACE), Some("PropertiesChanged")) => self.properties_changed(msg),
            _ => Verdict::Drop("an unexpected signal"),
        }
    }

    fn name_owner_changed(&mut self, msg: &Message<'_>) -> Verdict {
        // dbus-daemon stamps every message's sender itself, so no client can claim to be
        // org.freedesktop.DBus.
        if msg.sender != Some(BUS_NAME) || msg.path != Some(BUS_PATH) {
            return Verdict::Drop("NameOwnerChanged not from the bus");
        }
        let decoded = if msg.signature == "sss" { three_strings(&mut msg.body()) } else { None };
        let Some((name, _old, new)) = decoded else {
            return Verdict::Drop("NameOwnerChanged with a malformed body");
        };
        if name != NETWORKD_NAME {
            return Verdict::Drop("NameOwnerChanged for another name");
        }
        let new_owner = match new {
            "" => None,
            unique if unique_name_ok(unique) => Some(unique.to_owned()),
            _ => return Verdict::Drop("NameOwnerChanged with an invalid new owner"),
        };
        self.owner = new_owner.clone();
        Verdict::Deliver(BusEvent::OwnerChanged { new_owner })
    }

    fn properties_changed(&self, msg: &Message<'_>) -> Verdict {
        let Some(index) = msg.path.and_then(decode_link_path) else {
            return Verdict::Drop("PropertiesChanged on a path that is not a link");
        };
        if self.owner.is_none() || msg.sender != self.owner.as_deref() {
            return Verdict::Doubt("PropertiesChanged not from the owner of org.freedesktop.network1");
        }
        if msg.signature != "sa{sv}as" {
            return Verdict::Drop("PropertiesChanged with a wrong signature");
        }
        let Some((interface, states)) = properties(&mut msg.body()) else {
            return Verdict::Drop("PropertiesChanged with a malformed body or a state that is not a string");
        };
        if interface != LINK_INTERFACE {
            return Verdict::Drop("PropertiesChanged for another interface");
        }
        let oper = states.oper.map(OperState::parse);
        let admin = states.admin.map(AdminState::parse);
        if oper.is_none() && admin.is_none() {
            // CarrierState, AddressState, OnlineState alone: fanlink decides on these two.
            return Verdict::Ignore;
        }
        Verdict::Deliver(BusEvent::LinkChanged { index, oper, admin })
    }
}

/// A NameOwnerChanged body (`sss`: name, old owner, new owner) and nothing after it.
fn three_strings<'a>(body: &mut Cursor<'a>) -> Option<(&'a str, &'a str, &'a str)> {
    let strings = (body.string()?, body.string()?, body.string()?);
    body.at_end().then_some(strings)
}

/// The two properties fanlink decides on, borrowed from the message.
#[derive(Debug, Default)]
struct States<'a> {
    oper: Option<&'a str>,
    admin: Option<&'a str>,
}

/// A PropertiesChanged body (`sa{sv}as`): the interface and the two states; every other
/// entry is skipped by its variant's signature without building a value. `None` for a
/// malformed body, a state that is not a plain string or that comes twice, or bytes left
/// over.
fn properties<'a>(body: &mut Cursor<'a>) -> Option<(&'a str, States<'a>)> {
    let interface = body.string()?;
    let mut states = States::default();
    let mut entries = body.array(8)?;
    while !entries.at_end() {
        entries.align(8)?;
        let key = entries.string()?;
        let signature = entries.signature()?;
        let slot = match key {
            OperState::PROPERTY => &mut states.oper,
            AdminState::PROPERTY => &mut states.admin,
            _ => {
                entries.variant_value(signature)?;
                continue;
            }
        };
        if signature != "s" || slot.is_some() {
            return None;
        }
        *slot = Some(entries.string()?);
    }
    let mut invalidated = body.array(4)?;
    while !invalidated.at_end() {
        invalidated.string()?;
    }
    body.at_end().then_some((interface, states))
}

/// Logs a dropped message with every bus string escaped.
fn log_drop(msg: &Message<'_>, reason: &str) {
    let field = |v: Option<&str>| v.map_or_else(|| "-".to_owned(), escape);
    log::debug!(
        "dropped {reason}: sender={} path={} interface={} member={}",
        field(msg.sender),
        field(msg.path),
        field(msg.interface),
        field(msg.member),
    );
}

/// What becomes of each message once the owner is seeded: classify, count, hand on. The
/// connection's end is one `Disconnected` (the bus reports no end when we hung up).
pub(crate) struct Dispatch {
    pub(crate) classifier: Classifier,
    /// `false` once nobody listens; nothing is read for the listener's sake then.
    pub(crate) send: Box<dyn Fn(BusEvent) -> bool + Send>,
    pub(crate) stats: std::sync::Arc<ReaderStats>,
}

impl Dispatch {
    pub(crate) fn message(&mut self, msg: &Message<'_>) {
        match self.classifier.classify(msg) {
            Verdict::Deliver(event) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                (self.send)(event);
            }
            Verdict::Ignore => {}
            Verdict::Drop(reason) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                log_drop(msg, reason);
            }
            Verdict::Doubt(reason) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                log_drop(msg, reason);
                (self.send)(BusEvent::OwnerInDoubt);
            }
        }
    }

    /// A message too large to keep was dropped unread (`bus.rs`).
    pub(crate) fn oversized(&self) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        (self.send)(BusEvent::Lost);
    }

    pub(crate) fn ended(&self, why: &std::io::Error) {
        log::info!("system bus connection lost: {why}");
        // The receiver may already be gone; then nobody needs to hear about it.
        (self.send)(BusEvent::Disconnected);
    }
}
