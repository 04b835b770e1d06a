//! The method calls fanlink writes: a fixed header, the header fields a call needs (PATH,
//! INTERFACE, MEMBER, DESTINATION, SIGNATURE) and a body of strings and integers,
//! little-endian; a NUL or a bad path is an error before anything is sent.

use super::*;

/// An argument of a method call fanlink makes: its calls take strings, an int32 and (for
/// RequestName's flags) a uint32.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Str(&'a str),
    I32(i32),
    U32(u32),
}

/// A method call, written little-endian with serial 0; the connection stamps the serial as
/// it sends it ([`Call::stamped`]).
#[derive(Debug, Clone)]
pub struct Call {
    bytes: Vec<u8>,
}

impl Call {
    /// The call of `member` on `destination`. An argument or name the bus would refuse
    /// (a NUL in a string, a malformed path) is an error here: dbus-daemon answers an
    /// invalid message by hanging up.
    pub(crate) fn new(
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        args: &[Arg<'_>],
    ) -> Result<Call, &'static str> {
        if !object_path_ok(path) {
            return Err("not an object path");
        }
        let strings = args.iter().filter_map(|a| match a {
            Arg::Str(s) => Some(*s),
            Arg::I32(_) | Arg::U32(_) => None,
        });
        if [destination, interface, member].into_iter().chain(strings).any(|s| s.contains('\0')) {
            return Err("a string with a NUL");
        }
        let signature: String = args
            .iter()
            .map(|a| match a {
                Arg::Str(_) => 's',
                Arg::I32(_) => 'i',
                Arg::U32(_) => 'u',
            })
            .collect();
        let mut w = Writer { bytes: Vec::with_capacity(160) };
        // Endianness, type, flags, version; then body length, serial and fields length.
        w.bytes.extend_from_slice(&[b'l', 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for (code, value) in [(1, path), (2, interface), (3, member), (6, destination)] {
            w.align(8);
            w.bytes.push(code);
            w.signature(if code == 1 { "o" } else { "s" });
            w.string(value);
        }
        if !signature.is_empty() {
            w.align(8);
            w.bytes.push(8);
            w.signature("g");
            w.signature(&signature);
        }
        let fields = w.bytes.len() - FIXED_HEADER;
        w.align(8);
        let body_start = w.bytes.len();
        for arg in args {
            match *arg {
                Arg::Str(s) => w.string(s),
                Arg::I32(i) => w.u32(i as u32),
                Arg::U32(u) => w.u32(u),
            }
        }
        let body = w.bytes.len() - body_start;
        w.bytes[4..8].copy_from_slice(&(body as u32).to_le_bytes());
        w.bytes[12..16].copy_from_slice(&(fields as u32).to_le_bytes());
        Ok(Call { bytes: w.bytes })
    }

    /// The bytes to send as the call numbered `serial` (which must not be 0), written into
    /// `out`.
    pub(crate) fn stamped(&self, serial: u32, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.bytes);
        out[8..12].copy_from_slice(&serial.to_le_bytes());
    }
}

/// Appends values little-endian; alignment is relative to the message's start, which is the
/// buffer's.
struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    fn align(&mut self, n: usize) {
        self.bytes.resize(self.bytes.len().next_multiple_of(n), 0);
    }

    fn u32(&mut self, value: u32) {
        self.align(4);
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
    }

    /// A signature: fanlink's are a few type codes, far below the 255 a length byte allows.
    fn signature(&mut self, s: &str) {
        self.bytes.push(s.len() as u8);
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
    }
}
