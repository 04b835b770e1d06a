//! What the daemon tells: its decisions in the log, its summary for systemd's STATUS=, and
//! `fanlink status` through the control socket.

use super::{want_word, Daemon, Decision};
use crate::datapath::nft;
use crate::model::Want;
use crate::status::{self, Status};

impl Daemon {
    /// One line per change of mind, saying why.
    pub(super) fn log_decision(&self, d: &Decision) {
        let before = self.decisions.iter().find(|p| p.fan == d.fan);
        if before.is_none_or(|b| b.want != d.want || b.why != d.why) {
            log::info!("{}: {}: {}", d.fan, want_word(&d.want), d.why);
        }
    }

    /// "2 fans: fan-250 up on ens3, fan-240 down (waiting: ...)".
    pub(super) fn summary(&self) -> String {
        if self.links.is_none() && !self.following_kernel {
            return format!("{} fan(s); networkd not reachable, fans left as they are", self.rules.len());
        }
        let parts: Vec<String> = self
            .decisions
            .iter()
            .map(|d| match (&d.want, self.fan_failures.get(&d.fan)) {
                (want, Some(f)) => format!("{} not {}: {}", d.fan, want_word(want), f.describe()),
                (Want::Up(u), None) => format!("{} up on {}", d.fan, u.link),
                (other, None) => format!("{} {} ({})", d.fan, want_word(other), d.why),
            })
            .collect();
        format!("{} fan(s): {}", self.decisions.len(), parts.join(", "))
    }

    pub(super) fn status_json(&mut self) -> String {
        let status = self.status().unwrap_or_else(|e| Status {
            source: format!("daemon: {e:#}"),
            fans: Vec::new(),
            daemon: None,
        });
        serde_json::to_string(&status).unwrap_or_default() + "\n"
    }

    pub(super) fn status(&mut self) -> anyhow::Result<Status> {
        // Read afresh: `status` shows the kernel as it is, not as the events told it.
        let mut snap = self.sys.snapshot()?;
        let fans = self.decisions.iter().map(|d| d.fan.clone()).collect();
        let nat = nft::list().unwrap_or_default();
        let observed = self.sys.observe(&mut snap, &fans, &nat)?;
        let plans = self.plans(&self.decisions, &observed);
        let decided: Vec<_> = self
            .decisions
            .iter()
            .map(|d| (self.rules.iter().find(|r| r.name == d.fan), d.want.clone(), d.why.clone()))
            .collect();
        let source = match (self.following_kernel, &self.links) {
            (true, _) => "daemon, following the kernel (no networkd)",
            (false, Some(_)) => "daemon, following networkd",
            (false, None) => "daemon; networkd not reachable, fans left as they are",
        };
        let sys = &mut self.sys;
        let mut status = status::collect(source, &decided, &observed, &plans, |seen| {
            seen.vxlan.as_ref().and_then(|v| sys.drops(v.index).ok().flatten())
        });
        for fan in &mut status.fans {
            fan.dhcp = fan.name.parse().ok().and_then(|name| self.dhcp.serving(&name));
            fan.error =
                fan.name.parse().ok().and_then(|name| self.fan_failures.get(&name)).map(|f| f.describe());
        }
        status.daemon = Some(status::Counters {
            networkd_links: self.links.as_ref().map_or(0, |l| l.len() as u64),
            bus_calls: crate::networkd::calls_made(),
            ..self.counters.clone()
        });
        Ok(status)
    }
}
