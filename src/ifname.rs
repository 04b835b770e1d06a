//! Interface names, validated once ("parse, don't validate").

use std::fmt;
use std::str::FromStr;

/// The kernel's IFNAMSIZ is 16 bytes including the terminating NUL.
pub const IFNAME_MAX: usize = 15;

/// A name the kernel accepts for a network interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = String;

    /// Mirrors the kernel's `dev_valid_name()`: 1..=15 bytes, not "." or "..",
    /// no '/', ':' or whitespace.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an interface name cannot be empty".into());
        }
        if s.len() > IFNAME_MAX {
            return Err(format!(
                "\"{s}\" is {} bytes long; interface names have at most {IFNAME_MAX}",
                s.len()
            ));
        }
        if s == "." || s == ".." {
            return Err(format!("\"{s}\" is not a valid interface name"));
        }
        if let Some(c) = s.chars().find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "\"{}\" contains {:?}, which interface names cannot contain",
                s.escape_default(),
                c
            ));
        }
        Ok(IfName(s.to_string()))
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for IfName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["fan-250", "lxdfan0", "a", "fan-250-vx12345"] {
            assert!(ok.parse::<IfName>().is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "fan-250-vxlan123"] {
            assert!(bad.parse::<IfName>().is_err(), "{bad}");
        }
    }
}
