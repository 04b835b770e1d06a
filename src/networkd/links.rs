//! What networkd says about links: the start-up snapshot (ListLinks and two pipelined Gets
//! a link), one link's states read again, and a link first seen in a signal. Paths for calls
//! are built from the ifindex, never taken from the bus.

use super::bus::{self, Reply};
use super::*;

impl Networkd {
    /// Every link networkd knows, with its states, except those `skip` names: each link costs
    /// two calls, and a daemon that restarts over 16 fans would ask about 32 links of its own,
    /// none of them an underlay. The calls are pipelined (`Bus::call_all`): on a host with a
    /// few hundred containers' links, one after the other they would hold the worker for a
    /// round trip each. A link that vanishes while this runs is left out (its `linger` signal
    /// follows); a link whose name the kernel could not have, or whose path does not match
    /// its index, is left out and logged.
    pub fn snapshot(&self, skip: impl Fn(u32) -> bool) -> Result<Vec<LinkState>> {
        let reply = self
            .bus
            .call_method(NETWORKD_NAME, NETWORKD_PATH, MANAGER_INTERFACE, "ListLinks", &[])
            .map_err(call("ListLinks"))?;
        let mut wanted = Vec::new();
        let listed = reply.read("a(iso)", |body| {
            let mut links = body.array(8)?;
            while !links.at_end() {
                links.align(8)?;
                let (index, name, path) = (links.i32()?, links.string()?, links.object_path()?);
                let Some(index) = u32::try_from(index).ok().filter(|i| decode_link_path(path) == Some(*i))
                else {
                    log::warn!("networkd lists link {index} at {}; ignoring it", escape(path));
                    continue;
                };
                let Ok(name) = name.parse::<IfName>() else {
                    log::warn!("networkd lists link {index} as \"{}\"; ignoring it", escape(name));
                    continue;
                };
                if !skip(index) {
                    wanted.push((index, name));
                }
            }
            Some(())
        });
        listed.map_err(call("ListLinks"))?;
        let indexes: Vec<u32> = wanted.iter().map(|(index, _)| *index).collect();
        let states = self.link_states(&indexes)?;
        let mut links = Vec::new();
        for ((index, name), states) in wanted.into_iter().zip(states) {
            match states {
                Some((oper, admin)) => links.push(LinkState { index, name, oper, admin }),
                None => log::debug!("link {index} ({name}) vanished during the snapshot"),
            }
        }
        Ok(links)
    }

    /// The two states of each link, in one pipelined batch of Gets (the path is built from
    /// the number, never taken from the bus); `None` for a link networkd no longer has.
    fn link_states(&self, indexes: &[u32]) -> Result<Vec<Option<(OperState, AdminState)>>> {
        const PROPERTIES: [(&str, &str); 2] = [
            (OperState::PROPERTY, "Get OperationalState"),
            (AdminState::PROPERTY, "Get AdministrativeState"),
        ];
        let mut calls = Vec::with_capacity(2 * indexes.len());
        for &index in indexes {
            for (property, what) in PROPERTIES {
                let args = [Arg::Str(LINK_INTERFACE), Arg::Str(property)];
                let get =
                    bus::method_call(NETWORKD_NAME, &link_path(index), PROPERTIES_INTERFACE, "Get", &args);
                calls.push(get.map_err(call(what))?);
            }
        }
        let mut replies = self.bus.call_all(&calls).into_iter();
        let mut states = Vec::with_capacity(indexes.len());
        while let (Some(oper), Some(admin)) = (replies.next(), replies.next()) {
            // A link gone by the first answer is gone, whatever the second says.
            let Some(oper) = string_property(oper, PROPERTIES[0].1)? else {
                states.push(None);
                continue;
            };
            let admin = string_property(admin, PROPERTIES[1].1)?;
            states.push(admin.map(|admin| (OperState::parse(&oper), AdminState::parse(&admin))));
        }
        Ok(states)
    }

    /// One link's two states read again (the kernel says something networkd's last signal
    /// does not); `None` if networkd does not know the link.
    pub fn link_state(&self, index: u32) -> Result<Option<(OperState, AdminState)>> {
        Ok(self.link_states(&[index])?.pop().flatten())
    }

    /// One link by ifindex (for an index that first shows up in a signal), `None` if
    /// networkd does not know it.
    pub fn link(&self, index: u32) -> Result<Option<LinkState>> {
        let Ok(signed) = i32::try_from(index) else { return Ok(None) };
        log::debug!("asking networkd for link {index}");
        let name = match self.bus.call_method(
            NETWORKD_NAME,
            NETWORKD_PATH,
            MANAGER_INTERFACE,
            "GetLinkByIndex",
            &[Arg::I32(signed)],
        ) {
            Ok(reply) => reply
                .read("so", |body| {
                    let name = body.string()?;
                    body.object_path()?;
                    Some(name.to_owned())
                })
                .map_err(call("GetLinkByIndex"))?,
            Err(e) if is_gone(&e) || is_no_such_link(&e) => return Ok(None),
            Err(e) => return Err(call("GetLinkByIndex")(e)),
        };
        let Ok(name) = name.parse::<IfName>() else {
            log::warn!("networkd names link {index} \"{}\"; ignoring it", escape(&name));
            return Ok(None);
        };
        let states = self.link_states(&[index])?.pop().flatten();
        Ok(states.map(|(oper, admin)| LinkState { index, name, oper, admin }))
    }
}

/// A Get reply's string; `None` if the link object is gone (removed between ListLinks and
/// Get), an error for any other failure or a value that is not a string.
fn string_property(
    reply: std::result::Result<Reply, BusError>,
    what: &'static str,
) -> Result<Option<String>> {
    match reply {
        Ok(reply) => {
            let value = reply.read("v", |body| match body.signature()? {
                "s" => body.string().map(str::to_owned),
                _ => None,
            });
            value.map(Some).map_err(call(what))
        }
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(call(what)(e)),
    }
}

/// networkd's answer to GetLinkByIndex for an index it does not know. systemd (v252 seen
/// live) shares sd-bus's error table with resolved and answers
/// `org.freedesktop.resolve1.NoSuchLink`; accept a network1 spelling too, should it be fixed.
fn is_no_such_link(e: &BusError) -> bool {
    matches!(e.name(), Some("org.freedesktop.resolve1.NoSuchLink" | "org.freedesktop.network1.NoSuchLink"))
}

/// Whether an error means the link object is gone (removed between ListLinks and Get).
fn is_gone(e: &BusError) -> bool {
    matches!(
        e.name(),
        Some(
            "org.freedesktop.DBus.Error.UnknownObject"
                | "org.freedesktop.DBus.Error.UnknownInterface"
                | "org.freedesktop.DBus.Error.UnknownProperty"
        )
    )
}
