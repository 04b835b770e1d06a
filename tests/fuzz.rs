//! Property-based fuzzing on stable Rust (proptest) of what reads untrusted input through the
//! public API: the rules parser (`config::parse_all`) and the bus-message decoding that is
//! reachable without a live bus (`decode_link_path`, `OperState::parse`, `AdminState::parse`,
//! `escape`; the message classifier itself is crate-private and is tested in its module).
//!
//! Properties: nothing panics; every error carries a position inside its file; every rule
//! that comes out satisfies the invariants the rest of fanlink relies on. CI runs proptest's
//! default number of cases; `FANLINK_FUZZ_CASES=1000000` runs that many per property, and each
//! property prints how many inputs it ran and how long it took.

use fanlink::config::{in_effect, parse_all, Rule, RuleError};
use fanlink::networkd::{decode_link_path, escape, link_path, AdminState, OperState, LINK_PATH_NAMESPACE};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::PathBuf;
use std::time::Instant;

/// Runs `test` on inputs from `strategy`, as many as FANLINK_FUZZ_CASES says (default 256),
/// and reports the count and the time.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("FANLINK_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let ran = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&strategy, |value| {
        ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        test(value)
    });
    eprintln!("[fuzz] {name}: {} inputs in {:.1?}", ran.into_inner(), started.elapsed());
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Values a key may get: mostly plausible, sometimes of the wrong type or malformed.
fn value() -> impl Strategy<Value = String> {
    let octet = || 0u32..=255;
    prop_oneof![
        4 => (octet(), octet(), octet(), octet(), 0u32..=33)
            .prop_map(|(a, b, c, d, p)| format!("\"{a}.{b}.{c}.{d}/{p}\"")),
        3 => (prop::sample::select(vec![240u32, 250, 251, 252, 100, 10, 0, 127, 224]), prop::sample::select(vec![8u32, 10, 16, 24]))
            .prop_map(|(a, p)| format!("\"{a}.0.0.0/{p}\"")),
        2 => prop::sample::select(vec!["\"10.99.0.0/16\"", "\"10.0.0.0/16\"", "\"192.168.1.0/24\"", "\"10.224.220.0/24\""])
            .prop_map(str::to_owned),
        2 => "[a-z0-9.-]{0,20}".prop_map(|s| format!("\"{s}\"")),
        1 => any::<i64>().prop_map(|i| i.to_string()),
        1 => (0i64..=10_000).prop_map(|i| i.to_string()),
        2 => any::<bool>().prop_map(|b| b.to_string()),
        1 => prop::sample::select(vec!["\"1h\"", "\"90s\"", "\"infinite\"", "\"7d\"", "\"0\"", "\"1y\""])
            .prop_map(str::to_owned),
        1 => Just("[1, \"x\"]".to_owned()),
        1 => Just("{ a = 1 }".to_owned()),
        1 => Just("1979-05-27".to_owned()),
        1 => Just("3.5".to_owned()),
        1 => "\\PC{0,12}".prop_map(|s| format!("{s:?}")),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["name", "overlay", "underlay", "interface", "mtu", "masquerade"])
            .prop_map(str::to_owned),
        2 => prop::sample::select(vec!["enable", "dhcp", "dhcp-lease"]).prop_map(str::to_owned),
        1 => "[a-z_-]{1,10}",
        1 => Just("\"quoted key\"".to_owned()),
    ]
}

/// A rule file: `[[fan]]` tables of key = value lines, other headers, and noise.
fn structured_file() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        8 => (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => Just("[[fan]]".to_owned()),
        1 => prop::sample::select(vec!["[fan]", "[other]", "[[other]]", "# comment", "", "fan = 1", "[["])
            .prop_map(str::to_owned),
        1 => "\\PC{0,30}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|lines| format!("[[fan]]\n{}", lines.join("\n")))
}

/// Structured files, then a few bytes changed: cut, duplicated, or a character inserted.
fn mutated_file() -> impl Strategy<Value = String> {
    (structured_file(), prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 0..4))
        .prop_map(|(text, edits)| {
            let mut chars: Vec<char> = text.chars().collect();
            for (at, kind, c) in edits {
                if chars.is_empty() {
                    break;
                }
                let i = at.index(chars.len());
                match kind {
                    0 => drop(chars.remove(i)),
                    1 => chars.insert(i, chars[i]),
                    _ => chars.insert(i, c),
                }
            }
            chars.into_iter().collect()
        })
}

fn sources() -> impl Strategy<Value = Vec<(PathBuf, String)>> {
    let file = prop_oneof![4 => structured_file(), 3 => mutated_file(), 1 => "\\PC{0,200}", 1 => ".{0,100}"];
    prop::collection::vec(file, 1..4).prop_map(|files| {
        files
            .into_iter()
            .enumerate()
            .map(|(i, text)| (PathBuf::from(format!("/r/{i}0-f.toml")), text))
            .collect()
    })
}

fn check_error(e: &RuleError, sources: &[(PathBuf, String)]) -> Result<(), TestCaseError> {
    let text =
        &sources.iter().find(|(p, _)| *p == e.path).ok_or_else(|| TestCaseError::fail("unknown path"))?.1;
    // Only an empty file is an error of the file as a whole.
    let Some((line, col)) = e.position else {
        prop_assert!(text.is_empty(), "no position: {e}");
        return Ok(());
    };
    let lines = text.split('\n').count();
    prop_assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
    let width = text.split('\n').nth(line - 1).map_or(0, |l| l.chars().count());
    prop_assert!(col >= 1 && col <= width + 1, "col {col} of {width}: {e}");
    prop_assert!(!e.message.is_empty());
    let prefix = format!("{}:{line}:{col}: error: ", e.path.display());
    prop_assert!(e.to_string().starts_with(&prefix), "{e}");
    Ok(())
}

