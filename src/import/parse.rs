//! Reading ubuntu-fan's syntax: one `/etc/network/fan` line, or one `fanctl up` command,
//! into a `FanLine` whose underlay may still name an interface. Pure; no host lookups.
//!
//! Both syntaxes share one token grammar, because fanctl feeds config lines to the same
//! option parser as its command line: positional UNDERLAY OVERLAY (or fanctl 0.3's
//! OVERLAY UNDERLAY), `-u`/`-o`, `--flag[=value]` options and the pre-0.9 bare words.

use crate::ifname::IfName;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// Something the importer will not translate, at a 1-based line and column of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// A word of the source line and the column where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub text: &'a str,
    pub col: usize,
}

/// How a line names its underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnderlaySpec {
    /// `10.0.0.0/16`, or `10.0.3.4/16`: this host's address with the underlay's length.
    Prefix(Ipv4Net),
    /// `ens3/16` or `ens3`: the interface's address, cut to the length if one is given.
    Interface(IfName, Option<u8>),
    /// `default` or `default/16`: the interface with the default route.
    Default(Option<u8>),
}

/// One fan as ubuntu-fan describes it, with the columns of its parts for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanLine {
    pub underlay: UnderlaySpec,
    pub underlay_col: usize,
    pub overlay: Ipv4Net,
    pub overlay_col: usize,
    /// `--bridge=NAME` / `bridge NAME`, with the column of NAME.
    pub bridge: Option<(IfName, usize)>,
    /// False for `--disable` / `off`: the fan exists in the file but does not come up.
    pub enabled: bool,
    /// `--dhcp` / `dhcp`: fanlink serves DHCP on the bridge (`dhcp = true`).
    pub dhcp: bool,
    /// `--host-reserve=N` / `host-reserve N`: the slice's first N addresses are the host's,
    /// with the column of N.
    pub host_reserve: Option<(u32, usize)>,
}

/// Splits a line into words with their columns, dropping a `#` comment. Surrounding
/// quotes are removed, as a shell would; anything else shell-like is left for the caller.
pub fn tokens(line: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in line.char_indices().chain([(line.len(), ' ')]) {
        match (start, c.is_whitespace()) {
            (None, false) if c == '#' => break,
            (None, false) => start = Some(i),
            (Some(s), true) => {
                out.push(unquote(&line[s..i], line[..s].chars().count() + 1));
                start = None;
            }
            _ => {}
        }
    }
    out
}

fn unquote(word: &str, col: usize) -> Token<'_> {
    for q in ['\'', '"'] {
        if word.len() >= 2 && word.starts_with(q) && word.ends_with(q) {
            return Token { text: &word[1..word.len() - 1], col: col + 1 };
        }
    }
    Token { text: word, col }
}

/// Whether `text` is a shell script (a networkd-dispatcher hook, a boot script) rather than
/// `/etc/network/fan`: it starts with `#!`, or a line outside comments runs fanctl. No line
/// of /etc/network/fan names fanctl, so such a line is never read as one.
pub fn is_script(text: &str) -> bool {
    text.starts_with("#!") || text.lines().any(|l| tokens(l).iter().any(|w| runs_fanctl(w.text)))
}

fn runs_fanctl(word: &str) -> bool {
    word.rsplit('/').next() == Some("fanctl")
}

/// Finds `fanctl up` among `words` (after `sudo`, a path, ...) and returns the column of
/// `fanctl` and the words after `up`; `Ok(None)` when the words do not run fanctl, or run it
/// for something else than `up`.
pub fn fanctl_up<'a>(words: &[Token<'a>], line: usize) -> Result<Option<(usize, Vec<Token<'a>>)>, Refusal> {
    let Some(at) = words.iter().position(|w| runs_fanctl(w.text)) else {
        return Ok(None);
    };
    match words.get(at + 1) {
        Some(w) if w.text == "up" => {
            let rest = command_words(&words[at + 2..]);
            if let Some(all) = rest.iter().find(|w| w.text == "-a") {
                let message =
                    "`fanctl up -a` brings up the fans of /etc/network/fan; import that file instead"
                        .to_string();
                return Err(Refusal { line, col: all.col, message });
            }
            Ok(Some((words[at].col, rest)))
        }
        _ => Ok(None),
    }
}

