//! Following networkd over the bus: connecting, resyncing when its owner changes (and
//! retrying a resync that failed), asking again what a lost message would have said
//! (`doubts`), reconnecting with backoff, and falling back to the kernel's own link state on
//! hosts without networkd (`Source`).

use super::doubts::contradicts;
use super::{Daemon, LinkView};
use crate::model::Want;
use crate::networkd::{self, escape, OwnerCheck};
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
pub(super) const BACKOFF: [Duration; 5] = [
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
                    log::warn!(
                        "networkd: link {index}: {:#}; reading its state again",
                        anyhow::Error::new(e)
                    );
                    self.doubts.loss_seen(Instant::now());
                    return false;
                }
                None => return false,
            },
        };
        if self.kernel_ready.get(&index).is_some_and(|ready| !contradicts(*ready, view)) {
            self.doubts.agrees(index);
        }
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
                Err(e) => {
                    log::warn!(
                        "networkd: link {index}: {:#}; reading its state again",
                        anyhow::Error::new(e)
                    );
                    self.doubts.loss_seen(Instant::now());
                }
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
                // attach read the state in full (or networkd is not there): a resync now.
                self.doubts = Default::default();
                self.doubts.resynced(Instant::now());
                match links {
                    Some(links) => self.follow(&links),
                    None => self.networkd_absent("no networkd on the bus"),
                }
            }
            Err(e) => {
                self.networkd_absent(&format!("cannot reach networkd ({:#})", anyhow::Error::new(e)));
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

    /// A new snapshot: networkd changed hands, a message may have been lost, or the last
    /// resync failed. The owner is asked first: a networkd that is gone is waited for (its
    /// NameOwnerChanged, or the next signal in doubt), not retried. A resync that fails
    /// (a reply lost or late, the bus at a limit) keeps the last known state, which the
    /// signals keep patching, and is retried with backoff.
    pub(super) fn resync(&mut self) {
        self.kernel = None;
        let own = self.own_links();
        let Some(bus) = self.bus.as_ref() else { return };
        let now = Instant::now();
        let read = bus.recheck_owner().and_then(|check| match check.owner {
            Some(_) => bus.snapshot(own).map(Some),
            None => Ok(None),
        });
        match read {
            Ok(Some(links)) => {
                self.doubts.resynced(now);
                self.follow(&links);
            }
            Ok(None) => self.networkd_gone(),
            Err(e) => {
                let delay = self.doubts.resync_failed(now);
                let meanwhile = match self.links {
                    Some(_) => "following its last known state meanwhile",
                    None => "fans stay as they are",
                };
                log::warn!("networkd: {:#}; {meanwhile}; trying again in {delay:?}", anyhow::Error::new(e));
            }
        }
    }

    /// networkd left the bus: fans stay as they are until it is back.
    pub(super) fn networkd_gone(&mut self) {
        if !self.following_kernel {
            log::warn!("networkd left the bus; fans stay as they are until it is back");
        }
        self.links = None;
        self.doubts.networkd_gone(Instant::now());
    }

    /// Asks again whatever is due in `doubts`; says whether networkd's view changed.
    pub(super) fn ask_again(&mut self) -> bool {
        let now = Instant::now();
        let mut changed = false;
        if self.doubts.take_owner_check(now) {
            changed |= self.check_owner();
        }
        if self.doubts.take_resync(now) {
            self.resync();
            changed = true;
        }
        for (index, round) in self.doubts.take_links(now) {
            changed |= self.read_link_again(index, round);
        }
        changed && self.wants_change()
    }

    /// A signal claimed networkd's paths from a sender that is not the owner fanlink knows:
    /// the bus says whose it is. Only its answer is trusted; the signal stays dropped.
    fn check_owner(&mut self) -> bool {
        let Some(bus) = self.bus.as_ref() else { return false };
        match bus.recheck_owner() {
            Ok(OwnerCheck { changed: false, .. }) => {
                log::debug!("a signal claimed to be networkd's; the bus says networkd's owner is unchanged");
                false
            }
            Ok(OwnerCheck { owner: Some(owner), .. }) => {
                log::warn!(
                    "networkd's name is owned by {} now, and that change never reached fanlink; following it",
                    escape(&owner)
                );
                self.resync();
                true
            }
            Ok(OwnerCheck { owner: None, .. }) => {
                self.networkd_gone();
                false
            }
            Err(e) => {
                log::warn!("networkd: {:#}; reading its state again", anyhow::Error::new(e));
                self.doubts.loss_seen(Instant::now());
                false
            }
        }
    }

    /// After kernel events: each candidate underlay link (an address in a rule's underlay,
    /// or the underlay of a fan that is up) whose readiness just changed in the kernel and
    /// now contradicts networkd's view is read again once networkd had its time to say so
    /// (`Doubts`): its signal may have been lost. Nothing is asked here.
    pub(super) fn kernel_changed(&mut self) {
        let (Some(snap), Some(links), false) = (&self.kernel, &self.links, self.following_kernel) else {
            return;
        };
        let underlays: Vec<_> = self.rules.iter().map(|r| r.map.underlay()).collect();
        let up: Vec<&str> = self
            .decisions
            .iter()
            .filter_map(|d| match &d.want {
                Want::Up(u) => Some(u.link.as_str()),
                _ => None,
            })
            .collect();
        // The links with an address in an underlay, in one pass (not one per link: a container
        // host has hundreds of links, and this runs on every kernel event).
        let in_underlay: std::collections::BTreeSet<u32> = snap
            .addresses
            .iter()
            .filter(|a| underlays.iter().any(|u| u.contains(&a.address.addr())))
            .map(|a| a.index)
            .collect();
        let now = Instant::now();
        for link in &snap.links {
            let addressed = in_underlay.contains(&link.index);
            if !addressed && !up.contains(&link.name.as_str()) {
                continue;
            }
            let ready = link.up && link.carrier && addressed;
            let changed = self.kernel_ready.insert(link.index, ready) != Some(ready);
            match links.get(&link.index) {
                Some(view) if contradicts(ready, *view) => {
                    if changed {
                        self.doubts.kernel_contradicts(link.index, now);
                    }
                }
                _ => self.doubts.agrees(link.index),
            }
        }
    }

    /// Reads link `index`'s state from networkd again, if the kernel still contradicts what
    /// fanlink last heard; says whether the view changed (a signal was lost, or is late).
    fn read_link_again(&mut self, index: u32, round: usize) -> bool {
        let ready = self.kernel_ready.get(&index).copied();
        let view = self.links.as_ref().and_then(|links| links.get(&index)).copied();
        let (Some(ready), Some(view), Some(bus)) = (ready, view, self.bus.as_ref()) else { return false };
        if !contradicts(ready, view) {
            return false;
        }
        let now = Instant::now();
        match bus.link_state(index) {
            Ok(Some((oper, admin))) => {
                let read = LinkView { oper, admin };
                if contradicts(ready, read) {
                    self.doubts.still_contradicts(index, round, now);
                }
                if read == view {
                    log::debug!("networkd: link {index} is still {oper}, whatever the kernel says");
                    return false;
                }
                log::info!(
                    "networkd: link {index} is {oper}/{admin}, not {}/{}: its signal was lost or late (read again as the kernel's events disagreed)",
                    view.oper,
                    view.admin
                );
                self.links.as_mut().map(|links| links.insert(index, read));
                true
            }
            // networkd does not know the link (any more): its linger signal says so.
            Ok(None) => false,
            Err(e) => {
                log::warn!("networkd: link {index}: {:#}; reading its state again", anyhow::Error::new(e));
                self.doubts.loss_seen(now);
                false
            }
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
        // A resync for a lost message is routine, and a forger can cause one a second.
        let level = if self.links.is_some() { log::Level::Debug } else { log::Level::Info };
        log::log!(level, "networkd is on the bus; {} link(s)", links.len());
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
