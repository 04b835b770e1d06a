//! `fanlink import`: translates ubuntu-fan's `/etc/network/fan` (or a `fanctl up` command,
//! or the `fanctl up` lines of a hook script, or LXD's `lxc network show` of a fan network)
//! into a fanlink rule file on stdout.
//!
//! All or nothing: every line is translated and the result is checked with fanlink's own
//! rule parser before anything is printed, so a printed file always loads; anything that
//! cannot be translated faithfully is refused with its line and column, and stdout stays
//! empty. `parse` reads the syntax, `host` answers for `ens3/16` and `default` underlays,
//! `render` writes the TOML.

pub mod host;
mod lxd;
pub mod parse;
mod render;

use crate::config;
use crate::fan::FanMap;
use crate::ifname::IfName;
use anyhow::{bail, Context, Result};
use clap::Args;
use host::{Host, NetlinkHost};
use ipnet::Ipv4Net;
use parse::{FanLine, Refusal, UnderlaySpec};
use std::io::Read;
use std::path::PathBuf;

/// Exit status when the source holds something fanlink will not translate.
pub const EXIT_REFUSED: u8 = 2;

/// `fanlink import`'s arguments.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// ubuntu-fan's config file (lines `UNDERLAY OVERLAY [OPTIONS]`), a shell script that
    /// runs `fanctl up` such as a networkd-dispatcher hook, or the output of
    /// `lxc network show NET` for an LXD fan network (`bridge.mode: fan`) ("-": stdin).
    #[arg(default_value = "/etc/network/fan", value_name = "FILE")]
    pub file: PathBuf,
    /// Translate this `fanctl up -u U -o O [OPTIONS]` command instead of a file.
    #[arg(long, value_name = "CMD", conflicts_with_all = ["script", "file"])]
    pub command: Option<String>,
    /// Read FILE as a shell script: import its `fanctl up` lines. Without it, a FILE that
    /// starts with `#!` or runs fanctl is read as a script, anything else as /etc/network/fan.
    #[arg(long)]
    pub script: bool,
    /// The underlay prefix for underlays given as an interface (`ens3/16`, `default`),
    /// instead of reading the interface's address on this host.
    #[arg(long = "underlay-prefix", value_name = "PREFIX")]
    pub underlay_prefix: Option<Ipv4Net>,
}

/// What the source is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `/etc/network/fan`: one fan per line.
    FanFile,
    /// One `fanctl up ...` command.
    Command,
    /// A shell script: its `fanctl up` lines, everything else ignored.
    Script,
    /// `lxc network show NET` of an LXD fan network: one fan.
    Lxd,
}

/// A fan ready to be written out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fan {
    /// The source line, for the comment above the fan and for messages.
    pub line: usize,
    pub source: String,
    pub name: Option<IfName>,
    pub map: FanMap,
    pub interface: Option<IfName>,
    pub enabled: bool,
    pub dhcp: bool,
    /// `host-reserve`, when the source sets one.
    pub host_reserve: Option<u32>,
    /// `mtu` and `masquerade` (from LXD's `bridge.mtu` and `ipv4.nat`).
    pub mtu: Option<u32>,
    pub masquerade: bool,
    /// Comment lines saying what the translation did.
    pub notes: Vec<String>,
}

impl Fan {
    /// The bridge name fanlink will use: the given one, or its default.
    fn bridge(&self) -> IfName {
        self.name.clone().unwrap_or_else(|| crate::config::default_name(&self.map))
    }
}

impl Refusal {
    /// `ORIGIN:LINE:COL: error: MESSAGE`, as `fanlink check` reports rule errors.
    pub fn at(&self, origin: &str) -> String {
        format!("{origin}:{}:{}: error: {}", self.line, self.col, self.message)
    }
}

