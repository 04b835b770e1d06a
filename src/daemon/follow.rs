//! Following networkd over the bus: connecting, resyncing when its owner changes,
//! reconnecting with backoff, and falling back to the kernel's own link state on hosts
//! without networkd (`Source`).

use super::{Daemon, LinkView};
use crate::networkd;
use std::time::{Duration, Instant};

/// Who says whether an underlay link is routable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// networkd if it is on the bus at start (or appears later), else the kernel.
    Auto,
    /// Only networkd; while it is gone, fans stay as they are.
    Networkd,
    /// Only the kernel: up, carrier, an address in the underlay and a route beyond it.
    Kernel,
}

/// Reconnect delays after the bus goes away: quick at first, then at most every 5 s (every
/// 30 s where the kernel is followed meanwhile: nothing waits on the bus then).
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

impl Daemon {
    pub(super) fn link_changed(
        &mut self,
        index: u32,
        oper: Option<networkd::OperState>,
        admin: Option<networkd::AdminState>,
    ) -> bool {
        let Some(links) = self.links.as_mut() else { return false };
        // networkd says a link is gone and the kernel agrees: its view is forgotten, or a
        // container host would keep one for every veth it ever had (the kernel's word may
        // come second: `forget_gone`). A gone link is never an underlay: nothing to decide.
        let in_kernel = self.kernel.as_ref().map(|s| s.links.iter().any(|l| l.index == index));
        if admin == Some(networkd::AdminState::Linger) && in_kernel == Some(false) {
            links.remove(&index);
            return false;
        }
        let view = match links.get(&index) {
            Some(v) => LinkView { oper: oper.unwrap_or(v.oper), admin: admin.unwrap_or(v.admin) },
            // A link networkd just started reporting: its signal carries only what changed, so
            // its whole view is asked for, but only if it can be an underlay: a container's veth
            // cost three round trips to networkd, and a view kept, for nothing. One that gets
            // an underlay address later is asked about then (`fill_views`).
            None if !could_be_underlay(&self.rules, self.kernel.as_ref(), index) => return false,
            None => match self.bus.as_ref().map(|b| b.link(index)) {
                Some(Ok(Some(l))) => LinkView { oper: l.oper, admin: l.admin },
                Some(Ok(None)) => return false,
                Some(Err(e)) => {
                    log::warn!("networkd: link {index}: {e}");
                    return false;
                }
                None => return false,
            },
        };
        links.insert(index, view) != Some(view)
    }

    /// Asks networkd about each rule's underlay link whose view is not kept (it had no
    /// underlay address when networkd first reported it: `link_changed`).
    pub(super) fn fill_views(&mut self, host: &[crate::underlay::HostLink]) {
        let (Some(links), Some(bus)) = (self.links.as_mut(), self.bus.as_ref()) else { return };
        for rule in &self.rules {
            let Ok(u) = crate::underlay::find(rule, host) else { continue };
            let Some(index) = host.iter().find(|l| l.name == u.link.as_str()).map(|l| l.index) else {
                continue;
            };
            if links.contains_key(&index) {
                continue;
            }
            match bus.link(index) {
                Ok(Some(l)) => {
                    links.insert(index, view(&l));
                }
                Ok(None) => {}
                Err(e) => log::warn!("networkd: link {index}: {e}"),
            }
        }
    }

    /// Forgets networkd's view of the links the kernel deleted once networkd said they
    /// are gone (`linger`): whichever of the two comes second does it.
    pub(super) fn forget_gone(&mut self, events: &[crate::netlink::Event]) {
        let Some(links) = self.links.as_mut() else { return };
        for e in events {
            if let crate::netlink::Event::DelLink { index, .. } = e {
                if links.get(index).is_some_and(|v| v.admin == networkd::AdminState::Linger) {
                    links.remove(index);
                }
            }
        }
    }