/// The words of one simple command: up to a shell operator or redirection (`|| true`,
/// `; echo done`, `>/dev/null`), with a `;` glued to the last word taken off.
fn command_words<'a>(words: &[Token<'a>]) -> Vec<Token<'a>> {
    let mut out = Vec::new();
    for w in words {
        let operator = w.text.starts_with([';', '&', '|', '<', '>'])
            || w.text.trim_start_matches(|c: char| c.is_ascii_digit()).starts_with(['>', '<']);
        if operator {
            break;
        }
        match w.text.strip_suffix(';') {
            Some(text) => {
                out.push(Token { text, col: w.col });
                break;
            }
            None => out.push(*w),
        }
    }
    out
}

/// Parses the words of one fan: a config line, or what follows `fanctl up` (`fanctl`: the
/// column of the `fanctl` word, so that errors speak of fanctl's syntax, not the file's).
pub fn fan_line(words: &[Token<'_>], line: usize, fanctl: Option<usize>) -> Result<FanLine, Refusal> {
    let refuse = |col: usize, message: String| Refusal { line, col, message };
    let (mut underlay, mut overlay, mut positional) = (None, None, Vec::new());
    let (mut bridge, mut enabled, mut dhcp, mut host_reserve) = (None, true, false, None);
    if let Some(w) = words.iter().find(|w| w.text.contains('$') || w.text.contains('`')) {
        let message = format!("`{}` is a shell expansion; write the value it stands for", w.text);
        return Err(refuse(w.col, message));
    }
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let (flag, inline) = match w.text.split_once('=') {
            Some((f, v)) if w.text.starts_with("--") => (f, Some(v)),
            _ => (w.text, None),
        };
        // An option's value: after `=`, or the next word.
        let mut value = |what: &str| -> Result<Token<'_>, Refusal> {
            if let Some(v) = inline {
                return Ok(Token { text: v, col: w.col + flag.len() + 1 });
            }
            i += 1;
            words.get(i).copied().ok_or_else(|| refuse(w.col, format!("`{flag}` needs {what} after it")))
        };
        match flag {
            "-u" | "--underlay" => underlay = Some(value("an underlay")?),
            "-o" | "--overlay" => overlay = Some(value("an overlay")?),
            "--bridge" | "bridge" => {
                let name = value("a bridge name")?;
                let parsed = name.text.parse().map_err(|e| refuse(name.col, format!("bridge name: {e}")))?;
                bridge = Some((parsed, name.col));
            }
            "-t" | "--type" => {
                let kind = value("a tunnel type")?;
                match kind.text {
                    "vxlan" => {}
                    "ipip" => return Err(refuse(w.col, IPIP.to_string())),
                    other => {
                        return Err(refuse(
                            kind.col,
                            format!("unknown tunnel type `{other}`; fanctl knows vxlan and ipip"),
                        ))
                    }
                }
            }
            "--dhcp" | "dhcp" => dhcp = true,
            "--host-reserve" | "host-reserve" => {
                let n = value("a number of addresses")?;
                let count = n.text.parse::<u32>().ok().filter(|c| *c >= 1).ok_or_else(|| {
                    refuse(
                        n.col,
                        format!("host-reserve `{}` is not a number of addresses (1 or more)", n.text),
                    )
                })?;
                host_reserve = Some((count, n.col));
            }
            "--enable" => enabled = true,
            "--disable" | "off" => enabled = false,
            _ if w.text.starts_with('-') => {
                let message = format!("unknown fanctl option `{}`; {KNOWN}", w.text);
                return Err(refuse(w.col, message));
            }
            _ if positional.len() < 2 => positional.push(w),
            _ => {
                let form = if fanctl.is_some() { FANCTL_FORM } else { "a fan is UNDERLAY OVERLAY [OPTIONS]" };
                let message = format!("unexpected `{}`: {form}; {KNOWN}", w.text);
                return Err(refuse(w.col, message));
            }
        }
        i += 1;
    }
    let (u, o) = roles(underlay, overlay, &positional, line, fanctl)?;
    let underlay = underlay_spec(u, line)?;
    let overlay = prefix(o, "overlay", "250.0.0.0/8", line)?;
    let (underlay_col, overlay_col) = (u.col, o.col);
    Ok(FanLine { underlay, underlay_col, overlay, overlay_col, bridge, enabled, dhcp, host_reserve })
}

