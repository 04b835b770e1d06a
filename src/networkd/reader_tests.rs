//! The reader's decisions on hand-built messages: what networkd sends, and what a forger
//! or a confused peer might. zbus builds them and `wire` reads zbus's bytes, which is also
//! the proof that the two agree on the wire format.

use std::collections::HashMap;

use zbus::zvariant::Value;
use zbus::Message;

use super::reader::{BusEvent, Classifier, Verdict};
use super::{wire, AdminState, OperState};

const NETWORKD: &str = ":1.7";
const FORGER: &str = ":1.66";
const LINK2: &str = "/org/freedesktop/network1/link/_32";

fn changed(sender: &str, path: &str, interface: &str, props: &[(&str, Value<'_>)]) -> Message {
    let props: HashMap<&str, Value<'_>> = props.iter().map(|(k, v)| (*k, v.try_clone().unwrap())).collect();
    Message::signal(path, "org.freedesktop.DBus.Properties", "PropertiesChanged")
        .unwrap()
        .sender(sender)
        .unwrap()
        .build(&(interface, props, Vec::<&str>::new()))
        .unwrap()
}

fn oper(sender: &str, path: &str, value: Value<'_>) -> Message {
    changed(sender, path, "org.freedesktop.network1.Link", &[("OperationalState", value)])
}

fn owner_changed(sender: &str, name: &str, old: &str, new: &str) -> Message {
    Message::signal("/org/freedesktop/DBus", "org.freedesktop.DBus", "NameOwnerChanged")
        .unwrap()
        .sender(sender)
        .unwrap()
        .build(&(name, old, new))
        .unwrap()
}

/// What the reader decides on zbus's bytes of `msg`.
fn classify(c: &mut Classifier, msg: &Message) -> Verdict {
    c.classify(&wire::Message::parse(msg.data()).expect("zbus's message reads back"))
}

fn link_changed(index: u32, oper: Option<OperState>, admin: Option<AdminState>) -> Verdict {
    Verdict::Deliver(BusEvent::LinkChanged { index, oper, admin })
}

#[test]
fn accepts_networkd_states() {
    let mut c = Classifier::new(Some(NETWORKD.into()));
    assert_eq!(
        classify(&mut c, &oper(NETWORKD, LINK2, "off".into())),
        link_changed(2, Some(OperState::Off), None)
    );
    let both = changed(
        NETWORKD,
        "/org/freedesktop/network1/link/_312",
        "org.freedesktop.network1.Link",
        &[
            ("OperationalState", "routable".into()),
            ("CarrierState", "carrier".into()),
            ("AdministrativeState", "configured".into()),
        ],
    );
    assert_eq!(
        classify(&mut c, &both),
        link_changed(12, Some(OperState::Routable), Some(AdminState::Configured))
    );
    // A value the enum does not know is delivered as Unknown, never as routable.
    assert_eq!(
        classify(&mut c, &oper(NETWORKD, LINK2, "../../x".into())),
        link_changed(2, Some(OperState::Unknown), None)
    );
}

#[test]
fn ignores_other_link_properties() {
    let mut c = Classifier::new(Some(NETWORKD.into()));
    let msg = changed(NETWORKD, LINK2, "org.freedesktop.network1.Link", &[("OnlineState", "online".into())]);
    assert_eq!(classify(&mut c, &msg), Verdict::Ignore);
}

#[test]
fn drops_forgeries_and_malformed_messages() {
    let mut c = Classifier::new(Some(NETWORKD.into()));
    // On a link path from another sender: dropped, and the owner is in doubt (a lost
    // NameOwnerChanged would look the same).
    assert!(matches!(classify(&mut c, &oper(FORGER, LINK2, "routable".into())), Verdict::Doubt(_)));
    let dropped = [
        oper(FORGER, "/org/freedesktop/network1/link/_32/x", "routable".into()),
        oper(NETWORKD, "/org/freedesktop/network1/link/_32/x", "routable".into()),
        oper(NETWORKD, "/org/freedesktop/network1/network/_32", "routable".into()),
        oper(NETWORKD, "/org/freedesktop/network1/linkx", "routable".into()),
        oper(NETWORKD, "/tmp", "routable".into()),
        oper(NETWORKD, LINK2, Value::U32(9)),
        oper(NETWORKD, LINK2, Value::new(Value::from("routable"))),
        changed(
            NETWORKD,
            LINK2,
            "org.freedesktop.network1.Network",
            &[("OperationalState", "routable".into())],
        ),
        changed(NETWORKD, LINK2, "org.freedesktop.network1.Link", &[("AdministrativeState", true.into())]),
        Message::signal(LINK2, "org.freedesktop.DBus.Properties", "PropertiesChanged")
            .unwrap()
            .sender(NETWORKD)
            .unwrap()
            .build(&("org.freedesktop.network1.Link", "OperationalState", "routable"))
            .unwrap(),
        Message::signal(LINK2, "org.freedesktop.network1.Link", "StateChanged")
            .unwrap()
            .sender(NETWORKD)
            .unwrap()
            .build(&"routable")
            .unwrap(),
    ];
    for msg in dropped {
        assert!(matches!(classify(&mut c, &msg), Verdict::Drop(_)), "{msg:?}");
    }
}

#[test]
fn drops_everything_while_networkd_is_not_running() {
    let mut c = Classifier::new(None);
    // networkd may be back with its NameOwnerChanged lost: in doubt, never trusted.
    assert!(matches!(classify(&mut c, &oper(NETWORKD, LINK2, "routable".into())), Verdict::Doubt(_)));
    // Only the bus's answer makes a sender the owner.
    c.set_owner(Some(NETWORKD.into()));
    assert_eq!(
        classify(&mut c, &oper(NETWORKD, LINK2, "routable".into())),
        link_changed(2, Some(OperState::Routable), None)
    );
}

#[test]
fn a_limit_reported_by_the_bus_is_a_loss_and_no_one_else_can_report_it() {
    let mut c = Classifier::new(Some(NETWORKD.into()));
    let call = Message::method_call("/", "Ping").unwrap().sender(":1.3").unwrap().build(&()).unwrap();
    let limit = |sender: &str| {
        Message::error(&call.header(), "org.freedesktop.DBus.Error.LimitsExceeded")
            .unwrap()
            .sender(sender)
            .unwrap()
            .build(&"Rejected: destination has a full message queue")
            .unwrap()
    };
    assert_eq!(classify(&mut c, &limit("org.freedesktop.DBus")), Verdict::Deliver(BusEvent::Lost));
    assert_eq!(classify(&mut c, &limit(FORGER)), Verdict::Ignore);
    let other = Message::error(&call.header(), "org.freedesktop.DBus.Error.NoReply")
        .unwrap()
        .sender("org.freedesktop.DBus")
        .unwrap()
        .build(&"late")
        .unwrap();
    assert_eq!(classify(&mut c, &other), Verdict::Ignore);
}

#[test]
fn tracks_the_owner_from_the_bus_only() {
    let mut c = Classifier::new(Some(NETWORKD.into()));
    // A forged NameOwnerChanged (sent by a client, addressed to us) changes nothing.
    let forged = owner_changed(FORGER, "org.freedesktop.network1", NETWORKD, FORGER);
    assert!(matches!(classify(&mut c, &forged), Verdict::Drop(_)));
    assert!(matches!(classify(&mut c, &oper(FORGER, LINK2, "routable".into())), Verdict::Doubt(_)));

    let other_name = owner_changed("org.freedesktop.DBus", "org.example", "", FORGER);
    assert!(matches!(classify(&mut c, &other_name), Verdict::Drop(_)));

    let gone = owner_changed("org.freedesktop.DBus", "org.freedesktop.network1", NETWORKD, "");
    assert_eq!(classify(&mut c, &gone), Verdict::Deliver(BusEvent::OwnerChanged { new_owner: None }));
    assert!(matches!(classify(&mut c, &oper(NETWORKD, LINK2, "routable".into())), Verdict::Doubt(_)));

    let back = owner_changed("org.freedesktop.DBus", "org.freedesktop.network1", "", ":1.9");
    assert_eq!(
        classify(&mut c, &back),
        Verdict::Deliver(BusEvent::OwnerChanged { new_owner: Some(":1.9".into()) })
    );
    assert!(matches!(classify(&mut c, &oper(NETWORKD, LINK2, "routable".into())), Verdict::Doubt(_)));
    assert_eq!(
        classify(&mut c, &oper(":1.9", LINK2, "routable".into())),
        link_changed(2, Some(OperState::Routable), None)
    );
}

#[test]
fn ignores_replies_and_our_own_name() {
    let mut c = Classifier::new(Some(NETWORKD.into()));
    let acquired = Message::signal("/org/freedesktop/DBus", "org.freedesktop.DBus", "NameAcquired")
        .unwrap()
        .sender("org.freedesktop.DBus")
        .unwrap()
        .build(&":1.3")
        .unwrap();
    assert_eq!(classify(&mut c, &acquired), Verdict::Ignore);
    let call = Message::method_call("/", "Ping").unwrap().sender(FORGER).unwrap().build(&()).unwrap();
    assert!(matches!(classify(&mut c, &call), Verdict::Drop(_)));
    let reply = Message::method_return(&call.header()).unwrap().sender(NETWORKD).unwrap().build(&()).unwrap();
    assert_eq!(classify(&mut c, &reply), Verdict::Ignore);
}