    /// Attaches to networkd (`networkd::attach`: events are kept from before any state is
    /// read). They reach the worker's channel as the worker reads the bus (`Sources::wait`,
    /// or a call made while handling an event), so they need no wakeup.
    /// With `Source::Auto`, a host where networkd is not on the bus at start follows the
    /// kernel until networkd appears.
    pub(super) fn connect(&mut self) {
        self.reconnect_at = None;
        if self.opts.source == Source::Kernel {
            return;
        }
        let own = self.own_links();
        match networkd::attach(None, self.waker.same_thread(), own) {
            Ok(networkd::Attached { networkd, links }) => {
                self.bus = Some(networkd);
                self.failures = 0;
                match links {
                    Some(links) => self.follow(&links),
                    None => self.networkd_absent("no networkd on the bus"),
                }
            }
            Err(e) => {
                self.networkd_absent(&format!("cannot reach networkd ({e})"));
                self.schedule_reconnect();
            }
        }
    }

    /// networkd is not there: the kernel decides where `Source::Auto` allows it and networkd
    /// was never followed (a networkd restart is not a host without networkd).
    fn networkd_absent(&mut self, why: &str) {
        if self.opts.source == Source::Auto && self.links.is_none() && !self.ever_followed_networkd {
            if !self.following_kernel {
                log::info!("{why}; following the kernel's link state until networkd appears");
            }
            self.following_kernel = true;
        } else {
            log::warn!("{why}; fans stay as they are");
        }
    }

    /// A new snapshot, when networkd changed hands.
    pub(super) fn resync(&mut self) {
        self.kernel = None;
        let own = self.own_links();
        match self.bus.as_ref().map(|b| b.snapshot(own)) {
            Some(Ok(links)) => self.follow(&links),
            Some(Err(e)) => {
                log::warn!("networkd: {e}");
                self.links = None;
            }
            None => {}
        }
    }

    /// Which links are fanlink's own devices (by the kernel's state, read now if it is not
    /// kept): never an underlay, so networkd is not asked about them.
    fn own_links(&mut self) -> impl Fn(u32) -> bool {
        if self.kernel.is_none() {
            // Failing here only means asking networkd about every link.
            self.kernel = self.sys.snapshot().inspect_err(|e| log::debug!("{e}")).ok();
        }
        let kept = self.kernel.as_ref().map_or(&[][..], |s| &s.links[..]);
        let own: Vec<u32> = kept
            .iter()
            .map(|l| l.index)
            .filter(|&index| !super::decide::view_can_matter(kept, index))
            .collect();
        move |index| own.contains(&index)
    }

    /// networkd's links are the truth from now on.
    fn follow(&mut self, links: &[networkd::LinkState]) {
        if self.following_kernel {
            log::info!("networkd appeared; following it from now on");
        }
        log::info!("networkd is on the bus; {} link(s)", links.len());
        self.links = Some(links.iter().map(|l| (l.index, view(l))).collect());
        self.following_kernel = false;
        self.ever_followed_networkd = true;
    }

    pub(super) fn schedule_reconnect(&mut self) {
        let backoff: &[Duration] = if self.following_kernel { &[Duration::from_secs(30)] } else { &BACKOFF };
        let delay = backoff[self.failures.min(backoff.len() - 1)];
        self.failures += 1;
        self.reconnect_at = Some(Instant::now() + delay);
    }
}

/// Whether link `index` has an address inside some rule's underlay (or the kernel's state is
/// not kept: then it may).
fn could_be_underlay(
    rules: &[crate::config::Rule],
    kernel: Option<&crate::snapshot::Snapshot>,
    index: u32,
) -> bool {
    let Some(snap) = kernel else { return true };
    snap.addresses
        .iter()
        .filter(|a| a.index == index)
        .any(|a| rules.iter().any(|r| r.map.underlay().contains(&a.address.addr())))
}

fn view(l: &networkd::LinkState) -> LinkView {
    LinkView { oper: l.oper, admin: l.admin }
}
