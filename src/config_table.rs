//! One `[[fan]]` table of a rule file read into a `Rule`: typed access to its keys, each
//! problem recorded with its position (`FanTable`), and the checks of every key (`convert`).

use super::*;

/// Typed access to one fan's keys; every problem is recorded with its position.
struct FanTable<'a> {
    raw: &'a RawFan,
    path: &'a Path,
    text: &'a str,
    errors: Vec<RuleError>,
}

impl<'a> FanTable<'a> {
    fn error(&mut self, span: Range<usize>, message: String) {
        let position = Some(line_col(self.text, span.start));
        self.errors.push(RuleError { path: self.path.to_path_buf(), position, message });
    }

    fn get(&self, key: &str) -> Option<&'a Spanned<toml::Value>> {
        self.raw.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v)
    }

    /// A string key; `what` says what it should look like.
    fn string(&mut self, key: &str, what: &str) -> Option<(&'a str, Range<usize>)> {
        let value = self.get(key)?;
        match value.get_ref() {
            toml::Value::String(s) => Some((s.as_str(), value.span())),
            other => {
                let message = format!("`{key}` must be a string such as {what}, not {}", type_name(other));
                self.error(value.span(), message);
                None
            }
        }
    }

    fn prefix(&mut self, key: &str, example: &str) -> Option<(Ipv4Net, Range<usize>)> {
        let (text, span) = self.string(key, example)?;
        match text.parse::<Ipv4Net>() {
            Ok(net) => Some((net, span)),
            Err(_) => {
                let message =
                    format!("`{key}` \"{}\" is not an IPv4 prefix such as {example}", text.escape_default());
                self.error(span, message);
                None
            }
        }
    }

    /// A true/false key with its default.
    fn boolean(&mut self, key: &str, default: bool) -> Option<bool> {
        let Some(value) = self.get(key) else { return Some(default) };
        let flag = value.get_ref().as_bool();
        if flag.is_none() {
            self.error(
                value.span(),
                format!("`{key}` must be true or false, not {}", shown(value.get_ref())),
            );
        }
        flag
    }

    /// `host-reserve` and `docker-share`, checked against the fan's slice size: the parts of
    /// every host's slice must fit, and with `dhcp = true` leave DHCP some addresses.
    fn split(&mut self, map: Option<FanMap>, dhcp: Option<bool>, header: &Range<usize>) -> Option<Split> {
        let mut split = Split::default();
        if let Some(value) = self.get("host-reserve") {
            match value.get_ref().as_integer().and_then(|n| u32::try_from(n).ok()).filter(|n| *n >= 1) {
                Some(n) => split.host_reserve = n,
                None => {
                    let message = format!(
                        "`host-reserve` must be a number of addresses, 1 or more (the bridge's is the first), not {}",
                        shown(value.get_ref())
                    );
                    self.error(value.span(), message);
                    return None;
                }
            }
        }
        if let Some((text, span)) = self.string("docker-share", "\"1/2\"") {
            split.docker_share = addrplan::parse_share(text).map_err(|m| self.error(span, m)).ok()?;
        }
        let slice_len = map?.slice_prefix_len();
        let span_of = |t: &Self, key: &str| t.get(key).map_or(header.clone(), |v| v.span());
        if let Err((key, message)) = split.check(slice_len) {
            let key = if key == SplitKey::HostReserve { "host-reserve" } else { "docker-share" };
            self.error(span_of(self, key), message);
            return None;
        }
        if dhcp == Some(true) && !split.has_dhcp(slice_len) {
            let message = format!(
                "`dhcp = true` has no address to hand out: a /{slice_len} slice has none left beside the host's \
                 {} and Docker's share {}; set docker-share = \"none\" or a smaller host-reserve",
                split.host_reserve,
                addrplan::share_text(split.docker_share)
            );
            self.error(span_of(self, "dhcp"), message);
            return None;
        }
        Some(split)
    }

    /// `dhcp-lease`: a lease time as dnsmasq reads it, at least its minimum of two minutes
    /// (dnsmasq raises shorter ones silently), and only beside `dhcp = true`.
    fn lease(&mut self, dhcp: bool) -> Option<String> {
        let (text, span) = self.string("dhcp-lease", "\"1h\"")?;
        let message = match crate::dhcp::lease_seconds(text) {
            None => format!(
                "`dhcp-lease` \"{}\" is not a lease time such as \"45m\", \"12h\", \"7d\" or \"infinite\"",
                text.escape_default()
            ),
            Some(s) if s < 120 => format!("`dhcp-lease` \"{text}\" is shorter than dnsmasq's minimum of 2m"),
            Some(_) if !dhcp => "`dhcp-lease` without `dhcp = true`: no DHCP server hands it out".into(),
            Some(_) => return Some(text.to_string()),
        };
        self.error(span, message);
        None
    }

    fn ifname(&mut self, key: &str) -> Option<IfName> {
        let (text, span) = self.string(key, "\"fan-250\"")?;
        text.parse().map_err(|e| self.error(span, format!("`{key}`: {e}"))).ok()
    }
}

