//! `fanlink run`: follows systemd-networkd and keeps every fan right.
//!
//! One worker thread owns all state and does all work, in one `poll` loop (`sources`): it
//! reads the kernel's sockets, the bus socket (`networkd`) and a signalfd itself; the control
//! socket and dhcp exits only send it `Event`s and wake it. Start-up: subscribe to the bus first, then
//! read networkd's full state, then reconcile, then `READY=1`; after that every event
//! that can change a plan (a link state, a kernel change, a reload) ends in one reconcile:
//! `decide`, `observe`, `plan`, apply. A burst of events is drained first and reconciled once.
//! The kernel's state is kept (`Snapshot`) and patched by the rtnetlink events, so a
//! reconcile reads nothing it already knows: a flap is one request and its ack.

mod decide;
mod doubts;
mod failures;
mod follow;
mod report;
mod settled;
mod sources;

pub use decide::{
    decide, decide_all, kernel_change_matters, kernel_views, view_can_matter, Decision, Interest, LinkView,
    Matters,
};
use doubts::Doubts;
use failures::Failures;
pub use follow::Source;
pub use sources::control_path;

use crate::config::Rule;
use crate::datapath::nft;
use crate::ifname::IfName;
use crate::model::Want;
use crate::networkd::BusEvent;
use crate::notify::Notifier;
use crate::plan::{plan, plan_absent_all, FanPlan};
use crate::system::System;
use sources::{Sources, Waker};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::Instant;

/// What wakes the worker.
pub enum Event {
    Bus(BusEvent),
    /// Links, addresses, tc filters or routes changed in the kernel (empty: events were lost).
    Kernel(Vec<crate::netlink::Event>),
    /// nftables changed (fanlink's NAT table, or a firewall that drops forwarding).
    Firewall,
    /// SIGHUP: read the rules again.
    Reload,
    /// SIGTERM/SIGINT: exit, leaving the fans as they are.
    Stop,
    /// `fanlink status` asks; the JSON goes back on the sender.
    Status(Sender<String>),
    /// The fan's dnsmasq exited.
    DhcpExited(crate::ifname::IfName),
}

impl From<BusEvent> for Event {
    fn from(e: BusEvent) -> Event {
        Event::Bus(e)
    }
}

pub struct Options {
    pub rule_dirs: Vec<PathBuf>,
    pub runtime_dir: PathBuf,
    /// Where dnsmasq keeps its leases.
    pub state_dir: PathBuf,
    pub source: Source,
}

struct Daemon {
    opts: Options,
    rules: Vec<Rule>,
    /// Whether the rules in force loaded without errors (see `decide_all`).
    rules_sound: bool,
    sys: System,
    /// The bus connection; `None` while disconnected.
    bus: Option<crate::networkd::Networkd>,
    /// Whether the kernel decides "routable" (no networkd); see `Source`.
    following_kernel: bool,
    /// networkd's view of each link; `None` while networkd or the bus is gone: then fans
    /// stay as they are.
    links: Option<HashMap<u32, LinkView>>,
    /// fanlink's NAT tables, re-read (one nf_tables dump) only when nftables may have changed.
    nat: Option<Vec<nft::NatTable>>,
    decisions: Vec<Decision>,
    /// The kernel as last dumped and patched by every event since; `None`: dump it again
    /// (at start, after lost events, a networkd resync, a failed op or a retry).
    kernel: Option<crate::snapshot::Snapshot>,
    /// What kernel changes can matter, as of the last reconcile.
    interest: Interest,
    /// networkd has been followed once: from then on its absence is a restart to wait out.
    ever_followed_networkd: bool,
    /// nftables changed since the accept rules were last ensured.
    firewall_changed: bool,
    reconnect_at: Option<Instant>,
    /// Bus reconnects that failed in a row (their backoff).
    failures: usize,
    /// Fans whose last plan or apply failed: retried with backoff, reported in the status.
    fan_failures: Failures,
    /// What to ask networkd or the bus again, in case a message was lost (`doubts`).
    doubts: Doubts,
    /// Whether each candidate underlay link is ready in the kernel's eyes (up, carrier, an
    /// underlay address), as of the last kernel events: a change that contradicts
    /// networkd's view makes fanlink read that link again.
    kernel_ready: HashMap<u32, bool>,
    notifier: Notifier,
    dhcp: crate::dhcp::Supervisor,
    waker: Waker,
}

