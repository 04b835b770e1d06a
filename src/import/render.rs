//! Writes imported fans as a rule file in the README's format: a header naming the source,
//! then per fan the source line as a comment, notes on what the translation did, and a
//! `[[fan]]` table; a disabled fan's says `enable = false`, so that it is kept but does not
//! come up.

use super::{Fan, Syntax};

/// The file text, and for each fan (by index) its first and last 1-based line.
pub fn file(origin: &str, syntax: Syntax, fans: &[Fan]) -> (String, Vec<(usize, usize, usize)>) {
    let mut lines = vec![
        format!("# fanlink rules imported from {} by `fanlink import`.", comment(origin)),
        "# Save as /etc/fanlink.d/NAME.toml, then run `fanlink check`.".to_string(),
    ];
    if fans.is_empty() {
        lines.push("# The source defines no fans.".into());
    }
    let mut blocks = Vec::new();
    for (i, fan) in fans.iter().enumerate() {
        lines.push(String::new());
        let from = match syntax {
            Syntax::Command => "command".to_string(),
            Syntax::FanFile | Syntax::Script | Syntax::Lxd => format!("{}:{}", comment(origin), fan.line),
        };
        lines.push(format!("# {from}: {}", comment(&fan.source)));
        lines.extend(fan.notes.iter().map(|n| format!("# {n}")));
        if !fan.enabled {
            lines.push(
                "# Disabled in the source: kept, not brought up; set `enable = true` to use it.".into(),
            );
        }
        let first = lines.len() + 1;
        lines.extend(table(fan));
        blocks.push((i, first, lines.len()));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    (text, blocks)
}

fn table(fan: &Fan) -> Vec<String> {
    let mut t = vec!["[[fan]]".to_string()];
    if let Some(name) = &fan.name {
        t.push(format!("name = {}", quoted(name.as_str())));
    }
    t.push(format!("overlay = \"{}\"", fan.map.overlay()));
    t.push(format!("underlay = \"{}\"", fan.map.underlay()));
    if let Some(interface) = &fan.interface {
        t.push(format!("interface = {}", quoted(interface.as_str())));
    }
    if let Some(mtu) = fan.mtu {
        t.push(format!("mtu = {mtu}"));
    }
    if !fan.masquerade {
        t.push("masquerade = false".into());
    }
    if fan.dhcp {
        t.push("dhcp = true".into());
    }
    if let Some(n) = fan.host_reserve {
        t.push(format!("host-reserve = {n}"));
    }
    if !fan.enabled {
        t.push("enable = false".into());
    }
    t
}

/// A TOML basic string. Interface names hold no control characters or whitespace (IfName
/// refuses them), so quotes and backslashes are all there is to escape.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Text fit for a TOML comment, which may not hold control characters other than tab.
fn comment(s: &str) -> String {
    s.chars().map(|c| if c.is_control() && c != '\t' { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fan::FanMap;

    fn fan(line: usize, enabled: bool, name: Option<&str>) -> Fan {
        Fan {
            line,
            source: "10.0.3.4/16 250.0.0.0/8".into(),
            name: name.map(|n| n.parse().unwrap()),
            map: FanMap::new("250.0.0.0/8".parse().unwrap(), "10.0.0.0/16".parse().unwrap()).unwrap(),
            interface: Some("ens\"3".parse().unwrap()),
            enabled,
            dhcp: false,
            host_reserve: None,
            mtu: None,
            masquerade: true,
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn enabled_and_disabled_fans() {
        let (text, blocks) =
            file("/etc/network/fan", Syntax::FanFile, &[fan(2, true, Some("lxdfan0")), fan(5, false, None)]);
        assert_eq!(
            text,
            "# fanlink rules imported from /etc/network/fan by `fanlink import`.\n\
             # Save as /etc/fanlink.d/NAME.toml, then run `fanlink check`.\n\
             \n\
             # /etc/network/fan:2: 10.0.3.4/16 250.0.0.0/8\n\
             # a note\n\
             [[fan]]\n\
             name = \"lxdfan0\"\n\
             overlay = \"250.0.0.0/8\"\n\
             underlay = \"10.0.0.0/16\"\n\
             interface = \"ens\\\"3\"\n\
             \n\
             # /etc/network/fan:5: 10.0.3.4/16 250.0.0.0/8\n\
             # a note\n\
             # Disabled in the source: kept, not brought up; set `enable = true` to use it.\n\
             [[fan]]\n\
             overlay = \"250.0.0.0/8\"\n\
             underlay = \"10.0.0.0/16\"\n\
             interface = \"ens\\\"3\"\n\
             enable = false\n"
        );
        assert_eq!(blocks, [(0, 6, 10), (1, 15, 19)]);
    }

    #[test]
    fn comments_hold_no_control_characters() {
        assert_eq!(comment("a\u{1b}[1mb\tc"), "a?[1mb\tc");
    }
}
