//! The reader's checks that no other test isolates, each with a message that only it refuses,
//! and a differential fuzz of the header reader against zbus's (`Message::from_bytes`, the
//! parser behind zbus's connections): on arbitrary bytes and on mutations of real messages
//! the two agree on accept/reject, or the difference is one listed in `explained`. Long runs
//! (`bench/fuzz`) and their figures: bench/README.md "Fuzzing".

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use zbus::zvariant::serialized::{Context, Data};
use zbus::zvariant::Endian;

use super::tests::{body, forged, samples};
use super::Message;
use crate::networkd::reader::{Classifier, Verdict};

fn routable() -> Vec<u8> {
    forged(&body("OperationalState", "s", |w| w.str("routable")).0)
}

fn fields_end(m: &[u8]) -> usize {
    16 + u32::from_le_bytes(m[12..16].try_into().unwrap()) as usize
}

#[test]
fn padding_after_the_header_fields_must_be_zero() {
    let good = routable();
    let end = fields_end(&good);
    assert_ne!(end % 8, 0, "the sample has padding after its fields");
    let mut m = good.clone();
    m[end] = 1;
    assert_eq!(Message::parse(&m).err(), Some("padding after the header fields that is not zero"));
}

#[test]
fn each_type_needs_its_header_fields() {
    let good = routable();
    // A signal's fields (path, interface, member) as an error (needs REPLY_SERIAL and
    // ERROR_NAME) or a method return (needs REPLY_SERIAL).
    for kind in [2, 3] {
        let mut m = good.clone();
        m[1] = kind;
        assert_eq!(
            Message::parse(&m).err(),
            Some("a header field its type requires is missing"),
            "type {kind}"
        );
    }
    // As a method call it has what one needs.
    let mut m = good.clone();
    m[1] = 1;
    assert!(Message::parse(&m).is_ok());
}

#[test]
fn a_body_needs_a_signature() {
    let mut m = routable();
    // The SIGNATURE field (code 8, type "g") renumbered 10: an unknown field, skipped.
    let at = m.windows(3).position(|w| w == [8, 1, b'g']).unwrap();
    m[at] = 10;
    assert_eq!(Message::parse(&m).err(), Some("a body without a signature"));
}

#[test]
fn name_owner_changed_with_trailing_bytes_is_dropped() {
    let owner =
        samples().into_iter().find(|m| m.header().member().is_some_and(|n| n == "NameOwnerChanged")).unwrap();
    let mut m = owner.data().to_vec();
    assert_eq!(m[0], b'l');
    let parse = |m: &[u8]| Classifier::new(None).classify(&Message::parse(m).unwrap());
    assert!(matches!(parse(&m), Verdict::Deliver(_)));
    // Four bytes more after the three strings, counted in the body length.
    m.extend_from_slice(&[0, 0, 0, 0]);
    let len = u32::from_le_bytes(m[4..8].try_into().unwrap()) + 4;
    m[4..8].copy_from_slice(&len.to_le_bytes());
    assert_eq!(parse(&m), Verdict::Drop("NameOwnerChanged with a malformed body"));
}

/// Found by the differential fuzz: fanlink took a reply to serial 0, which no call has (zbus
/// refuses it). It matched no call of fanlink's, but it is not a message.
#[test]
fn a_reply_to_serial_zero_is_refused() {
    let error = samples().into_iter().find(|m| m.header().error_name().is_some()).unwrap();
    let mut m = error.data().to_vec();
    assert!(Message::parse(&m).is_ok_and(|msg| msg.reply_serial.is_some()));
    let at = m.windows(4).position(|w| w == [5, 1, b'u', 0]).unwrap() + 4;
    m[at..at + 4].copy_from_slice(&[0; 4]);
    assert_eq!(Message::parse(&m).err(), Some("malformed header fields"));
}

/// zbus's reading of a whole message: the framing its socket reader does (the endianness
/// byte, the lengths adding up to the size), then `Message::from_bytes`.
fn zbus_reads(bytes: &[u8]) -> Result<(), String> {
    let endian = match bytes.first() {
        Some(b'l') => Endian::Little,
        Some(b'B') => Endian::Big,
        _ => return Err("endianness".into()),
    };
    if bytes.len() < 16 {
        return Err("short".into());
    }
    let word = |at: usize| {
        let b: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        let w = if endian == Endian::Big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) };
        w as usize
    };
    let total = (16 + word(12)).next_multiple_of(8) + word(4);
    if total != bytes.len() {
        return Err("lengths".into());
    }
    let data = Data::new(bytes.to_vec(), Context::new_dbus(endian, 0));
    // SAFETY: from_bytes is unsafe only in that the bytes may be any encoding; it parses them.
    unsafe { zbus::Message::from_bytes(data) }.map(drop).map_err(|e| e.to_string())
}

