//! The bytes read from the bus socket, cut into whole D-Bus messages (the fixed header's
//! lengths), with the bounds on what is kept: a message over fanlink's 1 MiB is dropped as it
//! comes, a header that claims more than the specification's 128 MiB ends the connection.

use super::bus::{MAX_MESSAGE, READ_CHUNK, SPEC_MAX_MESSAGE};
use super::wire::{message_length, FIXED_HEADER};

/// The bytes read from the socket, cut into whole messages in order. The buffer is reused
/// (a signal costs no allocation) and grows only for a message larger than it; it returns
/// to its first size once such a message is handed on.
#[derive(Default)]
pub(super) struct Frames {
    pub(super) buf: Vec<u8>,
    /// The unread part is `buf[start..end]`.
    pub(super) start: usize,
    pub(super) end: usize,
    /// Bytes of a message too large to keep, still to be dropped as they come.
    pub(super) skip: usize,
    /// The whole length of the message at `start`, while it is not all read yet.
    pub(super) wanted: usize,
    /// A message over `MAX_MESSAGE` began to be dropped since `take_oversized` last looked.
    pub(super) oversized: bool,
}

impl Frames {
    /// Room for the next read: at least `READ_CHUNK`, and all the message at `start` still
    /// needs.
    pub(super) fn room(&mut self) -> &mut [u8] {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if self.buf.len() > 4 * READ_CHUNK {
                self.buf = Vec::new();
            }
        }
        let need = READ_CHUNK.max(self.wanted.saturating_sub(self.end - self.start));
        if self.buf.len() - self.end < need {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.buf.len() - self.end < need {
                self.buf.resize(self.end + need, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into `room`.
    pub(super) fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Appends `bytes` as if read.
    pub(super) fn extend(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.room();
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.filled(n);
            bytes = &bytes[n..];
        }
    }

    /// Whether a message over `MAX_MESSAGE` began to be dropped since the last look.
    pub(super) fn take_oversized(&mut self) -> bool {
        std::mem::take(&mut self.oversized)
    }

    /// The next whole message; `None` until it is all read. A message over `MAX_MESSAGE` is
    /// dropped as it comes, unkept; an `Err` is a stream that lost its framing (a header of
    /// garbage, or one that claims more than the specification allows), and the connection
    /// with it.
    pub(super) fn next(&mut self) -> std::io::Result<Option<&[u8]>> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.end - self.start);
                self.start += n;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let unread = &self.buf[self.start..self.end];
            let Some(fixed) = unread.first_chunk::<FIXED_HEADER>() else { return Ok(None) };
            let Some(total) = message_length(fixed) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a D-Bus message header",
                ));
            };
            if total > SPEC_MAX_MESSAGE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a D-Bus header that claims {total} bytes (at most {SPEC_MAX_MESSAGE})"),
                ));
            }
            if total > MAX_MESSAGE {
                log::debug!("dropped a D-Bus message of {total} bytes (more than {MAX_MESSAGE})");
                self.skip = total;
                self.oversized = true;
                continue;
            }
            if unread.len() < total {
                self.wanted = total;
                return Ok(None);
            }
            self.wanted = 0;
            let at = self.start;
            self.start += total;
            return Ok(Some(&self.buf[at..at + total]));
        }
    }
}
