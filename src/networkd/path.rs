//! Link object paths and log-safe rendering of bus strings.
//!
//! networkd names each link `/org/freedesktop/network1/link/_3<ifindex>`: sd-bus escapes
//! only a *leading* digit of an object-path label, as `_` plus its hex code (`'2'` is 0x32),
//! so ifindex 2 is `_32` and ifindex 12 is `_312`. Decoding is strict: anything that is not
//! exactly this form (a second escape, a leading zero, a trailing label, an ifindex the
//! kernel cannot have) is not a link, whoever sent it.

/// The namespace every link object lives under, also the match rule's `path_namespace`.
pub const LINK_PATH_NAMESPACE: &str = "/org/freedesktop/network1/link";

/// The largest ifindex the kernel hands out (it is a C `int`).
const IFINDEX_MAX: u32 = i32::MAX as u32;

/// The object path of the link with `index`, built from the number alone (never from bus data).
pub fn link_path(index: u32) -> String {
    format!("{LINK_PATH_NAMESPACE}/_3{index}")
}

/// The ifindex a link object path names, or `None` for any other path.
pub fn decode_link_path(path: &str) -> Option<u32> {
    let label = path.strip_prefix(LINK_PATH_NAMESPACE)?.strip_prefix("/_3")?;
    // The escape stands for the first digit; the rest are plain digits. No sign, no
    // leading zero (ifindex 0 does not exist), nothing after.
    let bytes = label.as_bytes();
    if bytes.is_empty() || bytes.len() > 10 || bytes[0] == b'0' || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    label.parse::<u32>().ok().filter(|i| *i <= IFINDEX_MAX)
}

/// Bus strings in logs are untrusted: escape control and non-ASCII characters and cap the
/// length, so a forged value can neither forge log lines nor flood them.
pub fn escape(s: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_default).collect();
    if s.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_networkd_paths() {
        for (path, index) in [
            ("/org/freedesktop/network1/link/_31", 1),
            ("/org/freedesktop/network1/link/_32", 2),
            ("/org/freedesktop/network1/link/_39", 9),
            ("/org/freedesktop/network1/link/_312", 12),
            ("/org/freedesktop/network1/link/_3100", 100),
            ("/org/freedesktop/network1/link/_32147483647", 2_147_483_647),
        ] {
            assert_eq!(decode_link_path(path), Some(index), "{path}");
            assert_eq!(link_path(index), path);
        }
    }

    #[test]
    fn rejects_everything_else() {
        for path in [
            "",
            "/",
            "/org/freedesktop/network1/link",
            "/org/freedesktop/network1/link/",
            "/org/freedesktop/network1/link/_3",
            "/org/freedesktop/network1/link/_30",
            "/org/freedesktop/network1/link/_302",
            "/org/freedesktop/network1/link/2",
            "/org/freedesktop/network1/link/_32/x",
            "/org/freedesktop/network1/link/_32_",
            "/org/freedesktop/network1/link/_31_32",
            "/org/freedesktop/network1/link/_3-2",
            "/org/freedesktop/network1/link/_3+2",
            "/org/freedesktop/network1/link/_3 2",
            "/org/freedesktop/network1/link/_32147483648",
            "/org/freedesktop/network1/link/_399999999999",
            "/org/freedesktop/network1/link/_3\u{0662}",
            "/org/freedesktop/network1/linkx/_32",
            "/org/freedesktop/network1/link_32",
            "/org/freedesktop/network1/network/_32",
            "/org/freedesktop/network1/link/../link/_32",
            "//org/freedesktop/network1/link/_32",
        ] {
            assert_eq!(decode_link_path(path), None, "{path:?}");
        }
    }

    #[test]
    fn escapes_for_logs() {
        assert_eq!(escape("routable"), "routable");
        assert_eq!(escape("a\nb\u{1b}[0m"), "a\\nb\\u{1b}[0m");
        assert_eq!(escape("é"), "\\u{e9}");
        let long = "x".repeat(100);
        assert_eq!(escape(&long), format!("{}...", "x".repeat(64)));
    }
}