/// Translates `text` into a rule file; `origin` names the source in the output's comments.
/// Returns the file and how many fans it holds, or every refusal.
pub fn translate(
    origin: &str,
    text: &str,
    syntax: Syntax,
    underlay_prefix: Option<Ipv4Net>,
    host: &mut dyn Host,
) -> Result<(String, usize), Vec<Refusal>> {
    let mut fans: Vec<Fan> = Vec::new();
    let mut refusals = Vec::new();
    if syntax == Syntax::Lxd {
        fans.push(lxd::fan(text, underlay_prefix, host)?);
    }
    for (i, source) in text.lines().enumerate().filter(|_| syntax != Syntax::Lxd) {
        let line = if syntax == Syntax::Command { 1 } else { i + 1 };
        match read_line(source, line, syntax) {
            Ok(None) => {}
            Ok(Some(fan_line)) => match resolve(&fan_line, line, source, underlay_prefix, host) {
                Ok(fan) => match clash(&fan, &fan_line, &fans) {
                    Some(refusal) => refusals.push(refusal),
                    None => fans.push(fan),
                },
                Err(refusal) => refusals.push(refusal),
            },
            Err(refusal) => refusals.push(refusal),
        }
    }
    if syntax == Syntax::Command && fans.is_empty() && refusals.is_empty() {
        let message = "not a `fanctl up` command; expected e.g. `fanctl up -u 10.0.0.0/16 -o 250.0.0.0/8`";
        refusals.push(Refusal { line: 1, col: 1, message: message.into() });
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    let (toml, blocks) = render::file(origin, syntax, &fans);
    check(&toml, &blocks, &fans)?;
    Ok((toml, fans.len()))
}

/// The fan of one source line, or None for lines that define none.
fn read_line(source: &str, line: usize, syntax: Syntax) -> Result<Option<FanLine>, Refusal> {
    let mut words = parse::tokens(source);
    let mut fanctl = None;
    match syntax {
        Syntax::FanFile if words.is_empty() => return Ok(None),
        Syntax::Lxd => return Ok(None),
        Syntax::FanFile => {}
        Syntax::Command | Syntax::Script => {
            let Some((col, rest)) = parse::fanctl_up(&words, line)? else { return Ok(None) };
            (fanctl, words) = (Some(col), rest);
        }
    }
    parse::fan_line(&words, line, fanctl).map(Some)
}

/// Turns a parsed line into a fan: the underlay becomes a prefix (asking the host for
/// interfaces), and the pair is validated as fanlink's rule parser would.
fn resolve(
    l: &FanLine,
    line: usize,
    source: &str,
    underlay_prefix: Option<Ipv4Net>,
    host: &mut dyn Host,
) -> Result<Fan, Refusal> {
    let refuse = |col: usize, message: String| Refusal { line, col, message };
    let mut notes = Vec::new();
    let (underlay, interface) = match &l.underlay {
        UnderlaySpec::Prefix(net) => {
            if net.addr() != net.network() {
                notes.push(format!(
                    "{} is this host's address in the underlay; fanlink finds it by itself",
                    net.addr()
                ));
            }
            (net.trunc(), None)
        }
        UnderlaySpec::Interface(name, len) => {
            let net = from_link(name.as_str(), *len, underlay_prefix, host, &mut notes)
                .map_err(|m| refuse(l.underlay_col, m))?;
            (net, Some(name.clone()))
        }
        UnderlaySpec::Default(len) => {
            let net = match underlay_prefix {
                None => {
                    let link = host.default_link().map_err(|e| refuse(l.underlay_col, with_hint(e)))?;
                    notes.push(format!("`default`: {link} has the default route on this host"));
                    from_link(&link, *len, None, host, &mut notes).map_err(|m| refuse(l.underlay_col, m))?
                }
                Some(p) => from_link("default", *len, Some(p), host, &mut notes)
                    .map_err(|m| refuse(l.underlay_col, m))?,
            };
            // fanlink's own default follows the address, not the default route.
            notes.push("no `interface`: fanlink uses the link that has an address in the underlay".into());
            (net, None)
        }
    };
    let map = FanMap::new(l.overlay, underlay).map_err(|m| {
        let col = if m.starts_with("underlay") { l.underlay_col } else { l.overlay_col };
        refuse(col, m)
    })?;
    if let Some((count, col)) = l.host_reserve {
        let split = crate::addrplan::Split { host_reserve: count, ..Default::default() };
        split.check(map.slice_prefix_len()).map_err(|(_, m)| refuse(col, m))?;
    }
    Ok(Fan {
        line,
        source: source.trim().to_string(),
        name: l.bridge.as_ref().map(|(n, _)| n.clone()),
        map,
        interface,
        enabled: l.enabled,
        dhcp: l.dhcp,
        host_reserve: l.host_reserve.map(|(n, _)| n),
        mtu: None,
        masquerade: true,
        notes,
    })
}

fn with_hint(e: String) -> String {
    format!("{e}; give the underlay with --underlay-prefix")
}

/// The underlay of an interface: `--underlay-prefix` if given, else the interface's first
/// address (a /32, such as a VIP, only if there is nothing else), cut to `len`.
fn from_link(
    name: &str,
    len: Option<u8>,
    given: Option<Ipv4Net>,
    host: &mut dyn Host,
    notes: &mut Vec<String>,
) -> Result<Ipv4Net, String> {
    if let Some(p) = given {
        if let Some(n) = len.filter(|n| *n != p.prefix_len()) {
            return Err(format!("`{name}/{n}` asks for a /{n} underlay, but --underlay-prefix is {p}"));
        }
        notes.push(format!("underlay {p}: from --underlay-prefix"));
        return Ok(p);
    }
    let addresses = host.addresses(name).map_err(with_hint)?;
    let chosen = addresses.iter().find(|a| a.prefix_len() < 32).or(addresses.first());
    let address = chosen.ok_or_else(|| with_hint(format!("{name} has no IPv4 address on this host")))?;
    let net =
        Ipv4Net::new(address.addr(), len.unwrap_or(address.prefix_len())).expect("length <= 32").trunc();
    notes.push(format!("underlay {net}: from {name}'s address {address} on this host"));
    Ok(net)
}

/// Two enabled fans cannot share a bridge name or overlap: say so at the later one.
fn clash(fan: &Fan, l: &FanLine, earlier: &[Fan]) -> Option<Refusal> {
    if !fan.enabled {
        return None;
    }
    let refuse = |col: usize, message: String| Some(Refusal { line: fan.line, col, message });
    for other in earlier.iter().filter(|f| f.enabled) {
        if fan.bridge() == other.bridge() {
            let col = l.bridge.as_ref().map_or(l.overlay_col, |(_, c)| *c);
            let message = format!(
                "the bridge {} is already the fan of line {}; give one of them --bridge=NAME",
                fan.bridge(),
                other.line
            );
            return refuse(col, message);
        }
        let vxlan = config::vxlan_name_for(&fan.bridge());
        if vxlan == config::vxlan_name_for(&other.bridge()) || vxlan == other.bridge() {
            let col = l.bridge.as_ref().map_or(l.overlay_col, |(_, c)| *c);
            let message = format!(
                "the bridge {}'s vxlan device would be {vxlan}, which the fan of line {} uses; \
                 choose a --bridge=NAME that differs in its first 12 bytes",
                fan.bridge(),
                other.line
            );
            return refuse(col, message);
        }
        let (a, b) = (fan.map.overlay(), other.map.overlay());
        if a.contains(&b.network()) || b.contains(&a.network()) {
            return refuse(l.overlay_col, format!("overlay {a} overlaps overlay {b} of line {}", other.line));
        }
        if fan.map.vni() == other.map.vni() {
            let message = format!(
                "overlay {a} would use VNI {}, which overlay {b} of line {} uses; two fans need \
                 overlays in different /24s",
                fan.map.vni(),
                other.line
            );
            return refuse(l.overlay_col, message);
        }
    }
    None
}

/// The round trip: the rule parser must accept what we print. `blocks` gives each enabled
/// fan's first and last line in `toml`; an error there refuses the fan's source line.
fn check(toml: &str, blocks: &[(usize, usize, usize)], fans: &[Fan]) -> Result<(), Vec<Refusal>> {
    let (_, errors) = config::parse_all(&[(PathBuf::from("import.toml"), toml.to_string())]);
    let refusals: Vec<Refusal> = errors
        .iter()
        .map(|e| {
            let at = e.position.map_or(0, |(line, _)| line);
            let fan = blocks.iter().find(|(_, first, last)| (*first..=*last).contains(&at));
            let line = fan.map_or(fans.first().map_or(1, |f| f.line), |(i, _, _)| fans[*i].line);
            Refusal { line, col: 1, message: format!("the translation does not load: {}", e.message) }
        })
        .collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}

/// `fanlink import`: prints the rule file, or the refusals and exit status 2.
pub fn run(args: &ImportArgs) -> Result<u8> {
    if let Some(p) = args.underlay_prefix.filter(|p| p.addr() != p.network()) {
        bail!("--underlay-prefix {p} has host bits set; did you mean {}?", p.trunc());
    }
    let (origin, text, syntax) = match &args.command {
        // One command, even if pasted from a script with `\` continuations.
        Some(command) => {
            let one_line = command.replace("\\\n", " ").replace('\n', " ");
            ("--command".to_string(), one_line, Syntax::Command)
        }
        None => {
            let (origin, text) = read_source(&args.file)?;
            let syntax = if args.script || parse::is_script(&text) {
                Syntax::Script
            } else if lxd::is_lxd(&text) {
                Syntax::Lxd
            } else {
                Syntax::FanFile
            };
            (origin, text, syntax)
        }
    };
    match translate(&origin, &text, syntax, args.underlay_prefix, &mut NetlinkHost::default()) {
        Ok((toml, fans)) => {
            print!("{toml}");
            if fans == 0 {
                let what = if syntax == Syntax::Script { "no `fanctl up` command" } else { "no fans" };
                eprintln!("fanlink: {origin} has {what}");
            }
            Ok(0)
        }
        Err(refusals) => {
            for r in &refusals {
                eprintln!("{}", r.at(&origin));
            }
            eprintln!("fanlink: cannot import {origin}: {} problem(s); nothing printed", refusals.len());
            Ok(EXIT_REFUSED)
        }
    }
}

fn read_source(file: &PathBuf) -> Result<(String, String)> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
        return Ok(("<stdin>".into(), text));
    }
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    Ok((file.display().to_string(), text))
}

#[cfg(test)]
mod tests;
