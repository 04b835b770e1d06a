//! dnsmasq as a supervised child of the daemon: how fanlink serves DHCP where systemd does
//! not run it (by hand, in a container, in the tests). Under systemd each fan's dnsmasq is a
//! unit instead (`units`), so that it is not bound by fanlink's own sandbox.

use super::{args, DhcpConfig};
use crate::ifname::IfName;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pid_file(runtime_dir: &Path, fan: &IfName) -> PathBuf {
    runtime_dir.join(format!("dnsmasq-{fan}.pid"))
}

struct Running {
    child: Child,
    cfg: DhcpConfig,
    started: Instant,
}

/// The dnsmasq children, one per fan with `dhcp = true` that is up.
pub struct Children {
    running: HashMap<IfName, Running>,
    /// Fans whose dnsmasq died soon after starting, and when to try again.
    retry_at: HashMap<IfName, Instant>,
    state_dir: PathBuf,
    runtime_dir: PathBuf,
    /// Told the fan's name when its dnsmasq exits (its stderr closes).
    exited: Arc<dyn Fn(IfName) + Send + Sync>,
}

/// A dnsmasq that lives shorter than this is restarted only after the same time again, so
/// that a persistent error (a port in use) does not become a busy loop.
const QUICK_DEATH: Duration = Duration::from_secs(2);

impl Children {
    pub fn new(
        state_dir: PathBuf,
        runtime_dir: PathBuf,
        exited: Arc<dyn Fn(IfName) + Send + Sync>,
    ) -> Children {
        Children { running: HashMap::new(), retry_at: HashMap::new(), state_dir, runtime_dir, exited }
    }

    /// Makes dnsmasq run with `cfg`: started, or restarted if its configuration changed.
    pub fn ensure(&mut self, cfg: DhcpConfig) {
        if self.running.get(&cfg.fan).is_some_and(|r| r.cfg == cfg) {
            return;
        }
        if !self.may_start(&cfg.fan) {
            return;
        }
        self.stop(&cfg.fan);
        if let Err(e) = self.start(cfg.clone()) {
            log::error!("{}: cannot start dnsmasq: {e}", cfg.fan);
        }
    }

    /// Whether a fan's dnsmasq may be started now. A wait that has passed is forgotten here:
    /// kept, it would stay the daemon's next deadline, in the past, and wake it in a loop.
    fn may_start(&mut self, fan: &IfName) -> bool {
        match self.retry_at.get(fan) {
            Some(at) if Instant::now() < *at => false,
            Some(_) => {
                self.retry_at.remove(fan);
                true
            }
            None => true,
        }
    }

    fn start(&mut self, cfg: DhcpConfig) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        std::fs::create_dir_all(&self.runtime_dir)?;
        self.kill_stale(&cfg.fan);
        let (first, last) = cfg.range;
        let mut command = Command::new("dnsmasq");
        // The daemon blocks SIGTERM and SIGHUP in all its threads (the worker reads them from a
        // signalfd); a child inherits that mask and would never see our SIGTERM.
        // SAFETY: sigprocmask is async-signal-safe, and nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                nix::sys::signal::SigSet::all().thread_unblock().map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .args(args(&cfg, &self.state_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    std::io::Error::new(e.kind(), "dnsmasq is not installed; install dnsmasq-base")
                }
                _ => e,
            })?;
        log::info!("{}: dhcp: dnsmasq {} serving {first}-{last}, mtu {}", cfg.fan, child.id(), cfg.mtu);
        // dnsmasq writes none in --no-daemon mode; this one lets a restarted fanlink find it.
        if let Err(e) = std::fs::write(pid_file(&self.runtime_dir, &cfg.fan), format!("{}\n", child.id())) {
            log::warn!("{}: dhcp: cannot write its pid file: {e}", cfg.fan);
        }
        let stderr = child.stderr.take().expect("piped");
        let (fan, exited) = (cfg.fan.clone(), self.exited.clone());
        std::thread::Builder::new().name(format!("dnsmasq-{fan}")).spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log::info!("{fan}: dnsmasq: {}", line.escape_debug());
            }
            exited(fan);
        })?;
        self.running.insert(cfg.fan.clone(), Running { child, cfg, started: Instant::now() });
        Ok(())
    }

    /// A dnsmasq left by a fanlink that was killed holds the ports; its pid file names it.
    fn kill_stale(&self, fan: &IfName) {
        let path = pid_file(&self.runtime_dir, fan);
        let Some(pid) = std::fs::read_to_string(&path).ok().and_then(|p| p.trim().parse::<i32>().ok()) else {
            return;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "dnsmasq" {
            log::info!("{fan}: dhcp: stopping a dnsmasq left from before ({pid})");
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = std::fs::remove_file(path);
    }

    /// Stops the fan's dnsmasq, if it runs.
    pub fn stop(&mut self, fan: &IfName) {
        if let Some(mut r) = self.running.remove(fan) {
            let pid = nix::unistd::Pid::from_raw(r.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = r.child.wait();
            let _ = std::fs::remove_file(pid_file(&self.runtime_dir, fan));
            log::info!("{fan}: dhcp: dnsmasq stopped");
        }
    }

    /// Stops every dnsmasq but those of `keep`.
    pub fn retain(&mut self, keep: &[IfName]) {
        let gone: Vec<IfName> = self.running.keys().filter(|f| !keep.contains(f)).cloned().collect();
        for fan in gone {
            self.stop(&fan);
        }
        self.retry_at.retain(|fan, _| keep.contains(fan));
    }

    /// Called when a dnsmasq's output ended: reaps it; the next `ensure` restarts it.
    pub fn reap(&mut self, fan: &IfName) {
        let Some(mut r) = self.running.remove(fan) else { return };
        // Its stderr closes a moment before it can be waited for (the kernel closes a dying
        // process's files first), so wait rather than try: it is on its way out.
        match r.child.wait() {
            Ok(status) => log::warn!("{fan}: dhcp: dnsmasq exited ({status})"),
            Err(e) => log::warn!("{fan}: dhcp: dnsmasq exited ({e})"),
        }
        if r.started.elapsed() < QUICK_DEATH {
            self.retry_at.insert(fan.clone(), Instant::now() + QUICK_DEATH);
        }
    }

    /// When a quickly-dead dnsmasq may be tried again, if one waits.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retry_at.values().min().copied()
    }

    /// The pid serving a fan, for `status`.
    pub fn pid(&self, fan: &IfName) -> Option<u32> {
        self.running.get(fan).map(|r| r.child.id())
    }

    pub fn stop_all(&mut self) {
        self.retain(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_for_a_quickly_dead_dnsmasq_ends_and_is_forgotten() {
        let mut c = Children::new("/nonexistent".into(), "/nonexistent".into(), Arc::new(|_| {}));
        let (a, b): (IfName, IfName) = ("fan-250".parse().unwrap(), "fan-251".parse().unwrap());
        c.retry_at.insert(a.clone(), Instant::now() + Duration::from_secs(60));
        c.retry_at.insert(b.clone(), Instant::now() - Duration::from_secs(1));
        assert!(!c.may_start(&a), "still waiting");
        assert!(c.may_start(&b), "the wait has passed");
        // Not a deadline any more: a passed one would wake the daemon in a loop.
        assert!(c.next_retry().is_some_and(|at| at > Instant::now()));
        c.retain(&[]);
        assert_eq!(c.next_retry(), None, "a fan no longer served waits for nothing");
    }
}
