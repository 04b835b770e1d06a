//! The wire reader against zbus's bytes (both endiannesses), against hand-built forgeries
//! (lying lengths, strings without their NUL, bad signatures, deep nesting), and against
//! mutated real messages, which must never make it panic.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use zbus::zvariant::{Endian, Value};

use super::{unique_name_ok, Arg, Call, Kind, Message};
use crate::networkd::reader::{BusEvent, Classifier, Verdict};
use crate::networkd::OperState;

const NETWORKD: &str = ":1.7";
const LINK2: &str = "/org/freedesktop/network1/link/_32";

fn changed(endian: Endian, props: &[(&str, Value<'_>)]) -> zbus::Message {
    let props: HashMap<&str, Value<'_>> = props.iter().map(|(k, v)| (*k, v.try_clone().unwrap())).collect();
    zbus::Message::signal(LINK2, "org.freedesktop.DBus.Properties", "PropertiesChanged")
        .unwrap()
        .sender(NETWORKD)
        .unwrap()
        .endian(endian)
        .build(&("org.freedesktop.network1.Link", props, vec!["OnlineState"]))
        .unwrap()
}

/// Real messages of every type, in both endiannesses.
pub(super) fn samples() -> Vec<zbus::Message> {
    let mut out = Vec::new();
    for endian in [Endian::Little, Endian::Big] {
        let call = zbus::Message::method_call("/org/freedesktop/DBus", "GetNameOwner")
            .unwrap()
            .sender(":1.3")
            .unwrap()
            .destination("org.freedesktop.DBus")
            .unwrap()
            .interface("org.freedesktop.DBus")
            .unwrap()
            .endian(endian)
            .build(&"org.freedesktop.network1")
            .unwrap();
        let reply = zbus::Message::method_return(&call.header()).unwrap().sender(":1.7").unwrap();
        let links = vec![(2i32, "eth0", zbus::zvariant::ObjectPath::from_static_str_unchecked(LINK2))];
        out.push(reply.build(&links).unwrap());
        let error =
            zbus::Message::error(&call.header(), "org.freedesktop.DBus.Error.NameHasNoOwner").unwrap();
        out.push(error.build(&"no owner").unwrap());
        out.push(call);
        out.push(changed(
            endian,
            &[
                ("OperationalState", "routable".into()),
                ("CarrierState", "carrier".into()),
                ("AdministrativeState", "configured".into()),
                ("Addresses", Value::from(vec![vec![10u8, 0, 0, 1]])),
                ("Flags", Value::from(7u64)),
                ("Nested", Value::new(Value::from((1u16, true, "x")))),
                ("Dict", Value::from(HashMap::from([("a", 1u32), ("b", 2)]))),
            ],
        ));
        let owner =
            zbus::Message::signal("/org/freedesktop/DBus", "org.freedesktop.DBus", "NameOwnerChanged")
                .unwrap()
                .sender("org.freedesktop.DBus")
                .unwrap()
                .endian(endian)
                .build(&("org.freedesktop.network1", "", ":1.9"))
                .unwrap();
        out.push(owner);
    }
    out
}

#[test]
fn reads_the_header_fields_zbus_writes() {
    for msg in samples() {
        let view = Message::parse(msg.data()).unwrap_or_else(|e| panic!("{e}: {msg:?}"));
        let header = msg.header();
        let kind = match msg.message_type() {
            zbus::message::Type::MethodCall => Kind::MethodCall,
            zbus::message::Type::MethodReturn => Kind::MethodReturn,
            zbus::message::Type::Error => Kind::Error,
            zbus::message::Type::Signal => Kind::Signal,
        };
        assert_eq!(view.kind, kind);
        assert_eq!(view.big_endian, msg.data()[0] == b'B');
        assert_eq!(view.reply_serial, header.reply_serial().map(|s| s.get()));
        assert_eq!(view.path, header.path().map(|p| p.as_str()));
        assert_eq!(view.interface, header.interface().map(|i| i.as_str()));
        assert_eq!(view.member, header.member().map(|m| m.as_str()));
        assert_eq!(view.sender, header.sender().map(|s| s.as_str()));
        assert_eq!(view.error_name, header.error_name().map(|e| e.as_str()));
        assert_eq!(view.signature, header.signature().to_string_no_parens());
        assert_eq!(view.bytes(), &msg.data()[..]);
        let mut c = Classifier::new(Some(NETWORKD.into()));
        if view.member == Some("PropertiesChanged") {
            assert!(matches!(c.classify(&view), Verdict::Deliver(_)), "{msg:?}");
        }
    }
}

#[test]
fn decodes_big_endian_signals() {
    let mut c = Classifier::new(Some(NETWORKD.into()));
    let dict: HashMap<&str, u32> = [("a", 1), ("b", 2)].into();
    let msg = changed(
        Endian::Big,
        &[("Flags", Value::from(7u64)), ("Dict", Value::from(dict)), ("OperationalState", "routable".into())],
    );
    assert_eq!(msg.data()[0], b'B');
    assert_eq!(
        c.classify(&Message::parse(msg.data()).unwrap()),
        Verdict::Deliver(BusEvent::LinkChanged { index: 2, oper: Some(OperState::Routable), admin: None })
    );
}

/// A little-endian writer for forgeries; offsets count from the body's start, which is
/// 8-aligned in a message, so alignment comes out as in one.
#[derive(Default)]
pub(super) struct W(pub(super) Vec<u8>);

impl W {
    fn pad(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len().next_multiple_of(n), 0);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.pad(4).0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn str(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32).0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn sig(&mut self, s: &str) -> &mut Self {
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
}

/// A PropertiesChanged from networkd on link 2 with `body` as its bytes.
pub(super) fn forged(body: &[u8]) -> Vec<u8> {
    let mut fields = W::default();
    let field = |w: &mut W, code: u8, sig: &str| {
        w.pad(8).0.push(code);
        w.sig(sig);
    };
    field(&mut fields, 1, "o");
    fields.str(LINK2);
    field(&mut fields, 2, "s");
    fields.str("org.freedesktop.DBus.Properties");
    field(&mut fields, 3, "s");
    fields.str("PropertiesChanged");
    field(&mut fields, 7, "s");
    fields.str(NETWORKD);
    field(&mut fields, 8, "g");
    fields.sig("sa{sv}as");
    let mut msg = W(vec![b'l', 4, 0, 1]);
    msg.u32(body.len() as u32).u32(1).u32(fields.0.len() as u32);
    msg.0.extend_from_slice(&fields.0);
    msg.pad(8).0.extend_from_slice(body);
    msg.0
}

/// A PropertiesChanged body: the link interface, one entry `key` of variant signature `sig`
/// whose value `value` writes, no invalidated properties.
pub(super) fn body(key: &str, sig: &str, value: impl FnOnce(&mut W) -> &mut W) -> W {
    let mut entry = W::default();
    entry.str(key).sig(sig);
    value(&mut entry);
    let mut w = W::default();
    w.str("org.freedesktop.network1.Link").u32(entry.0.len() as u32).pad(8);
    w.0.extend_from_slice(&entry.0);
    w.u32(0);
    w
}

fn verdict(bytes: &[u8]) -> Verdict {
    match Message::parse(bytes) {
        Ok(msg) => Classifier::new(Some(NETWORKD.into())).classify(&msg),
        Err(why) => Verdict::Drop(why),
    }
}

#[test]
fn the_forger_writes_what_networkd_sends() {
    let routable = body("OperationalState", "s", |w| w.str("routable"));
    assert_eq!(
        verdict(&forged(&routable.0)),
        Verdict::Deliver(BusEvent::LinkChanged { index: 2, oper: Some(OperState::Routable), admin: None })
    );
    // The twins of the forgeries below, within the rules: skipped, not refused.
    let deep = body("Deep", &format!("{}y", "a".repeat(32)), |w| w.u32(0));
    let variants = body("X", "v", |w| {
        for _ in 0..10 {
            w.sig("v");
        }
        w.sig("y").0.push(1);
        w
    });
    let valid = [
        deep,
        variants,
        body("X", "b", |w| w.u32(1)),
        body("X", "o", |w| w.str("/a_1/b")),
        body("X", "a{sv}", |w| w.u32(0).pad(8)),
        body("X", "(sy)", |w| {
            w.pad(8).str("x").0.push(7);
            w
        }),
    ];
    for (i, b) in valid.iter().enumerate() {
        assert_eq!(verdict(&forged(&b.0)), Verdict::Ignore, "twin {i}");
    }
}

#[test]
fn refuses_lying_lengths_and_malformed_values() {
    let routable = body("OperationalState", "s", |w| w.str("routable"));
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = routable.0.clone();
        edit(&mut b);
        forged(&b)
    };
    let len = routable.0.len();
    let mut cases = vec![
        // The interface's length runs past the body; the dict's length past the body.
        ("string past the end", with(&|b| b[0] = 200)),
        ("array past the end", with(&|b| b[36] = 200)),
        // "routable" loses its NUL; the invalidated array is cut off.
        ("string without its NUL", with(&|b| b[len - 8] = b'x')),
        ("truncated body", with(&|b| b.truncate(len - 2))),
        ("bytes after the body", with(&|b| b.extend_from_slice(&[0; 8]))),
        ("non-zero padding", with(&|b| b[34] = 1)),
        ("a state twice", {
            let mut entry = W::default();
            entry.str("OperationalState").sig("s").str("off");
            entry.pad(8).str("OperationalState").sig("s").str("routable");
            let mut w = W::default();
            w.str("org.freedesktop.network1.Link").u32(entry.0.len() as u32).pad(8);
            w.0.extend_from_slice(&entry.0);
            w.u32(0);
            forged(&w.0)
        }),
        ("a state that is a variant", forged(&body("OperationalState", "v", |w| w.sig("s").str("x")).0)),
        ("a state that is a number", forged(&body("AdministrativeState", "u", |w| w.u32(1)).0)),
        ("a boolean that is 2", forged(&body("X", "b", |w| w.u32(2)).0)),
        ("nesting past 64", forged(&body("X", &format!("{}y", "a".repeat(65)), |w| w.u32(0)).0)),
        ("variants nested past 64", {
            forged(
                &body("X", "v", |w| {
                    for _ in 0..100 {
                        w.sig("v");
                    }
                    w.sig("y").0.push(1);
                    w
                })
                .0,
            )
        }),
        ("an object path that is not one", forged(&body("X", "o", |w| w.str("no/slash")).0)),
        (
            "invalid UTF-8",
            forged(
                &body("X", "s", |w| {
                    w.u32(1).0.extend_from_slice(&[0xff, 0]);
                    w
                })
                .0,
            ),
        ),
    ];
    for bad in ["", "a", "ss", "(", "()", "{ss}", "a{vs}", "a{s}", "a{sss}", "(s", "z", "a("] {
        cases.push(("a variant with a bad signature", forged(&body("X", bad, |w| w.u32(0)).0)));
    }
    for (what, msg) in cases {
        assert!(matches!(verdict(&msg), Verdict::Drop(_)), "{what}: {:?}", verdict(&msg));
    }
}

#[test]
fn refuses_malformed_headers() {
    let good = forged(&body("OperationalState", "s", |w| w.str("routable")).0);
    assert!(Message::parse(&good).is_ok());
    let with = |at: usize, byte: u8| {
        let mut m = good.clone();
        m[at] = byte;
        Message::parse(&m).err()
    };
    assert!(with(0, b'x').is_some(), "no endianness");
    assert!(with(1, 0).is_some() && with(1, 5).is_some(), "message type");
    assert!(with(3, 2).is_some(), "protocol version");
    assert!(with(8, 0).is_some(), "serial 0");
    assert!(with(12, 0xff).is_some(), "fields past the end");
    assert!(with(16, 0).is_some(), "header field 0");
    assert!(with(17, 2).is_some(), "field signature past the end");
    assert!(with(18, b's').is_some(), "a path of the wrong type");
    assert!(with(20, 200).is_some(), "the path's length past the fields");
    assert!(with(24, b'x').is_some(), "a path that is not one");
    // The fields array claims 8 bytes of the body, the body 8 bytes less: the total still
    // agrees, and the body's first bytes are then read as a header field.
    let mut lying = good.clone();
    let fields = u32::from_le_bytes(lying[12..16].try_into().unwrap());
    let body = u32::from_le_bytes(lying[4..8].try_into().unwrap());
    lying[12..16].copy_from_slice(&(fields.next_multiple_of(8) + 8).to_le_bytes());
    lying[4..8].copy_from_slice(&(body - 8).to_le_bytes());
    assert_eq!(Message::parse(&lying).err(), Some("malformed header fields"));
    for len in 0..good.len() {
        assert!(Message::parse(&good[..len]).is_err(), "truncated to {len}");
    }
    // The member field (code 3) turned into a second interface (code 2).
    let member = good.windows(2).position(|w| w == [3, 1]).unwrap();
    assert_eq!(with(member, 2), Some("a header field twice"));
}

/// Mutations of real messages: bytes overwritten, then cut short or not,
/// with the fixed header's body length made to agree so the parser reads on.
#[test]
fn mutated_messages_never_panic() {
    let samples: Vec<Vec<u8>> = samples()
        .iter()
        .map(|m| m.data().to_vec())
        .chain([forged(&body("OperationalState", "s", |w| w.str("routable")).0)])
        .collect();
    let cases = std::env::var("FANLINK_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(4096);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (
        0..samples.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        prop::option::of(any::<prop::sample::Index>()),
    );
    let parsed = std::cell::Cell::new(0u32);
    let result = runner.run(&strategy, |(which, edits, cut)| {
        let mut m = samples[which].clone();
        for (at, byte) in edits {
            let at = at.index(m.len());
            m[at] = byte;
        }
        if let Some(cut) = cut {
            m.truncate(16 + cut.index(m.len() - 15));
            let header = (16 + header_fields(&m)).next_multiple_of(8);
            if let Some(body) = m.len().checked_sub(header).and_then(|b| u32::try_from(b).ok()) {
                let len = if m[0] == b'B' { body.to_be_bytes() } else { body.to_le_bytes() };
                m[4..8].copy_from_slice(&len);
            }
        }
        if let Ok(msg) = Message::parse(&m) {
            parsed.set(parsed.get() + 1);
            let _ = Classifier::new(Some(NETWORKD.into())).classify(&msg);
            let _ = Classifier::new(msg.sender.map(str::to_owned)).classify(&msg);
        }
        Ok(())
    });
    eprintln!("[fuzz] mutated messages: {cases} inputs, {} read as messages", parsed.get());
    result.unwrap();
    assert!(parsed.get() > 0, "no mutation got past the header: the loop tests nothing deep");
}

/// The fields array's length from a fixed header, in its own endianness.
fn header_fields(m: &[u8]) -> usize {
    let b = [m[12], m[13], m[14], m[15]];
    (if m[0] == b'B' { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }) as usize
}

#[test]
fn object_paths() {
    for ok in ["/", "/a", "/org/freedesktop/network1/link/_32", "/A_1/b2"] {
        assert!(super::object_path_ok(ok), "{ok}");
    }
    for bad in ["", "a", "a/b", "//", "/a/", "/a//b", "/a-b", "/é", "/a/ b", "/a\0"] {
        assert!(!super::object_path_ok(bad), "{bad:?}");
    }
}

/// Ours and zbus's bytes of the same call, both with zbus's serial.
fn both(
    path: &str,
    interface: &str,
    member: &str,
    args: &[Arg<'_>],
    body: impl FnOnce(zbus::message::Builder<'_>) -> zbus::Message,
) -> (Vec<u8>, Vec<u8>) {
    let destination = "org.freedesktop.network1";
    let theirs = body(
        zbus::Message::method_call(path, member)
            .unwrap()
            .destination(destination)
            .unwrap()
            .interface(interface)
            .unwrap(),
    );
    let mut ours = Vec::new();
    Call::new(destination, path, interface, member, args)
        .unwrap()
        .stamped(theirs.primary_header().serial_num().get(), &mut ours);
    (ours, theirs.data().to_vec())
}

#[test]
fn writes_each_call_byte_for_byte_as_zbus_does() {
    let link = "/org/freedesktop/network1/link/_32";
    let manager = "org.freedesktop.network1.Manager";
    let cases = [
        both("/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello", &[], |b| b.build(&()).unwrap()),
        both(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            &[Arg::Str("type='signal'")],
            |b| b.build(&"type='signal'").unwrap(),
        ),
        both("/org/freedesktop/network1", manager, "ListLinks", &[], |b| b.build(&()).unwrap()),
        both("/org/freedesktop/network1", manager, "GetLinkByIndex", &[Arg::I32(-2)], |b| {
            b.build(&(-2i32)).unwrap()
        }),
        both(
            link,
            "org.freedesktop.DBus.Properties",
            "Get",
            &[Arg::Str("a.b.C"), Arg::Str("OperationalState")],
            |b| b.build(&("a.b.C", "OperationalState")).unwrap(),
        ),
        both("/", "i.J", "Odd", &[Arg::Str(""), Arg::I32(i32::MAX), Arg::Str("é")], |b| {
            b.build(&("", i32::MAX, "é")).unwrap()
        }),
    ];
    for (ours, theirs) in cases {
        assert_eq!(ours, theirs);
        let read = Message::parse(&ours).unwrap();
        assert_eq!(read.kind, Kind::MethodCall);
    }
}

#[test]
fn refuses_to_write_a_call_the_bus_would_hang_up_on() {
    let call = |path: &str, arg: &str| Call::new("o.D", path, "o.I", "M", &[Arg::Str(arg)]).map(|_| ());
    assert_eq!(call("/o", "a\0b"), Err("a string with a NUL"));
    assert_eq!(call("o", "x"), Err("not an object path"));
    assert_eq!(call("/o/", "x"), Err("not an object path"));
    assert_eq!(Call::new("o.D\0", "/o", "o.I", "M", &[]).map(|_| ()), Err("a string with a NUL"));
    assert_eq!(call("/o", "x"), Ok(()));
}

#[test]
fn unique_names_as_zbus_judges_them() {
    let samples = [
        ":1.7",
        ":1.7.9",
        ":a-b.c_d",
        ":1",
        ":",
        ":1.",
        ":.1",
        ":1..2",
        ":1.7 ",
        ":1.é",
        "1.7",
        "org.freedesktop.DBus",
        "",
        ":x.\0",
    ];
    let long = format!(":1.{}", "7".repeat(253));
    let longer = format!(":1.{}", "7".repeat(254));
    for name in samples.iter().copied().chain([long.as_str(), longer.as_str()]) {
        // zbus also takes the bus's own name, which is never the new owner of another name.
        let theirs = zbus::names::UniqueName::try_from(name).is_ok() && name != "org.freedesktop.DBus";
        assert_eq!(unique_name_ok(name), theirs, "{name:?}");
    }
}
