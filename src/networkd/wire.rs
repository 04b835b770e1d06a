//! The D-Bus wire format (the specification's "Message Format"): a message's header read as
//! a view of its bytes, a cursor for the few body values fanlink decodes, and the method
//! calls it makes, written.
//!
//! A message is read in place and nothing is allocated: when zbus decoded every signal
//! (header fields parsed into owned values, signature strings parsed), that was half of the
//! daemon's instructions per event, for three strings the classifier looks at. fanlink
//! makes a dozen kinds of call, with strings and an int32 for arguments; writing them here
//! took zbus and its serde layer out of the binary (252 of its 2017 KiB; the binary is most
//! of the daemon's resident memory: bench/README point 19). zbus stays the tests' oracle.
//!
//! The bytes come from anyone on the bus: every length and offset is checked against the
//! bytes it claims, padding must be zero, strings valid UTF-8 without NUL, signatures
//! well-formed and nested no deeper than the specification allows; a failure is `None` (or
//! the reason, for a header), never a panic.

/// The fixed part of every message: endianness, type, flags, version, body length, serial,
/// and the length of the header fields array.
pub(crate) const FIXED_HEADER: usize = 16;
/// The specification's limit on nesting (32 arrays and 32 structs); variants count too here.
const MAX_DEPTH: u32 = 64;

/// The four message types; others are rejected (none exists in protocol version 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    MethodCall,
    MethodReturn,
    Error,
    Signal,
}

/// One whole message, read in place. Absent header fields are `None`; `signature` is empty
/// when the message has no body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    pub(crate) kind: Kind,
    pub(crate) reply_serial: Option<u32>,
    pub(crate) path: Option<&'a str>,
    pub(crate) interface: Option<&'a str>,
    pub(crate) member: Option<&'a str>,
    pub(crate) sender: Option<&'a str>,
    pub(crate) error_name: Option<&'a str>,
    pub(crate) signature: &'a str,
    /// Little-endian (`false`) or big-endian, as the first byte says.
    pub(crate) big_endian: bool,
    bytes: &'a [u8],
    body_start: usize,
}

/// A message's whole length from its fixed header: the header (fixed part and fields array),
/// padded to 8, then the body. `None` if the first byte names no endianness or the lengths
/// overflow.
pub(crate) fn message_length(fixed: &[u8; FIXED_HEADER]) -> Option<usize> {
    let big = match fixed[0] {
        b'l' => false,
        b'B' => true,
        _ => return None,
    };
    let word =
        |at: usize| usize::try_from(read_u32(big, [fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]]));
    let body = word(4).ok()?;
    let fields = word(12).ok()?;
    FIXED_HEADER.checked_add(fields)?.checked_next_multiple_of(8)?.checked_add(body)
}