const FANCTL_FORM: &str = "`fanctl up` takes -u UNDERLAY -o OVERLAY [OPTIONS]";
const KNOWN: &str = "fanlink imports --bridge=NAME, --type=vxlan, --dhcp, --host-reserve=N, --enable, \
                     --disable, -u, -o and the old words `bridge NAME`, `dhcp`, `host-reserve N` and `off`";
const IPIP: &str = "the ipip fan is not supported: fanlink builds the vxlan fan only (ipip was \
                    removed from LXD); use --type=vxlan on every host of this fan";

/// Which word is the underlay and which the overlay. Positional words are UNDERLAY OVERLAY
/// (fanctl 0.9 on) or OVERLAY UNDERLAY (fanctl 0.3, still in cloud-init's examples): an
/// interface is always the underlay, and of two prefixes the wider one is the overlay,
/// since a fan needs the overlay at least 2 bits wider than the underlay.
fn roles<'a>(
    underlay: Option<Token<'a>>,
    overlay: Option<Token<'a>>,
    positional: &[Token<'a>],
    line: usize,
    fanctl: Option<usize>,
) -> Result<(Token<'a>, Token<'a>), Refusal> {
    let refuse = |col, message: String| Refusal { line, col, message };
    match (underlay, overlay, positional) {
        (Some(u), Some(o), []) => Ok((u, o)),
        (Some(u), None, [o]) => Ok((u, *o)),
        (None, Some(o), [u]) => Ok((*u, o)),
        (None, None, [a, b]) => match (prefix_len(a), prefix_len(b)) {
            (Some(la), Some(lb)) if la < lb => Ok((*b, *a)),
            (Some(la), Some(lb)) if la > lb => Ok((*a, *b)),
            (Some(_), Some(_)) => Err(refuse(
                a.col,
                format!(
                    "cannot tell which of `{}` and `{}` is the overlay: they are equally wide, \
                     and an overlay must be wider than its underlay",
                    a.text, b.text
                ),
            )),
            (Some(_), None) => Ok((*b, *a)),
            _ => Ok((*a, *b)),
        },
        (_, _, [.., extra]) if positional.len() + underlay.iter().len() + overlay.iter().len() > 2 => {
            Err(refuse(
                extra.col,
                format!("unexpected `{}`: the underlay and overlay are already given", extra.text),
            ))
        }
        _ => Err(match fanctl {
            Some(col) => {
                refuse(col, format!("{FANCTL_FORM}, e.g. `fanctl up -u 10.0.0.0/16 -o 250.0.0.0/8`"))
            }
            None => {
                refuse(1, "a fan needs an underlay and an overlay, e.g. `10.0.0.0/16 250.0.0.0/8`".into())
            }
        }),
    }
}

/// The prefix length of a word that is an IPv4 prefix; None for interfaces and the like.
fn prefix_len(w: &Token<'_>) -> Option<u8> {
    w.text.parse::<Ipv4Net>().ok().map(|n| n.prefix_len())
}

fn prefix(w: Token<'_>, what: &str, example: &str, line: usize) -> Result<Ipv4Net, Refusal> {
    let message = if let Ok(net) = w.text.parse::<Ipv4Net>() {
        return Ok(net);
    } else if w.text.parse::<Ipv4Addr>().is_ok() {
        format!("{what} `{}` has no prefix length; write it as a prefix such as {example}", w.text)
    } else {
        format!("{what} `{}` is not an IPv4 prefix such as {example}", w.text)
    };
    Err(Refusal { line, col: w.col, message })
}

