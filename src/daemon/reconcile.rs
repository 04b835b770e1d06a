//! One reconcile: observe the kernel (the kept snapshot), decide per fan, plan, apply, and
//! keep each fan's DHCP server and failures in step with what was applied.

use super::*;

impl Daemon {
    /// Observe, decide, plan, apply. Errors are logged per fan and never fatal.
    pub(super) fn reconcile(&mut self) {
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
    pub(super) fn converge(&mut self) -> anyhow::Result<()> {
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
        let host = snap.host_links();
        let links = if self.following_kernel {
            links
        } else {
            self.fill_views(&host);
            self.links.clone().unwrap_or(links)
        };
        let decisions = decide_all(&self.rules, &kernel_fans, &host, &links, self.rules_sound);
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
    pub(super) fn wants_change(&mut self) -> bool {
        let (Some(snap), Some(_), false) = (&self.kernel, &self.links, self.following_kernel) else {
            return true;
        };
        let (host, fans) = (snap.host_links(), managed_fans(snap));
        self.fill_views(&host);
        let Some(links) = &self.links else { return true };
        let decisions = decide_all(&self.rules, &fans, &host, links, self.rules_sound);
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
    pub(super) fn interest(&self, decisions: &[Decision], snap: &crate::system::Snapshot) -> Interest {
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
    pub(super) fn apply_ops(
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
    pub(super) fn reensure_accept(&mut self, fan: &crate::ifname::IfName) {
        let op = crate::model::Op::AcceptForwarding { fan: fan.clone() };
        match self.sys.accept_forwarding(fan) {
            Ok(true) => log::info!("{fan}: {op}"),
            Ok(false) => log::debug!("{fan}: {op}: in place"),
            Err(e) => self.failed(fan, op.to_string(), e.to_string()),
        }
    }

    /// Records a failed step; its error is logged in full once per cause, at error priority.
    /// The kept kernel state may be what misled the plan: it is read again next time.
    pub(super) fn failed(&mut self, fan: &crate::ifname::IfName, step: String, error: String) {
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
    pub(super) fn supervise_dhcp(&mut self, decisions: &[Decision], built: &[crate::ifname::IfName]) {
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
    pub(super) fn plans(&self, decisions: &[Decision], observed: &crate::model::Observed) -> Vec<FanPlan> {
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