impl<'a> Message<'a> {
    /// Reads the header of the message that is exactly `bytes`.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, &'static str> {
        let fixed: &[u8; FIXED_HEADER] =
            bytes.get(..FIXED_HEADER).and_then(|f| f.try_into().ok()).ok_or("shorter than a header")?;
        let total = message_length(fixed).ok_or("no endianness or lengths out of range")?;
        if total != bytes.len() {
            return Err("its lengths do not add up to its size");
        }
        let kind = match fixed[1] {
            1 => Kind::MethodCall,
            2 => Kind::MethodReturn,
            3 => Kind::Error,
            4 => Kind::Signal,
            _ => return Err("an unknown message type"),
        };
        if fixed[3] != 1 {
            return Err("not protocol version 1");
        }
        let big_endian = fixed[0] == b'B';
        if read_u32(big_endian, [fixed[8], fixed[9], fixed[10], fixed[11]]) == 0 {
            return Err("serial 0");
        }
        let fields_end =
            FIXED_HEADER + read_u32(big_endian, [fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
        let body_start = fields_end.next_multiple_of(8);
        let mut msg = Message {
            kind,
            reply_serial: None,
            path: None,
            interface: None,
            member: None,
            sender: None,
            error_name: None,
            signature: "",
            big_endian,
            bytes,
            body_start,
        };
        msg.read_fields(Cursor { bytes, pos: FIXED_HEADER, end: fields_end, big_endian })?;
        if bytes[fields_end..body_start].iter().any(|b| *b != 0) {
            return Err("padding after the header fields that is not zero");
        }
        if body_start < bytes.len() && msg.signature.is_empty() {
            return Err("a body without a signature");
        }
        let required = match kind {
            Kind::MethodCall => msg.path.is_some() && msg.member.is_some(),
            Kind::Signal => msg.path.is_some() && msg.interface.is_some() && msg.member.is_some(),
            Kind::MethodReturn => msg.reply_serial.is_some(),
            Kind::Error => msg.reply_serial.is_some() && msg.error_name.is_some(),
        };
        if !required {
            return Err("a header field its type requires is missing");
        }
        Ok(msg)
    }

    /// The `a(yv)` header fields: the known ones by the type the specification gives them
    /// (each at most once), unknown ones skipped by their own signature.
    fn read_fields(&mut self, mut fields: Cursor<'a>) -> Result<(), &'static str> {
        const MALFORMED: &str = "malformed header fields";
        let mut seen = 0u16;
        while !fields.at_end() {
            fields.align(8).ok_or(MALFORMED)?;
            let code = fields.byte().ok_or(MALFORMED)?;
            let signature = fields.signature().ok_or(MALFORMED)?;
            if (1..=9).contains(&code) {
                if seen & (1 << code) != 0 {
                    return Err("a header field twice");
                }
                seen |= 1 << code;
            }
            let expected = match code {
                0 => return Err("header field 0"),
                1 => "o",
                2 | 3 | 4 | 6 | 7 => "s",
                5 | 9 => "u",
                8 => "g",
                _ => {
                    fields.variant_value(signature).ok_or(MALFORMED)?;
                    continue;
                }
            };
            if signature != expected {
                return Err("a header field of the wrong type");
            }
            match code {
                1 => self.path = Some(fields.object_path().ok_or(MALFORMED)?),
                2 => self.interface = Some(fields.string().ok_or(MALFORMED)?),
                3 => self.member = Some(fields.string().ok_or(MALFORMED)?),
                4 => self.error_name = Some(fields.string().ok_or(MALFORMED)?),
                // A serial is never 0, so neither is the serial a reply answers.
                5 => self.reply_serial = Some(fields.u32().filter(|s| *s != 0).ok_or(MALFORMED)?),
                7 => self.sender = Some(fields.string().ok_or(MALFORMED)?),
                8 => self.signature = fields.signature().filter(|s| signature_ok(s)).ok_or(MALFORMED)?,
                // DESTINATION, UNIX_FDS: checked, not needed.
                9 => _ = fields.u32().ok_or(MALFORMED)?,
                _ => _ = fields.string().ok_or(MALFORMED)?,
            }
        }
        Ok(())
    }

    /// A cursor at the start of the body (whose layout `signature` describes).
    pub(crate) fn body(&self) -> Cursor<'a> {
        Cursor { bytes: self.bytes, pos: self.body_start, end: self.bytes.len(), big_endian: self.big_endian }
    }

    /// The whole message, as read.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

fn read_u32(big_endian: bool, b: [u8; 4]) -> u32 {
    if big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

/// Reads values in order from `pos` up to `end`. Offsets count from the message's start,
/// which is what alignment is relative to.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
    big_endian: bool,
}

impl<'a> Cursor<'a> {
    /// Whether everything up to the end was read.
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.end.min(self.bytes.len()))?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Some(taken)
    }

    /// Skips the padding to the next multiple of `n`; padding bytes must be zero.
    pub(crate) fn align(&mut self, n: usize) -> Option<()> {
        let pad = self.pos.next_multiple_of(n) - self.pos;
        self.take(pad)?.iter().all(|b| *b == 0).then_some(())
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.align(4)?;
        let b = self.take(4)?;
        Some(read_u32(self.big_endian, [b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&mut self) -> Option<i32> {
        self.u32().map(|u| u as i32)
    }

    /// `s`: a length, UTF-8 without NUL, a NUL.
    pub(crate) fn string(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.text(len)
    }

    /// `g`: a one-byte length, the type codes, a NUL (checked by the caller where it matters).
    pub(crate) fn signature(&mut self) -> Option<&'a str> {
        let len = usize::from(self.byte()?);
        self.text(len)
    }

    /// `o`: a string that is a valid object path.
    pub(crate) fn object_path(&mut self) -> Option<&'a str> {
        self.string().filter(|p| object_path_ok(p))
    }

    fn text(&mut self, len: usize) -> Option<&'a str> {
        let bytes = self.take(len.checked_add(1)?)?;
        let (nul, text) = bytes.split_last()?;
        if *nul != 0 || text.contains(&0) {
            return None;
        }
        std::str::from_utf8(text).ok()
    }

