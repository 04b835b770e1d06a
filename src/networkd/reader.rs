//! The bus reader: turns each incoming message into at most one [`BusEvent`].
//!
//! It runs on the bus connection's own reader thread (`bus.rs`) and does nothing but decode
//! and `send` on an unbounded channel, never a method call: the thread that routes replies
//! must not wait for one.
//!
//! Trust: the bus filters broadcasts by our match rules, but anyone may send a signal
//! *addressed* to us, and a client cannot match a well-known sender by itself. So
//! every message is checked here: a PropertiesChanged counts only if its unique sender is
//! the current owner of `org.freedesktop.network1`, its path is a link path, its interface
//! argument is `org.freedesktop.network1.Link` and the states are strings;
//! NameOwnerChanged counts only from the bus itself. Everything else is dropped, counted
//! and logged at debug with its strings escaped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use zbus::message::Type;
use zbus::Message;

use super::path::{decode_link_path, escape};
use super::state::{AdminState, OperState};
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

    pub(crate) fn classify(&mut self, msg: &Message) -> Verdict {
        match msg.message_type() {
            // Replies to our own calls (snapshot) arrive on the same unfiltered stream.
            Type::MethodReturn | Type::Error => return Verdict::Ignore,
            Type::MethodCall => return Verdict::Drop("a method call (fanlink serves nothing)"),
            Type::Signal => {}
        }
        let header = msg.header();
        let sender = header.sender().map(|s| s.as_str());
        match (header.interface().map(|i| i.as_str()), header.member().map(|m| m.as_str())) {
            (Some(BUS_NAME), Some("NameOwnerChanged")) => self.name_owner_changed(msg, sender),
            // Unsolicited after Hello, about our own unique name.
            (Some(BUS_NAME), Some("NameAcquired" | "NameLost")) if sender == Some(BUS_NAME) => {
                Verdict::Ignore
            }
            (Some(PROPERTIES_INTERFACE), Some("PropertiesChanged")) => self.properties_changed(msg, sender),
            _ => Verdict::Drop("an unexpected signal"),
        }
    }

    fn name_owner_changed(&mut self, msg: &Message, sender: Option<&str>) -> Verdict {
        // dbus-daemon stamps every message's sender itself, so no client can claim to be
        // org.freedesktop.DBus.
        if sender != Some(BUS_NAME) || msg.header().path().map(|p| p.as_str()) != Some(BUS_PATH) {
            return Verdict::Drop("NameOwnerChanged not from the bus");
        }
        let body = msg.body();
        let Ok((name, _old, new)) = body.deserialize::<(&str, &str, &str)>() else {
            return Verdict::Drop("NameOwnerChanged with a malformed body");
        };
        if name != NETWORKD_NAME {
            return Verdict::Drop("NameOwnerChanged for another name");
        }
        let new_owner = match new {
            "" => None,
            unique if zbus::names::UniqueName::try_from(unique).is_ok() => Some(unique.to_owned()),
            _ => return Verdict::Drop("NameOwnerChanged with an invalid new owner"),
        };
        self.owner = new_owner.clone();
        Verdict::Deliver(BusEvent::OwnerChanged { new_owner })
    }

    fn properties_changed(&self, msg: &Message, sender: Option<&str>) -> Verdict {
        if self.owner.is_none() || sender != self.owner.as_deref() {
            return Verdict::Drop("PropertiesChanged not from the owner of org.freedesktop.network1");
        }
        let header = msg.header();
        let Some(index) = header.path().and_then(|p| decode_link_path(p.as_str())) else {
            return Verdict::Drop("PropertiesChanged on a path that is not a link");
        };
        let body = msg.body();
        if *body.signature() != "sa{sv}as" {
            return Verdict::Drop("PropertiesChanged with a wrong signature");
        }
        let Ok((interface, changed, _invalidated)) = body.deserialize::<(&str, States, Vec<&str>)>() else {
            return Verdict::Drop("PropertiesChanged with a malformed body or a state that is not a string");
        };
        if interface != LINK_INTERFACE {
            return Verdict::Drop("PropertiesChanged for another interface");
        }
        let oper = changed.oper.as_deref().map(OperState::parse);
        let admin = changed.admin.as_deref().map(AdminState::parse);
        if oper.is_none() && admin.is_none() {
            // CarrierState, AddressState, OnlineState alone: fanlink decides on these two.
            return Verdict::Ignore;
        }
        Verdict::Deliver(BusEvent::LinkChanged { index, oper, admin })
    }
}

/// The two properties fanlink decides on, from a PropertiesChanged's `a{sv}`: the other
/// entries are skipped without building values (decoding every entry into a map of generic
/// values was the reader's largest cost). A state of another type than a string fails the
/// whole body.
#[derive(Debug, Default, serde::Deserialize, zbus::zvariant::Type)]
#[zvariant(signature = "a{sv}")]
#[serde(default)]
struct States {
    #[serde(rename = "OperationalState", with = "zbus::zvariant::as_value::optional")]
    oper: Option<String>,
    #[serde(rename = "AdministrativeState", with = "zbus::zvariant::as_value::optional")]
    admin: Option<String>,
}

/// Logs a dropped message with every bus string escaped.
fn log_drop(msg: &Message, reason: &str) {
    let header = msg.header();
    let field = |v: Option<&str>| v.map_or_else(|| "-".to_owned(), escape);
    log::debug!(
        "dropped {reason}: sender={} path={} interface={} member={}",
        field(header.sender().map(|s| s.as_str())),
        field(header.path().map(|p| p.as_str())),
        field(header.interface().map(|i| i.as_str())),
        field(header.member().map(|m| m.as_str())),
    );
}

/// What the reader thread does with each message once the owner is seeded: classify, count,
/// hand on. Ends with one `Disconnected` when the connection is lost (not when `closing` says
/// we hung up ourselves).
pub(crate) struct Dispatch {
    pub(crate) classifier: Classifier,
    pub(crate) send: Box<dyn Fn(BusEvent) -> bool + Send>,
    pub(crate) stats: std::sync::Arc<ReaderStats>,
    pub(crate) closing: std::sync::Arc<AtomicBool>,
}

impl Dispatch {
    /// `false` once nobody listens any more (the reader then stops).
    pub(crate) fn message(&mut self, msg: &Message) -> bool {
        match self.classifier.classify(msg) {
            Verdict::Deliver(event) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                (self.send)(event)
            }
            Verdict::Ignore => true,
            Verdict::Drop(reason) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                log_drop(msg, reason);
                true
            }
        }
    }

    pub(crate) fn ended(&self, why: &std::io::Error) {
        if self.closing.load(Ordering::Acquire) {
            log::debug!("bus connection closed by us: {why}");
        } else {
            log::info!("system bus connection lost: {why}");
            // The receiver may already be gone; then nobody needs to hear about it.
            (self.send)(BusEvent::Disconnected);
        }
    }
}
