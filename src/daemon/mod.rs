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
mod reconcile;
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
    /// Reconciles and their requests so far, for `status`.
    counters: crate::status::Counters,
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
        counters: Default::default(),
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
                let took = started.elapsed().as_micros();
                log::debug!("event to last ack: {took} us, {requests} netlink request(s)");
                self.counters.reconciles += 1;
                self.counters.netlink_requests += requests;
                self.counters.last_reconcile_us = took as u64;
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
                self.forget_gone(&events);
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