    /// An array's elements as a cursor of their own (the array's length read, the padding to
    /// its elements' `alignment` skipped); this cursor moves past the array.
    pub(crate) fn array(&mut self, alignment: usize) -> Option<Cursor<'a>> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.align(alignment)?;
        let start = self.pos;
        self.take(len)?;
        Some(Cursor { bytes: self.bytes, pos: start, end: self.pos, big_endian: self.big_endian })
    }

    /// Skips a variant's value of `signature` (exactly one complete type), building nothing.
    pub(crate) fn variant_value(&mut self, signature: &str) -> Option<()> {
        let sig = signature.as_bytes();
        if complete_type_len(sig, 0)? != sig.len() {
            return None;
        }
        self.skip(sig, 0)?.is_empty().then_some(())
    }

    /// Skips one value of the first complete type in `sig` (already validated, but every
    /// step is checked anyway); returns the rest of `sig`.
    fn skip<'s>(&mut self, sig: &'s [u8], depth: u32) -> Option<&'s [u8]> {
        if depth > MAX_DEPTH {
            return None;
        }
        let (&code, rest) = sig.split_first()?;
        match code {
            b'y' => _ = self.take(1)?,
            b'b' => _ = self.u32().filter(|b| *b <= 1)?,
            b'n' | b'q' => {
                self.align(2)?;
                self.take(2)?;
            }
            b'i' | b'u' | b'h' => _ = self.u32()?,
            b'x' | b't' | b'd' => {
                self.align(8)?;
                self.take(8)?;
            }
            b's' => _ = self.string()?,
            b'o' => _ = self.object_path()?,
            b'g' => _ = self.signature().filter(|s| signature_ok(s))?,
            b'v' => {
                let inner = self.signature()?.as_bytes();
                if complete_type_len(inner, depth + 1)? != inner.len()
                    || !self.skip(inner, depth + 1)?.is_empty()
                {
                    return None;
                }
            }
            b'a' => {
                // From the array's own type: a dict entry is a complete type only in one.
                let element = &rest[..complete_type_len(sig, depth)? - 1];
                let mut elements = self.array(alignment(*element.first()?))?;
                while !elements.at_end() {
                    let before = elements.pos;
                    elements.skip(element, depth + 1)?;
                    // Every valid element type takes at least a byte; never loop in place.
                    (elements.pos > before).then_some(())?;
                }
                return Some(&rest[element.len()..]);
            }
            b'(' | b'{' => {
                self.align(8)?;
                let close = if code == b'(' { b')' } else { b'}' };
                let mut fields = rest;
                while *fields.first()? != close {
                    fields = self.skip(fields, depth + 1)?;
                }
                return Some(&fields[1..]);
            }
            _ => return None,
        }
        Some(rest)
    }
}

/// Where values of a type start: the specification's alignment per type code.
fn alignment(code: u8) -> usize {
    match code {
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' | b'a' => 4,
        b'x' | b't' | b'd' | b'(' | b'{' => 8,
        _ => 1,
    }
}

/// The length of the first complete type in `sig`, `None` if it is not one: unknown codes,
/// unbalanced or empty structs, a dict entry outside an array or with a key that is not a
/// basic type, nesting deeper than `MAX_DEPTH`.
fn complete_type_len(sig: &[u8], depth: u32) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    match *sig.first()? {
        b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b'h' | b's' | b'o' | b'g' | b'v' => {
            Some(1)
        }
        b'a' if sig.get(1) == Some(&b'{') => {
            let key = *sig.get(2)?;
            if !b"ybnqiuxtdhsog".contains(&key) {
                return None;
            }
            let value = complete_type_len(&sig[3..], depth + 2)?;
            (sig.get(3 + value) == Some(&b'}')).then_some(4 + value)
        }
        b'a' => Some(1 + complete_type_len(&sig[1..], depth + 1)?),
        b'(' => {
            let mut at = 1;
            while *sig.get(at)? != b')' {
                at += complete_type_len(&sig[at..], depth + 1)?;
            }
            (at > 1).then_some(at + 1)
        }
        _ => None,
    }
}

/// A message's body signature: complete types one after another (an empty one included).
fn signature_ok(sig: &str) -> bool {
    let mut rest = sig.as_bytes();
    while !rest.is_empty() {
        match complete_type_len(rest, 0) {
            Some(len) => rest = &rest[len..],
            None => return false,
        }
    }
    true
}

/// A unique connection name (the specification's "Bus Names"): `:`, then at least two
/// `.`-separated non-empty elements of `[A-Za-z0-9_-]`, 255 bytes at most.
pub(crate) fn unique_name_ok(name: &str) -> bool {
    let Some(elements) = name.strip_prefix(':') else { return false };
    name.len() <= 255
        && elements.split('.').count() >= 2
        && elements
            .split('.')
            .all(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
}

/// `/`, or `/`-separated non-empty elements of `[A-Za-z0-9_]`. One pass over the bytes:
/// `split('/')` cost a third of a header's reading.
fn object_path_ok(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut after_slash = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'/' if i > 0 && after_slash => return false,
            b'/' => after_slash = true,
            _ if i == 0 => return false,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => after_slash = false,
            _ => return false,
        }
    }
    path == "/" || (!bytes.is_empty() && !after_slash)
}

#[path = "wire_call.rs"]
mod call;
pub(crate) use call::{Arg, Call};

#[cfg(test)]
#[path = "wire_diff_tests.rs"]
mod diff_tests;
#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
