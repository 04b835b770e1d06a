//! `fanlink run`: follows systemd-networkd and keeps every fan right.
//!
//! One worker thread owns all state and does all work; sources (`sources`, and the bus
//! reader in `networkd`) only send it `Event`s. Start-up: subscribe to the bus first, then
//! read networkd's full state, then reconcile, then `READY=1`; after that every event
//! (a link state, a kernel change, a reload) ends in one reconcile: observe the kernel,
//! `decide`, `plan`, apply. A burst of events is drained first and reconciled once.

mod decide;
mod sources;

pub use decide::{decide, decide_all, Decision, LinkView};
pub use sources::control_path;

use crate::config::{self, Rule};
use crate::datapath::nft;
use crate::model::Want;
use crate::networkd::{self, BusEvent};
use crate::notify::Notifier;
use crate::plan::{plan, plan_absent, FanPlan};
use crate::status::{self, Status};
use crate::system::System;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// What wakes the worker.
pub enum Event {
    Bus(BusEvent),
    /// Links or addresses changed in the kernel.
    Kernel,
    /// SIGHUP: read the rules again.
    Reload,
    /// SIGTERM/SIGINT: exit, leaving the fans as they are.
    Stop,
    /// `fanlink status` asks; the JSON goes back on the sender.
    Status(Sender<String>),
}

impl From<BusEvent> for Event {
    fn from(e: BusEvent) -> Event {
        Event::Bus(e)
    }
}

pub struct Options {
    pub rule_dirs: Vec<PathBuf>,
    pub runtime_dir: PathBuf,
}

/// Reconnect delays after the bus goes away: quick at first, then at most every 5 s.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

struct Daemon {
    opts: Options,
    rules: Vec<Rule>,
    /// Whether the rules in force loaded without errors (see `decide_all`).
    rules_sound: bool,
    sys: System,
    /// The bus connection; `None` while disconnected.
    bus: Option<networkd::Attached>,
    /// networkd's view of each link; `None` while networkd or the bus is gone: then fans
    /// stay as they are.
    links: Option<HashMap<u32, LinkView>>,
    /// fanlink's NAT tables, re-read only after fanlink changed them (`nft` is a process).
    nat: Option<Vec<nft::NatTable>>,
    decisions: Vec<Decision>,
    reconnect_at: Option<Instant>,
    failures: usize,
    notifier: Notifier,
    tx: Sender<Event>,
}

/// Runs until SIGTERM or SIGINT. Fans are left as they are on exit.
pub fn run(opts: Options) -> anyhow::Result<()> {
    // Before any thread exists, so that every thread inherits the mask and only the
    // signal thread receives these.
    sources::handled_signals().thread_block()?;
    let (tx, rx) = mpsc::channel();
    sources::spawn_signals(tx.clone())?;
    sources::spawn_kernel_monitor(tx.clone())?;
    sources::spawn_control(&opts.runtime_dir, tx.clone())?;
    let (rules, errors) = config::load(&opts.rule_dirs);
    for e in &errors {
        log::error!("{e}");
    }
    let mut d = Daemon {
        opts,
        rules,
        rules_sound: errors.is_empty(),
        sys: System::open()?,
        bus: None,
        links: None,
        nat: None,
        decisions: Vec::new(),
        reconnect_at: None,
        failures: 0,
        notifier: Notifier::from_env(),
        tx,
    };
    d.connect();
    d.reconcile();
    d.notifier.ready(&d.summary());
    log::info!("running: {}", d.summary());
    d.serve(rx);
    d.notifier.stopping();
    log::info!("stopping; fans stay as they are");
    Ok(())
}