/// Runs until SIGTERM or SIGINT. Fans are left as they are on exit.
pub fn run(opts: Options) -> anyhow::Result<()> {
    // A kernel below fanlink's minimum is refused before anything is touched.
    let mut sys = System::open()?;
    sys.check_kernel()?;
    log::info!("datapath: {}", sys.datapath()?.as_str());
    // Before any thread exists, so that every thread inherits the mask and the signals
    // reach only the worker's signalfd.
    sources::handled_signals().thread_block()?;
    let (mut sources, waker) = Sources::open()?;
    // Without its socket the daemon still does its job; only `fanlink status` falls back to
    // reading the kernel. A full or read-only runtime directory must not stop the fans.
    if let Err(e) = sources::spawn_control(&opts.runtime_dir, waker.clone()) {
        let path = sources::control_path(&opts.runtime_dir);
        log::error!("control socket {}: {e}; running without it (status reads the kernel)", path.display());
    }
    let (rules, errors) = settled::load(&opts.rule_dirs);
    for e in &errors {
        log::error!("{e}");
    }
    let opts_source_is_kernel = opts.source == Source::Kernel;
    let (d_state_dir, d_runtime_dir) = (opts.state_dir.clone(), opts.runtime_dir.clone());
    let mut d = Daemon {
        opts,
        rules,
        rules_sound: errors.is_empty(),
        sys,
        bus: None,
        following_kernel: opts_source_is_kernel,
        links: None,
        nat: None,
        decisions: Vec::new(),
        kernel: None,
        interest: Interest::default(),
        firewall_changed: false,
        ever_followed_networkd: false,
        reconnect_at: None,
        failures: 0,
        fan_failures: Failures::default(),
        doubts: Doubts::default(),
        kernel_ready: HashMap::new(),
        notifier: Notifier::from_env(),
        dhcp: {
            let waker = waker.clone();
            let exited = move |fan| {
                waker.send(Event::DhcpExited(fan));
            };
            crate::dhcp::Supervisor::new(d_state_dir, d_runtime_dir, std::sync::Arc::new(exited))
        },
        waker,
    };
    d.connect();
    d.reconcile();
    d.notifier.ready(&d.summary());
    log::info!("running: {}", d.summary());
    d.serve(&mut sources);
    d.notifier.stopping();
    d.dhcp.stop_all();
    log::info!("stopping; fans stay as they are");
    Ok(())
}

impl Daemon {
    fn serve(&mut self, sources: &mut Sources) {
        loop {
            let retries = [self.reconnect_at, self.dhcp.next_retry(), self.fan_failures.next_retry()];
            let wake = retries.into_iter().chain([self.doubts.next_due()]).flatten().min();
            // All that is ready at once: one reconcile for a burst.
            let events = sources.wait(wake, self.bus.as_ref());
            let started = Instant::now();
            // A doubt's timer alone is no retry: it reconciles only if what it reads changes.
            let retry_due = events.is_empty() && retries.into_iter().flatten().any(|at| at <= started);
            let mut dirty = retry_due;
            if retry_due && self.reconnect_at.is_some_and(|at| at <= started) {
                self.connect();
            }
            if retry_due {
                self.fan_failures.retrying(started);
                self.kernel = None;
            }
            for event in events {
                match event {
                    Event::Stop => return,
                    Event::Status(reply) => {
                        let _ = reply.send(self.status_json());
                    }
                    other => dirty |= self.handle(other),
                }
            }
            dirty |= self.ask_again();
            if sources.follow_routes(self.following_kernel) {
                if let Some(snap) = self.kernel.as_mut() {
                    snap.routes = None;
                }
            }
            if dirty {
                let sent = crate::netlink::requests_sent();
                self.reconcile();
                let requests = crate::netlink::requests_sent() - sent;
                log::debug!(
                    "event to last ack: {} us, {requests} netlink request(s)",
                    started.elapsed().as_micros()
                );
            }
        }
    }