fn type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

pub(super) fn convert(
    raw: &RawFan,
    header: Range<usize>,
    path: &Path,
    text: &str,
) -> Result<(Rule, KeySpans), Vec<RuleError>> {
    let mut t = FanTable { raw, path, text, errors: Vec::new() };
    for key in raw.keys() {
        if !KEYS.contains(&key.get_ref().as_str()) {
            let message =
                format!("unknown key `{}`; a fan has {}", key.get_ref().escape_default(), KEYS.join(", "));
            t.error(key.span(), message);
        }
    }
    for required in ["overlay", "underlay"] {
        if t.get(required).is_none() {
            t.error(
                header.clone(),
                format!("this fan has no `{required}`; add e.g. {required} = \"{}\"", example(required)),
            );
        }
    }
    let overlay = t.prefix("overlay", "\"250.0.0.0/8\"");
    let underlay = t.prefix("underlay", "\"10.0.0.0/16\"");
    let overlay_span = overlay.as_ref().map_or(header.clone(), |(_, span)| span.clone());
    let map = match (overlay, underlay) {
        (Some((o, span)), Some((u, _))) => FanMap::new(o, u).map_err(|m| t.error(span, m)).ok(),
        _ => None,
    };
    let name_span = t.get("name").map_or(header.clone(), |v| v.span());
    let name = match (t.get("name"), map) {
        (Some(_), _) => t.ifname("name"),
        (None, Some(m)) => Some(default_name(&m)),
        (None, None) => None,
    };
    let interface = t.get("interface").and_then(|_| t.ifname("interface"));
    let mtu = t.get("mtu").and_then(|value| {
        let valid = value
            .get_ref()
            .as_integer()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| MTU_RANGE.contains(m));
        if valid.is_none() {
            let (lo, hi) = (MTU_RANGE.start(), MTU_RANGE.end());
            t.error(
                value.span(),
                format!("`mtu` must be an integer from {lo} to {hi}, not {}", shown(value.get_ref())),
            );
        }
        valid
    });
    let masquerade = t.boolean("masquerade", true);
    let dhcp = t.boolean("dhcp", false);
    let split = t.split(map, dhcp, &header);
    let enabled = t.boolean("enable", true);
    let dhcp_lease = t.get("dhcp-lease").and_then(|_| t.lease(dhcp == Some(true)));
    match (name, map, masquerade, dhcp, split, enabled) {
        (Some(name), Some(map), Some(masquerade), Some(dhcp), Some(split), Some(enabled))
            if t.errors.is_empty() =>
        {
            let origin = format!("{}:{}", path.display(), line_col(text, header.start).0);
            let rule = Rule {
                name,
                map,
                interface,
                mtu,
                masquerade,
                dhcp,
                split,
                dhcp_lease,
                enabled,
                origin,
                by_hand: false,
            };
            Ok((rule, KeySpans { name: name_span, overlay: overlay_span }))
        }
        _ => {
            t.errors.sort_by_key(|e| e.position);
            Err(t.errors)
        }
    }
}

/// A value as a message shows it: scalars as written, others by their type.
fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::String(s) => format!("\"{}\"", s.escape_default()),
        other => type_name(other).to_string(),
    }
}

fn example(key: &str) -> &'static str {
    if key == "overlay" {
        "250.0.0.0/8"
    } else {
        "10.0.0.0/16"
    }
}