fn underlay_spec(w: Token<'_>, line: usize) -> Result<UnderlaySpec, Refusal> {
    let refuse = |message: String| Refusal { line, col: w.col, message };
    let looks_numeric = w.text.starts_with(|c: char| c.is_ascii_digit());
    if looks_numeric {
        return prefix(w, "underlay", "10.0.0.0/16", line).map(UnderlaySpec::Prefix);
    }
    let (name, len) = match w.text.split_once('/') {
        None => (w.text, None),
        Some((name, len)) => match len.parse::<u8>() {
            Ok(n) if n <= 32 => (name, Some(n)),
            _ => {
                return Err(refuse(format!("underlay `{}`: `/{len}` is not a prefix length (0-32)", w.text)))
            }
        },
    };
    if name == "default" {
        return Ok(UnderlaySpec::Default(len));
    }
    let name = name.parse().map_err(|e| refuse(format!("underlay `{}`: {e}", w.text)))?;
    Ok(UnderlaySpec::Interface(name, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<FanLine, String> {
        let words = tokens(line);
        fan_line(&words, 1, None).map_err(|r| format!("{}: {}", r.col, r.message))
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn tokens_have_columns_and_comments_end_them() {
        let t = tokens("  10.0.0.0/16\t'250.0.0.0/8' # --dhcp");
        assert_eq!(t, [Token { text: "10.0.0.0/16", col: 3 }, Token { text: "250.0.0.0/8", col: 16 }]);
        assert!(tokens("# fan 240").is_empty());
    }

    #[test]
    fn both_orders_and_both_option_styles() {
        let a = parse("10.0.0.0/16 250.0.0.0/8 --bridge=lxdfan0 --enable").unwrap();
        assert_eq!((a.underlay, a.overlay), (UnderlaySpec::Prefix(net("10.0.0.0/16")), net("250.0.0.0/8")));
        assert_eq!(a.bridge.map(|(n, c)| (n.to_string(), c)), Some(("lxdfan0".into(), 34)));
        let b = parse("250.0.0.0/8 10.0.0.0/16 bridge br0 off").unwrap();
        assert_eq!((b.underlay_col, b.overlay_col, b.enabled), (13, 1, false));
        let c = parse("-o 241.0.0.0/8 -u eth0/24 --type vxlan").unwrap();
        assert_eq!(c.underlay, UnderlaySpec::Interface("eth0".parse().unwrap(), Some(24)));
        let r = parse("10.0.0.0/16 250.0.0.0/8 --host-reserve=10").unwrap();
        assert_eq!(r.host_reserve, Some((10, 40)));
        let r = parse("250.0.0.0/8 10.0.0.0/16 host-reserve 4 dhcp").unwrap();
        assert_eq!((r.host_reserve, r.dhcp), (Some((4, 38)), true));
        let d = parse("10.0.0.0/8 default").unwrap();
        assert_eq!((d.underlay, d.overlay), (UnderlaySpec::Default(None), net("10.0.0.0/8")));
    }

    #[test]
    fn refusals_name_the_word() {
        let cases = [
            ("10.0.0.0/16 250.0.0.0/8 -t ipip", format!("25: {IPIP}")),
            ("10.0.0.0/16 250.0.0.0/8 --type=gre", "32: unknown tunnel type `gre`; fanctl knows vxlan and ipip".into()),
            ("10.0.0.0/16 250.0.0.0/8 --mtu=1400", format!("25: unknown fanctl option `--mtu=1400`; {KNOWN}")),
            ("10.0.0.0/16 250.0.0.0/8 colour", format!("25: unexpected `colour`: a fan is UNDERLAY OVERLAY [OPTIONS]; {KNOWN}")),
            ("10.0.0.0/16 250.0.0.0/16", "1: cannot tell which of `10.0.0.0/16` and `250.0.0.0/16` is the overlay: they are equally wide, and an overlay must be wider than its underlay".into()),
            ("10.0.0.0/16", "1: a fan needs an underlay and an overlay, e.g. `10.0.0.0/16 250.0.0.0/8`".into()),
            ("-u $UNDERLAY -o 250.0.0.0/8", "4: `$UNDERLAY` is a shell expansion; write the value it stands for".into()),
            ("ens3/16 250.0.0.0", "9: overlay `250.0.0.0` has no prefix length; write it as a prefix such as 250.0.0.0/8".into()),
            ("ens3/40 250.0.0.0/8", "1: underlay `ens3/40`: `/40` is not a prefix length (0-32)".into()),
            ("10.0.0.0/16 250.0.0.0/8 --bridge=fan-250-overlay0", "34: bridge name: \"fan-250-overlay0\" is 16 bytes long; interface names have at most 15".into()),
            ("10.0.0.0/16 250.0.0.0/8 --bridge", "25: `--bridge` needs a bridge name after it".into()),
            ("10.0.0.0/16 250.0.0.0/8 --host-reserve=x", "40: host-reserve `x` is not a number of addresses (1 or more)".into()),
            ("-u 10.0.0.0/16 -o 250.0.0.0/8 240.0.0.0/8", "31: unexpected `240.0.0.0/8`: the underlay and overlay are already given".into()),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line), Err(expected), "{line}");
        }
    }

    #[test]
    fn fanctl_lines_are_refused_in_fanctl_terms() {
        let refusal = |line: &str| {
            let words = tokens(line);
            let (col, rest) = fanctl_up(&words, 1).unwrap().unwrap();
            let r = fan_line(&rest, 1, Some(col)).unwrap_err();
            format!("{}: {}", r.col, r.message)
        };
        let needs = "3: `fanctl up` takes -u UNDERLAY -o OVERLAY [OPTIONS], e.g. `fanctl up -u 10.0.0.0/16 -o 250.0.0.0/8`";
        assert_eq!(refusal("  fanctl up -u 10.0.0.0/16"), needs);
        assert_eq!(refusal("  fanctl up"), needs);
        assert_eq!(
            refusal("  fanctl up 10.0.0.0/16 250.0.0.0/8 now"),
            format!("37: unexpected `now`: `fanctl up` takes -u UNDERLAY -o OVERLAY [OPTIONS]; {KNOWN}")
        );
    }

    #[test]
    fn a_script_is_told_from_etc_network_fan() {
        assert!(is_script("#!/bin/sh\n"));
        assert!(is_script(
            "# hook\nif true; then\n    sudo /usr/sbin/fanctl up -u 10.0.0.0/16 -o 250.0.0.0/8\nfi\n"
        ));
        assert!(is_script("fanctl down -e\n"));
        assert!(!is_script("# fanctl up is what ubuntu-fan runs for each line\n10.0.0.0/16 250.0.0.0/8\n"));
        assert!(!is_script("10.0.0.0/16 250.0.0.0/8 --bridge=fanctl0\n"));
        assert!(!is_script(""));
    }

    #[test]
    fn fanctl_is_found_after_sudo_and_paths() {
        let words = tokens("sudo /usr/sbin/fanctl up -u 10.0.0.0/16 -o 250.0.0.0/8");
        let (col, rest) = fanctl_up(&words, 1).unwrap().unwrap();
        assert_eq!(col, 6);
        assert_eq!(rest.first().map(|t| (t.text, t.col)), Some(("-u", 26)));
        assert_eq!(fanctl_up(&tokens("fanctl show"), 1), Ok(None));
        assert_eq!(fanctl_up(&tokens("echo hello"), 1), Ok(None));
        assert_eq!(fanctl_up(&tokens("fanctl up -a"), 3).unwrap_err().col, 11);
        let rest =
            fanctl_up(&tokens("fanctl up -u 10.0.0.0/16 -o 250.0.0.0/8; echo ok"), 1).unwrap().unwrap().1;
        assert_eq!(rest.last().map(|t| t.text), Some("250.0.0.0/8"));
        let rest =
            fanctl_up(&tokens("fanctl up -o 250.0.0.0/8 -u ens3 2>/dev/null || true"), 1).unwrap().unwrap().1;
        assert_eq!(rest.len(), 4);
    }
}