    /// Updates state from one event; says whether a reconcile is due.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Kernel(events) => {
                match self.kernel.as_mut() {
                    // Lost events (ENOBUFS): read everything again.
                    Some(_) if events.is_empty() => self.kernel = None,
                    Some(snap) => events.iter().for_each(|e| snap.apply(e)),
                    None => {}
                }
                self.kernel_changed();
                match kernel_change_matters(&events, &self.interest) {
                    Matters::No => false,
                    Matters::Wants => self.wants_change(),
                    Matters::Plan => true,
                }
            }
            Event::Firewall => {
                self.nat = None;
                self.firewall_changed = true;
                true
            }
            Event::Reload => {
                self.reload();
                true
            }
            Event::Bus(BusEvent::LinkChanged { index, oper, admin }) => {
                // fanlink's own devices are never an underlay, so their views are not kept, and
                // a new one's is not asked for: that was three calls to networkd per device
                // created, each waiting for networkd while it configured that very device.
                let kept = self.kernel.as_ref().map_or(&[][..], |s| &s.links[..]);
                view_can_matter(kept, index) && self.link_changed(index, oper, admin) && self.wants_change()
            }
            Event::Bus(_) if self.opts.source == Source::Kernel => false,
            Event::Bus(BusEvent::OwnerInDoubt) => {
                self.doubts.owner_doubted(Instant::now());
                false
            }
            Event::Bus(BusEvent::Lost) => {
                log::debug!("messages from the bus may have been lost; reading networkd's state again");
                self.doubts.loss_seen(Instant::now());
                false
            }
            Event::Bus(BusEvent::OwnerChanged { new_owner: None }) => {
                self.networkd_gone();
                false
            }
            Event::Bus(BusEvent::OwnerChanged { new_owner: Some(_) }) => {
                log::info!("networkd is on the bus; reading its state");
                self.resync();
                true
            }
            Event::Bus(BusEvent::Disconnected) => {
                if !self.following_kernel {
                    log::warn!("lost the system bus; fans stay as they are; reconnecting");
                }
                self.bus = None;
                self.links = None;
                self.doubts = Doubts::default();
                self.schedule_reconnect();
                false
            }
            Event::DhcpExited(fan) => {
                self.dhcp.reap(&fan);
                true
            }
            Event::Stop | Event::Status(_) => false,
        }
    }

    /// A reload whose rules have errors (a file still being written among them) changes
    /// nothing: every error is logged.
    fn reload(&mut self) {
        self.notifier.reloading();
        let (rules, errors) = settled::load(&self.opts.rule_dirs);
        if errors.is_empty() {
            log::info!("reloaded the rules: {} fan(s)", rules.len());
            self.rules = rules;
            self.rules_sound = true;
        } else {
            for e in &errors {
                log::error!("{e}");
            }
            log::error!("reload refused: {} error(s) in the rules; running fans are untouched", errors.len());
        }
        self.notifier.ready(&self.summary());
    }

    /// Observe, decide, plan, apply. Errors are logged per fan and never fatal.
    fn reconcile(&mut self) {
        if !self.following_kernel && self.links.is_none() {
            return;
        }
        // The kept state may trail the kernel by events not read yet (a vxlan deleted by
        // `fanlink down --all` elsewhere, whose VNIs are then asked for): such a failure is a
        // race, not an error, and one read of the kernel settles it. Nothing was applied yet.
        let kept = self.kernel.is_some();
        let mut result = self.converge();
        if let (Err(e), true) = (&result, kept) {
            log::debug!("reconcile on the kept kernel state: {e:#}; reading the kernel again");
            self.kernel = None;
            result = self.converge();
        }
        if let Err(e) = result {
            log::error!("reconcile: {e:#}");
        }
        if self.notifier.is_active() {
            self.notifier.status(&self.summary());
        }
    }

    /// One pass of observe, decide, plan, apply. An `Err` comes from reading the kernel,
    /// before any op; a fan whose op fails is recorded in `fan_failures` instead.
    fn converge(&mut self) -> anyhow::Result<()> {
        let mut snap = match self.kernel.take() {
            Some(snap) => snap,
            None => self.sys.snapshot()?,
        };
        let links = match &self.links {
            Some(links) if !self.following_kernel => links.clone(),
            _ => {
                let routes = self.sys.routes(&mut snap)?;
                kernel_views(&snap.links, &routes)
            }
        };
        let kernel_fans = managed_fans(&snap);
        let decisions = decide_all(&self.rules, &kernel_fans, &snap.host_links(), &links, self.rules_sound);
        let fans = decisions.iter().map(|d| d.fan.clone()).collect();
        let nat = match self.nat.take() {
            Some(nat) => nat,
            None => nft::list().unwrap_or_else(|e| {
                log::debug!("nftables: {e}");
                Vec::new()
            }),
        };
        let observed = self.sys.observe(&mut snap, &fans, &nat)?;
        self.nat = Some(nat);
        // What the ops change comes back as events and is patched in.
        self.interest = self.interest(&decisions, &snap);
        self.kernel = Some(snap);
        let mut built = Vec::new();
        for (decision, fan_plan) in decisions.iter().zip(self.plans(&decisions, &observed)) {
            self.log_decision(decision);
            let applied = match fan_plan.result {
                Ok(ops) => self.apply_ops(&decision.fan, &ops),
                Err(e) => Err(("plan".to_string(), e.to_string())),
            };
            let has_bridge = matches!(decision.want, Want::Up(_) | Want::Down) && applied.is_ok();
            match applied {
                Ok(()) => {
                    built.push(decision.fan.clone());
                    if let Some(f) = self.fan_failures.succeeded(&decision.fan) {
                        log::info!("{}: recovered after {} failed attempt(s)", decision.fan, f.attempts);
                    }
                }
                Err((step, error)) => self.failed(&decision.fan, step, error),
            }
            // A firewall may have appeared (Docker's FORWARD DROP) since the bridge was
            // made; the accept rules are re-ensured, also for a fan that is down (its bridge
            // is there, and its next `up` reads no firewall).
            if self.firewall_changed && has_bridge {
                self.reensure_accept(&decision.fan);
            }
        }
        self.firewall_changed = false;
        self.fan_failures.retain(&decisions.iter().map(|d| d.fan.clone()).collect::<Vec<_>>());
        self.supervise_dhcp(&decisions, &built);
        self.decisions = decisions;
        Ok(())
    }

    /// Whether networkd's new view of the links changes what some fan should be. When it
    /// does not (a link passing through `carrier` or `degraded`, the fan bridge's own state),
    /// the new reasons are logged and no reconcile runs. A kernel change that came with the
    /// bus event wakes a reconcile of its own.
    fn wants_change(&mut self) -> bool {
        let (Some(snap), Some(links), false) = (&self.kernel, &self.links, self.following_kernel) else {
            return true;
        };
        let decisions =
            decide_all(&self.rules, &managed_fans(snap), &snap.host_links(), links, self.rules_sound);
        let same_wants = decisions.len() == self.decisions.len()
            && decisions
                .iter()
                .zip(&self.decisions)
                .all(|(new, old)| new.fan == old.fan && new.want == old.want);
        if !same_wants {
            return true;
        }
        for d in &decisions {
            self.log_decision(d);
        }
        self.decisions = decisions;
        if self.notifier.is_active() {
            self.notifier.status(&self.summary());
        }
        false
    }

    /// What the next kernel changes must touch to be worth a reconcile.
    fn interest(&self, decisions: &[Decision], snap: &crate::system::Snapshot) -> Interest {
        let index = |name: &str| snap.links.iter().find(|l| l.name == name).map(|l| l.index);
        let mut interest = Interest {
            underlays: self.rules.iter().map(|r| r.map.underlay()).collect(),
            following_kernel: self.following_kernel,
            ..Default::default()
        };
        // The shared datapath's vxlan: its steering filters (tc events) and its state.
        let shared = crate::model::SHARED_VXLAN;
        interest.vxlans.insert(shared.to_string(), index(shared));
        for d in decisions {
            interest.bridges.insert(d.fan.to_string(), matches!(d.want, Want::Up(_)));
            interest.bridge_indexes.extend(index(d.fan.as_str()));
            let vxlan = crate::config::vxlan_name_for(&d.fan).to_string();
            interest.vxlans.insert(vxlan.clone(), index(&vxlan));
            // The shared datapath's peer: it matters as the port does (deleted, or down).
            let peer = crate::plan::peer_name_for(&d.fan).to_string();
            interest.vxlans.insert(peer.clone(), index(&peer));
            if let Want::Up(u) = &d.want {
                let link_mtu = snap.links.iter().find(|l| l.name == u.link.as_str()).map(|l| l.mtu);
                interest.underlay_links.insert(u.link.to_string(), link_mtu.unwrap_or(0));
                interest.forwarding.extend(index(d.fan.as_str()).into_iter().chain(index(u.link.as_str())));
            }
        }
        interest
    }

    /// Applies one fan's ops in order, logging each; the first failure stops the rest (the
    /// next reconcile, or the retry timer, tries again). The error names the op that failed.
    fn apply_ops(
        &mut self,
        fan: &crate::ifname::IfName,
        ops: &[crate::model::Op],
    ) -> Result<(), (String, String)> {
        // A fan that keeps failing repeats its ops on every retry: those lines go to debug.
        let level = if self.fan_failures.get(fan).is_some() { log::Level::Debug } else { log::Level::Info };
        for op in ops {
            log::log!(level, "{fan}: {op}");
            if matches!(op, crate::model::Op::WriteNat { .. } | crate::model::Op::DeleteNat { .. }) {
                self.nat = None;
            }
            self.sys.apply(op).map_err(|e| (op.to_string(), e.to_string()))?;
            // Known now, whatever the netconf events still queued say (a write that changed
            // nothing sends none): a stale "off" would repeat the op on every reconcile.
            if let (crate::model::Op::EnableForwarding { link }, Some(snap)) = (op, self.kernel.as_mut()) {
                if let Some(index) = snap.link(link.as_str()).map(|l| l.index) {
                    snap.forwarding.insert(index, true);
                }
            }
        }
        Ok(())
    }

    /// Re-ensures the fan's accept rules after a firewall change. Docker rewrites its chains
    /// at start, dozens of nftables events in a few seconds, and each re-ensures: the op is
    /// logged at info only when it changed something (it was 51 lines for 4 inserts).
    fn reensure_accept(&mut self, fan: &crate::ifname::IfName) {
        let op = crate::model::Op::AcceptForwarding { fan: fan.clone() };
        match self.sys.accept_forwarding(fan) {
            Ok(true) => log::info!("{fan}: {op}"),
            Ok(false) => log::debug!("{fan}: {op}: in place"),
            Err(e) => self.failed(fan, op.to_string(), e.to_string()),
        }
    }

    /// Records a failed step; its error is logged in full once per cause, at error priority.
    /// The kept kernel state may be what misled the plan: it is read again next time.
    fn failed(&mut self, fan: &crate::ifname::IfName, step: String, error: String) {
        self.kernel = None;
        let line = format!("{fan}: {step}: {error}");
        if self.fan_failures.failed(fan, step, error, Instant::now()) {
            log::error!("{line}");
        } else {
            log::debug!("{line}");
        }
    }

    /// dnsmasq runs for each fan with `dhcp = true` that is up (its plan applied in full:
    /// `built`); every other one is stopped.
    fn supervise_dhcp(&mut self, decisions: &[Decision], built: &[crate::ifname::IfName]) {
        let mut keep = Vec::new();
        for d in decisions {
            let (Want::Up(underlay), Some(rule)) = (&d.want, self.rules.iter().find(|r| r.name == d.fan))
            else {
                continue;
            };
            if !rule.dhcp || !built.contains(&d.fan) {
                continue;
            }
            // The rule's check made sure every slice of the fan has a DHCP range.
            let (Ok(crate::addrplan::AddrPlan { dhcp: Some(range), .. }), Ok(bridge_address)) =
                (rule.addr_plan(underlay.address), rule.map.bridge_address(underlay.address))
            else {
                continue;
            };
            keep.push(d.fan.clone());
            let mtu = underlay.mtu;
            let lease = rule.dhcp_lease.clone().unwrap_or_else(|| "1h".into());
            let cfg = crate::dhcp::DhcpConfig { fan: d.fan.clone(), bridge_address, range, mtu, lease };
            self.dhcp.ensure(cfg, self.bus.as_ref().map(|b| b.connection()));
        }
        self.dhcp.retain(&keep, self.bus.as_ref().map(|b| b.connection()));
    }

    /// One `plan` for the fans with rules (the host's datapath is planned once), and the
    /// removal of the others; in the order of `decisions`.
    fn plans(&self, decisions: &[Decision], observed: &crate::model::Observed) -> Vec<FanPlan> {
        let rule = |fan: &crate::ifname::IfName| self.rules.iter().find(|r| &r.name == fan);
        let targets: Vec<_> =
            decisions.iter().filter_map(|d| Some((rule(&d.fan)?.clone(), d.want.clone()))).collect();
        let orphans: Vec<_> =
            decisions.iter().filter(|d| rule(&d.fan).is_none()).map(|d| d.fan.clone()).collect();
        let mut plans: std::collections::BTreeMap<_, _> = plan(&targets, observed)
            .into_iter()
            .chain(plan_absent_all(&orphans, observed))
            .map(|p| (p.fan.clone(), p))
            .collect();
        decisions.iter().filter_map(|d| plans.remove(&d.fan)).collect()
    }
}

/// fanlink's fans in the kernel; those made by hand have no rule by design: never orphans.
fn managed_fans(snap: &crate::system::Snapshot) -> BTreeSet<IfName> {
    snap.kernel_fans().into_iter().filter(|(_, by_hand)| !by_hand).map(|(f, _)| f).collect()
}

pub fn want_word(want: &Want) -> &'static str {
    match want {
        Want::Up(_) => "up",
        Want::Down => "down",
        Want::Absent => "removed",
        Want::Keep => "kept",
    }
}