/// The differences found and why each is right for fanlink (see the module doc).
fn explained(ours: &Result<Message<'_>, &'static str>, theirs: &Result<(), String>) -> Option<&'static str> {
    match (ours, theirs) {
        // zbus's from_bytes reads the primary header and the fields array only: these are
        // checks it leaves to whoever reads on (its own connection checks none of them).
        (Err("padding after the header fields that is not zero"), Ok(())) => {
            Some("zbus is looser on padding")
        }
        (Err("a header field its type requires is missing"), Ok(())) => {
            Some("zbus checks required fields only when building")
        }
        (Err("a body without a signature"), Ok(())) => Some("zbus does not read the body"),
        (Err("serial 0"), Ok(())) => Some("zbus takes serial 0"),
        (Err("not protocol version 1"), Ok(())) => Some("zbus does not check the version"),
        (Err("an unknown message type"), Ok(())) => Some("zbus reads unknown types as Invalid"),
        // zbus's from_bytes takes the fields' values unchecked (an object path with a byte
        // that no path may hold, a signature string that is none, a field twice): fanlink
        // refuses what the specification calls invalid, which dbus-daemon never delivers.
        (Err("malformed header fields" | "a header field twice" | "header field 0"), Ok(())) => {
            Some("zbus does not validate header values")
        }
        // The specification: "Unknown flags must be ignored"; zbus refuses flag bits it
        // does not know.
        (Ok(_), Err(e)) if e.contains("valid bit representation") => Some("zbus refuses unknown flags"),
        // zbus validates bus, interface, member and error names as it reads; fanlink only
        // compares them with its own fixed names (and a new owner with `unique_name_ok`),
        // which an invalid name never equals, and ignores the destination.
        (Ok(_), Err(e)) if e.starts_with("Invalid") && e.contains("name") => Some("zbus validates names"),
        // The specification: unknown header fields must be accepted and ignored; zbus
        // refuses codes above 9 (fanlink skips them by their signature).
        (Ok(_), Err(e)) if e.contains("expected one of: 1, 2, 3") => Some("fanlink skips unknown fields"),
        _ => None,
    }
}

fn compare(bytes: &[u8]) -> Result<(), TestCaseError> {
    let ours = Message::parse(bytes);
    let theirs = zbus_reads(bytes);
    if ours.is_ok() != theirs.is_ok() && explained(&ours, &theirs).is_none() {
        return Err(TestCaseError::fail(format!(
            "fanlink {:?}, zbus {theirs:?} on {bytes:02x?}",
            ours.err()
        )));
    }
    Ok(())
}

fn cases(default: u32) -> u32 {
    std::env::var("FANLINK_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default)
}

#[test]
fn agrees_with_zbus_on_mutations_of_real_messages() {
    let real: Vec<Vec<u8>> = samples().iter().map(|m| m.data().to_vec()).chain([routable()]).collect();
    let strategy = (
        prop::sample::select(real),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        any::<bool>(),
    );
    let mut runner =
        TestRunner::new(Config { cases: cases(2048), failure_persistence: None, ..Config::default() });
    let started = std::time::Instant::now();
    runner
        .run(&strategy, |(mut m, edits, keep_lengths)| {
            for (at, byte) in edits {
                let at = at.index(m.len());
                // Leave the fixed header's lengths alone half the time, so that the parsers
                // get past the framing.
                if keep_lengths && ((4..8).contains(&at) || (12..16).contains(&at)) {
                    continue;
                }
                m[at] = byte;
            }
            compare(&m)
        })
        .unwrap();
    eprintln!("[fuzz] wire vs zbus, mutations: {} cases in {:.1?}", cases(2048), started.elapsed());
}

#[test]
fn agrees_with_zbus_on_arbitrary_bytes() {
    let strategy = prop::collection::vec(any::<u8>(), 0..256).prop_map(|mut m| {
        // A plausible start, so that most inputs reach the fields.
        if m.len() >= 16 {
            m[0] = b'l';
            let fields = (m.len() - 16) as u32;
            m[12..16].copy_from_slice(&fields.to_le_bytes());
            m[4..8].copy_from_slice(&0u32.to_le_bytes());
        }
        m
    });
    let mut runner =
        TestRunner::new(Config { cases: cases(2048), failure_persistence: None, ..Config::default() });
    let started = std::time::Instant::now();
    runner.run(&strategy, |m| compare(&m)).unwrap();
    eprintln!("[fuzz] wire vs zbus, arbitrary bytes: {} cases in {:.1?}", cases(2048), started.elapsed());
}
