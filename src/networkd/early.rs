//! What the connection reads before anyone listens (`Stage::Early` in mod.rs): kept until
//! the owner of `org.freedesktop.network1` is seeded, then replayed in order. Bounded: a
//! flood at start-up must not grow memory (it once kept every message up to 1 MiB).

/// The most bytes kept before the owner is known: the few messages that can come between
/// Hello and the GetNameOwner reply are a few hundred bytes; a flood must not grow memory.
pub(super) const EARLY_KEPT: usize = 64 << 10;

/// The messages read before anyone listens, up to `EARLY_KEPT` bytes.
#[derive(Default)]
pub(super) struct Early {
    pub(super) kept: Vec<Vec<u8>>,
    bytes: usize,
    /// Something was not kept: then nothing is, and the listener hears `Lost`. Replaying
    /// the messages before a gap could end at an owner older than the seed.
    pub(super) lost: bool,
}

impl Early {
    pub(super) fn keep(&mut self, bytes: &[u8]) {
        if self.lost || self.bytes + bytes.len() > EARLY_KEPT {
            self.lost();
            return;
        }
        self.bytes += bytes.len();
        self.kept.push(bytes.to_vec());
    }

    pub(super) fn lost(&mut self) {
        self.lost = true;
        self.kept = Vec::new();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_before_the_owner_is_known_is_bounded() {
        let mut early = Early::default();
        let message = vec![0u8; 1000];
        for _ in 0..10_000 {
            early.keep(&message);
            assert!(early.bytes <= EARLY_KEPT, "{} bytes kept", early.bytes);
        }
        // What came before the gap is not replayed either: it could end at an old owner.
        assert!(early.lost);
        assert!(early.kept.is_empty());
        let mut few = Early::default();
        few.keep(&message);
        few.keep(&message);
        assert_eq!((few.kept.len(), few.lost), (2, false));
        few.lost();
        assert!(few.kept.is_empty() && few.lost, "a giant dropped unread is a loss");
    }
}
