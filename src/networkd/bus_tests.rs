//! The connection's framing and replies, on zbus's bytes (the oracle of the wire format).

use super::*;
use crate::networkd::wire::message_length;
use zbus::Message;

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

/// The reply (or error) `msg` becomes, read back through the framing.
fn replied(msg: &Message) -> Result<Reply, Error> {
    let mut frames = Frames::default();
    frames.extend(msg.data());
    reply(&wire::Message::parse(frames.next().unwrap().unwrap()).unwrap())
}

fn call_to_reply() -> Message {
    Message::method_call("/o", "M").unwrap().destination("o.D").unwrap().build(&()).unwrap()
}

#[test]
fn a_reply_is_read_by_its_signature_whole() {
    let reply = Message::method_return(&call_to_reply().header()).unwrap().build(&("x", 7u32)).unwrap();
    let reply = replied(&reply).unwrap();
    let both = |b: &mut wire::Cursor<'_>| Some((b.string()?.to_owned(), b.u32()?));
    assert_eq!(reply.read("su", both).unwrap(), ("x".to_owned(), 7));
    // Another type, or a part of it left unread, is not the reply the caller expects.
    assert!(matches!(reply.string(), Err(Error::Reply(_))));
    assert!(matches!(reply.read("su", |b| b.string().map(str::to_owned)), Err(Error::Reply(_))));
}

#[test]
fn an_error_reply_is_its_name_and_message() {
    let call = call_to_reply();
    let error = Message::error(&call.header(), "org.example.Error.Nope").unwrap().build(&"not here").unwrap();
    let error = replied(&error).unwrap_err();
    assert_eq!(error.name(), Some("org.example.Error.Nope"));
    assert_eq!(error.to_string(), "org.example.Error.Nope: not here");
    let bare = Message::error(&call.header(), "org.example.Error.Bare").unwrap().build(&()).unwrap();
    assert!(matches!(replied(&bare), Err(Error::Method { message, .. }) if message.is_empty()));
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
fn a_header_that_claims_more_than_the_spec_allows_ends_the_connection() {
    for claimed in [SPEC_MAX_MESSAGE as u32 + 1, u32::MAX / 2, u32::MAX] {
        let mut liar = [0u8; 16];
        liar[0] = b'l';
        liar[1] = 4;
        liar[3] = 1;
        liar[4..8].copy_from_slice(&claimed.to_le_bytes());
        let mut frames = Frames::default();
        frames.extend(&liar);
        frames.extend(signal("After").data());
        let e = frames.next().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{claimed}: {e}");
        assert!(!frames.take_oversized(), "{claimed}: taken for a message to skip");
    }
    // The largest length the specification allows is a message, dropped as it comes.
    let mut giant = [0u8; 16];
    giant[0] = b'l';
    giant[4..8].copy_from_slice(&(SPEC_MAX_MESSAGE as u32 - 16).to_le_bytes());
    let mut frames = Frames::default();
    frames.extend(&giant);
    assert!(frames.next().unwrap().is_none());
    assert!(frames.take_oversized(), "a dropped giant is reported");
    assert!(!frames.take_oversized(), "once");
}

#[test]
fn a_header_of_garbage_ends_the_connection() {
    let mut frames = Frames::default();
    frames.extend(&[b'x'; 64]);
    assert_eq!(frames.next().unwrap_err().kind(), std::io::ErrorKind::InvalidData);
}
