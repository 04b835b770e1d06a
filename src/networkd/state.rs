//! networkd's link states as closed enums.
//!
//! Each enum lists the values systemd v249-v255 document, plus `Unknown`. Parsing never
//! fails: a value a newer networkd (or a forger) invents becomes `Unknown`, which no caller
//! may take for routable, and the raw string goes no further than one escaped log line.

use std::fmt;
use std::sync::Mutex;

use super::path::escape;

macro_rules! closed_enum {
    ($(#[$meta:meta])* $name:ident, $property:literal, { $($variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
            /// A value this build does not know; never treated as routable.
            Unknown,
        }

        impl $name {
            /// The networkd property this state comes from.
            pub const PROPERTY: &'static str = $property;

            /// Maps a bus string onto the enum; unknown values are logged once and become
            /// `Unknown`.
            pub fn parse(s: &str) -> Self {
                match s {
                    $($text => Self::$variant,)+
                    _ => {
                        note_unknown($property, s);
                        Self::Unknown
                    }
                }
            }

            /// networkd's spelling (`"unknown"` for `Unknown`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Unknown => "unknown",
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_enum!(
    /// `OperationalState` of a link (networkctl's OPERATIONAL column).
    OperState, "OperationalState", {
        Missing = "missing",
        Off = "off",
        NoCarrier = "no-carrier",
        Dormant = "dormant",
        DegradedCarrier = "degraded-carrier",
        Carrier = "carrier",
        Degraded = "degraded",
        Enslaved = "enslaved",
        Routable = "routable",
    }
);

closed_enum!(
    /// `AdministrativeState` of a link (networkctl's SETUP column; v249 calls it SetupState
    /// in `DescribeLink`, the property name is the same in all versions).
    AdminState, "AdministrativeState", {
        Pending = "pending",
        Initialized = "initialized",
        Configuring = "configuring",
        Configured = "configured",
        Unmanaged = "unmanaged",
        Failed = "failed",
        Linger = "linger",
    }
);

impl OperState {
    /// Only `routable` carries a Fan: `degraded` means no routable address, and `Unknown`
    /// is never trusted.
    pub fn is_routable(self) -> bool {
        self == OperState::Routable
    }
}

impl AdminState {
    /// `linger` is all networkd says when a link disappears.
    pub fn is_gone(self) -> bool {
        self == AdminState::Linger
    }
}

/// How many distinct unknown values are remembered (and logged); a flood of new values
/// costs neither memory nor log lines beyond this.
const UNKNOWN_REMEMBERED: usize = 16;

static UNKNOWN_SEEN: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

/// Logs an unknown value the first time it is seen, escaped.
fn note_unknown(property: &'static str, value: &str) {
    let value = escape(value);
    let mut seen = UNKNOWN_SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if seen.len() >= UNKNOWN_REMEMBERED || seen.iter().any(|(p, v)| *p == property && *v == value) {
        return;
    }
    log::warn!(
        "networkd reports {property}=\"{value}\", which fanlink does not know; treating it as not routable"
    );
    seen.push((property, value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_oper_state() {
        let all = [
            ("missing", OperState::Missing),
            ("off", OperState::Off),
            ("no-carrier", OperState::NoCarrier),
            ("dormant", OperState::Dormant),
            ("degraded-carrier", OperState::DegradedCarrier),
            ("carrier", OperState::Carrier),
            ("degraded", OperState::Degraded),
            ("enslaved", OperState::Enslaved),
            ("routable", OperState::Routable),
        ];
        for (text, state) in all {
            assert_eq!(OperState::parse(text), state);
            assert_eq!(state.as_str(), text);
            assert_eq!(state.is_routable(), text == "routable");
        }
    }

    #[test]
    fn parses_every_documented_admin_state() {
        let all = [
            ("pending", AdminState::Pending),
            ("initialized", AdminState::Initialized),
            ("configuring", AdminState::Configuring),
            ("configured", AdminState::Configured),
            ("unmanaged", AdminState::Unmanaged),
            ("failed", AdminState::Failed),
            ("linger", AdminState::Linger),
        ];
        for (text, state) in all {
            assert_eq!(AdminState::parse(text), state);
            assert_eq!(state.to_string(), text);
        }
    }

    #[test]
    fn anything_else_is_unknown_and_not_routable() {
        for text in ["", "Routable", "routable ", "../../x", "routable\0", "unknown", "\u{1b}[2J"] {
            assert_eq!(OperState::parse(text), OperState::Unknown, "{text:?}");
            assert_eq!(AdminState::parse(text), AdminState::Unknown, "{text:?}");
        }
        assert!(!OperState::Unknown.is_routable());
    }

    #[test]
    fn unknown_values_are_remembered_boundedly() {
        for i in 0..100 {
            OperState::parse(&format!("new-state-{i}"));
        }
        assert!(UNKNOWN_SEEN.lock().unwrap().len() <= UNKNOWN_REMEMBERED);
    }
}