impl Daemon {
    fn serve(&mut self, rx: Receiver<Event>) {
        loop {
            let first = match self.reconnect_at {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(e) => Some(e),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(e) => Some(e),
                    Err(_) => return,
                },
            };
            let started = Instant::now();
            let mut dirty = first.is_none();
            if first.is_none() {
                self.connect();
            }
            // Drain the burst: one reconcile for all of it.
            for event in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                match event {
                    Event::Stop => return,
                    Event::Status(reply) => {
                        let _ = reply.send(self.status_json());
                    }
                    other => dirty |= self.handle(other),
                }
            }
            if dirty {
                self.reconcile();
                log::debug!("event to last ack: {} us", started.elapsed().as_micros());
            }
        }
    }

    /// Updates state from one event; says whether a reconcile is due.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Kernel => true,
            Event::Reload => {
                self.reload();
                true
            }
            Event::Bus(BusEvent::LinkChanged { index, oper, admin }) => self.link_changed(index, oper, admin),
            Event::Bus(BusEvent::OwnerChanged { new_owner: None }) => {
                log::warn!("networkd left the bus; fans stay as they are until it is back");
                self.links = None;
                false
            }
            Event::Bus(BusEvent::OwnerChanged { new_owner: Some(_) }) => {
                log::info!("networkd is on the bus; reading its state");
                self.resync();
                true
            }
            Event::Bus(BusEvent::Disconnected) => {
                log::warn!("lost the system bus; fans stay as they are; reconnecting");
                self.bus = None;
                self.links = None;
                self.schedule_reconnect();
                false
            }
            Event::Stop | Event::Status(_) => false,
        }
    }

    fn link_changed(
        &mut self,
        index: u32,
        oper: Option<networkd::OperState>,
        admin: Option<networkd::AdminState>,
    ) -> bool {
        let Some(links) = self.links.as_mut() else { return false };
        let view = match links.get(&index) {
            Some(v) => LinkView { oper: oper.unwrap_or(v.oper), admin: admin.unwrap_or(v.admin) },
            // A link networkd just started reporting: its signal carries only what changed.
            None => match self.bus.as_ref().map(|b| b.networkd.link(index)) {
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

    fn connect(&mut self) {
        self.reconnect_at = None;
        match networkd::attach(None, self.tx.clone()) {
            Ok(attached) => {
                log::info!("networkd is on the bus; {} link(s)", attached.links.len());
                self.links = Some(attached.links.iter().map(|l| (l.index, view(l))).collect());
                self.bus = Some(attached);
                self.failures = 0;
            }
            Err(e) => {
                log::warn!("networkd: {e}; fans stay as they are");
                self.schedule_reconnect();
            }
        }
    }

    fn resync(&mut self) {
        match self.bus.as_ref().map(|b| b.networkd.snapshot()) {
            Some(Ok(links)) => self.links = Some(links.iter().map(|l| (l.index, view(l))).collect()),
            Some(Err(e)) => {
                log::warn!("networkd: {e}");
                self.links = None;
            }
            None => {}
        }
    }

    fn schedule_reconnect(&mut self) {
        let delay = BACKOFF[self.failures.min(BACKOFF.len() - 1)];
        self.failures += 1;
        self.reconnect_at = Some(Instant::now() + delay);
    }

    /// A reload whose rules have errors changes nothing: every error is logged.
    fn reload(&mut self) {
        self.notifier.reloading();
        let (rules, errors) = config::load(&self.opts.rule_dirs);
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
        let Some(links) = self.links.clone() else { return };
        let result = (|| -> anyhow::Result<()> {
            let snap = self.sys.snapshot()?;
            let kernel_fans = snap.fan_names(&[]);
            let decisions =
                decide_all(&self.rules, &kernel_fans, &snap.host_links(), &links, self.rules_sound);
            let fans = decisions.iter().map(|d| d.fan.clone()).collect();
            let nat = match self.nat.take() {
                Some(nat) => nat,
                None => nft::list().unwrap_or_else(|e| {
                    log::debug!("nft: {e}");
                    Vec::new()
                }),
            };
            let observed = self.sys.observe(&snap, &fans, &nat)?;
            self.nat = Some(nat);
            for (decision, fan_plan) in decisions.iter().zip(self.plans(&decisions, &observed)) {
                self.log_decision(decision);
                match fan_plan.result {
                    Ok(ops) => {
                        for op in &ops {
                            log::info!("{}: {op}", decision.fan);
                            if matches!(
                                op,
                                crate::model::Op::WriteNat { .. } | crate::model::Op::DeleteNat { .. }
                            ) {
                                self.nat = None;
                            }
                            if let Err(e) = self.sys.apply(op) {
                                log::error!("{}: {op}: {e}", decision.fan);
                                break;
                            }
                        }
                    }
                    Err(e) => log::error!("{}: {e}", decision.fan),
                }
            }
            self.decisions = decisions;
            Ok(())
        })();
        if let Err(e) = result {
            log::error!("reconcile: {e:#}");
        }
        self.notifier.status(&self.summary());
    }

    fn plans(&self, decisions: &[Decision], observed: &crate::model::Observed) -> Vec<FanPlan> {
        decisions
            .iter()
            .map(|d| match self.rules.iter().find(|r| r.name == d.fan) {
                Some(rule) => plan(&[(rule.clone(), d.want.clone())], observed).remove(0),
                None => {
                    let seen = observed.fans.get(&d.fan).cloned().unwrap_or_default();
                    FanPlan { fan: d.fan.clone(), result: plan_absent(&d.fan, &seen) }
                }
            })
            .collect()
    }

    /// One line per change of mind, saying why.
    fn log_decision(&self, d: &Decision) {
        let before = self.decisions.iter().find(|p| p.fan == d.fan);
        if before.is_none_or(|b| b.want != d.want || b.why != d.why) {
            log::info!("{}: {}: {}", d.fan, want_word(&d.want), d.why);
        }
    }

    /// "2 fans: fan-250 up on ens3, fan-240 down (waiting: ...)".
    fn summary(&self) -> String {
        if self.links.is_none() {
            return format!("{} fan(s); networkd not reachable, fans left as they are", self.rules.len());
        }
        let parts: Vec<String> = self
            .decisions
            .iter()
            .map(|d| match &d.want {
                Want::Up(u) => format!("{} up on {}", d.fan, u.link),
                other => format!("{} {} ({})", d.fan, want_word(other), d.why),
            })
            .collect();
        format!("{} fan(s): {}", self.decisions.len(), parts.join(", "))
    }

    fn status_json(&mut self) -> String {
        let status =
            self.status().unwrap_or_else(|e| Status { source: format!("daemon: {e:#}"), fans: Vec::new() });
        serde_json::to_string(&status).unwrap_or_default() + "\n"
    }

    fn status(&mut self) -> anyhow::Result<Status> {
        let snap = self.sys.snapshot()?;
        let fans = self.decisions.iter().map(|d| d.fan.clone()).collect();
        let nat = nft::list().unwrap_or_default();
        let observed = self.sys.observe(&snap, &fans, &nat)?;
        let plans = self.plans(&self.decisions, &observed);
        let decided: Vec<_> = self
            .decisions
            .iter()
            .map(|d| (self.rules.iter().find(|r| r.name == d.fan), d.want.clone(), d.why.clone()))
            .collect();
        let source = match self.links {
            Some(_) => "daemon, following networkd",
            None => "daemon; networkd not reachable, fans left as they are",
        };
        let sys = &mut self.sys;
        Ok(status::collect(source, &decided, &observed, &plans, |seen| {
            seen.vxlan.as_ref().and_then(|v| sys.drops(v.index).ok().flatten())
        }))
    }
}

fn view(l: &networkd::LinkState) -> LinkView {
    LinkView { oper: l.oper, admin: l.admin }
}

pub fn want_word(want: &Want) -> &'static str {
    match want {
        Want::Up(_) => "up",
        Want::Down => "down",
        Want::Absent => "removed",
    }
}