fn check_rule(rule: &Rule, sources: &[(PathBuf, String)]) -> Result<(), TestCaseError> {
    let (overlay, underlay) = (rule.map.overlay(), rule.map.underlay());
    prop_assert!(rule.name.as_str().len() <= 15 && !rule.name.as_str().is_empty());
    prop_assert!(rule.vxlan_name().as_str().len() <= 15);
    prop_assert_ne!(rule.vxlan_name(), rule.name.clone());
    prop_assert_eq!(overlay.network(), overlay.addr(), "overlay aligned");
    prop_assert_eq!(underlay.network(), underlay.addr(), "underlay aligned");
    prop_assert!(rule.map.slice_prefix_len() <= 30);
    let first = overlay.network().octets()[0];
    prop_assert!(first != 0 && first != 127 && !(224..240).contains(&first), "overlay {overlay}");
    prop_assert!(!overlay.contains(&underlay.network()) && !underlay.contains(&overlay.network()));
    prop_assert_eq!(rule.map.vni(), u32::from(overlay.network()) >> 8);
    if let Some(mtu) = rule.mtu {
        prop_assert!((576..=9000).contains(&mtu));
    }
    prop_assert!(
        sources.iter().any(|(p, _)| rule.origin.starts_with(&p.display().to_string())),
        "{}",
        rule.origin
    );
    Ok(())
}

#[test]
fn the_rules_parser_never_panics_locates_errors_and_keeps_invariants() {
    fuzz("config::parse_all", sources(), |sources| {
        let (rules, errors) = parse_all(&sources);
        for e in &errors {
            check_error(e, &sources)?;
        }
        for rule in &rules {
            check_rule(rule, &sources)?;
        }
        // Enabled fans can all live together; a disabled one is checked when it is enabled.
        let enabled: Vec<&Rule> = rules.iter().filter(|r| r.enabled).collect();
        for (i, a) in enabled.iter().enumerate() {
            for b in &enabled[i + 1..] {
                prop_assert_ne!(&a.name, &b.name);
                prop_assert_ne!(a.vxlan_name(), b.vxlan_name());
                prop_assert_ne!(a.vxlan_name(), b.name.clone());
                let (x, y) = (a.map.overlay(), b.map.overlay());
                prop_assert!(!x.contains(&y.network()) && !y.contains(&x.network()), "{x} and {y} overlap");
                prop_assert_ne!(a.map.vni(), b.map.vni(), "{} and {} share a VNI", x, y);
            }
        }
        // What takes effect is one rule per name, every enabled one among them.
        let effect = in_effect(rules.clone());
        let names: std::collections::BTreeSet<_> = effect.iter().map(|r| r.name.clone()).collect();
        prop_assert_eq!(names.len(), effect.len(), "one rule per name");
        prop_assert_eq!(effect.iter().filter(|r| r.enabled).count(), enabled.len());
        for rule in rules.iter().filter(|r| r.dhcp_lease.is_some()) {
            prop_assert!(rule.dhcp, "a lease only beside dhcp = true");
        }
        prop_assert_eq!(parse_all(&sources), (rules, errors), "deterministic");
        Ok(())
    });
}

/// Object paths: arbitrary ones, and ones that look almost like a link's.
fn paths() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "\\PC{0,40}",
        3 => "[0-9_/a-z]{0,14}".prop_map(|s| format!("{LINK_PATH_NAMESPACE}/_3{s}")),
        2 => "[0-9]{0,12}".prop_map(|s| format!("{LINK_PATH_NAMESPACE}/_3{s}")),
        1 => any::<u32>().prop_map(link_path),
        1 => (any::<u32>(), "[/_a-z0-9]{1,4}").prop_map(|(i, s)| format!("{}{s}", link_path(i))),
    ]
}

#[test]
fn link_paths_decode_only_in_their_canonical_form() {
    fuzz("networkd::decode_link_path", paths(), |path| {
        match decode_link_path(&path) {
            Some(index) => {
                prop_assert!(index >= 1 && index <= i32::MAX as u32);
                prop_assert_eq!(link_path(index), path, "only the canonical form decodes");
            }
            None => {
                if let Some(index) = path
                    .strip_prefix(&format!("{LINK_PATH_NAMESPACE}/_3"))
                    .and_then(|s| s.parse::<u32>().ok())
                {
                    prop_assert!(
                        index == 0 || index > i32::MAX as u32 || link_path(index) != path,
                        "{path} refused"
                    );
                }
            }
        }
        Ok(())
    });
}

#[test]
fn bus_state_strings_parse_to_closed_enums_and_escape_safely() {
    let strings = prop_oneof![
        1 => prop::sample::select(vec!["routable", "off", "no-carrier", "carrier", "degraded", "linger", "configured", "pending"])
            .prop_map(str::to_owned),
        3 => "\\PC{0,80}",
        1 => ".{0,200}",
        1 => "[\\x00-\\x1f\\x7f]{0,10}",
    ];
    fuzz("networkd::{OperState,AdminState}::parse + escape", strings, |s| {
        let oper = OperState::parse(&s);
        match oper {
            OperState::Unknown => prop_assert!(!oper.is_routable()),
            known => prop_assert_eq!(known.as_str(), s.as_str()),
        }
        prop_assert_eq!(oper.is_routable(), s == "routable");
        match AdminState::parse(&s) {
            AdminState::Unknown => {}
            known => prop_assert_eq!(known.as_str(), s.as_str()),
        }
        let shown = escape(&s);
        prop_assert!(shown.is_ascii() && !shown.chars().any(|c| c.is_control()), "{shown:?}");
        prop_assert!(shown.len() <= 64 * 10 + 3, "bounded: {}", shown.len());
        Ok(())
    });
}
