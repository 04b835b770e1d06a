//! DHCP on a fan's bridge (`dhcp = true`): dnsmasq as a supervised child of the daemon,
//! as LXD and `fanctl --dhcp` run it. It serves the host's part of its slice, tells clients
//! the fan MTU (option 26: VMs hang on TLS without it) and the bridge as their router,
//! listens on the bridge only, and reads no /etc/dnsmasq.conf. It follows the fan: started
//! when the fan comes up, stopped when it goes down, restarted if it dies, restarted with a
//! new range when the slice moves. Its log lines become fanlink's.

use crate::ifname::IfName;
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one fan's dnsmasq is started with; a change means a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    pub fan: IfName,
    /// The bridge's address with the overlay's prefix length, e.g. 250.3.4.1/8.
    pub bridge_address: Ipv4Net,
    /// This host's slice, e.g. 250.3.4.0/24.
    pub slice: Ipv4Net,
    pub mtu: u32,
}

/// The addresses handed out: `.2`-`.254` of the host's first /24 inside its slice, or the
/// whole slice but its network, bridge and broadcast addresses when the slice is narrower.
pub fn range(slice: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    let network = u32::from(slice.network());
    let last = if slice.prefix_len() <= 24 { network + 254 } else { u32::from(slice.broadcast()) - 1 };
    (Ipv4Addr::from(network + 2), Ipv4Addr::from(last))
}

/// dnsmasq's command line for one fan. `state_dir` keeps the lease file across restarts.
pub fn args(cfg: &DhcpConfig, state_dir: &Path) -> Vec<String> {
    let (first, last) = range(cfg.slice);
    let router = cfg.bridge_address.addr();
    vec![
        // Foreground, and no user or group change: the switch would need CAP_SETGID and
        // setgroups(2), which fanlink's unit does not grant; dnsmasq stays inside fanlink's
        // sandbox instead (capabilities, system calls, read-only file system).
        "--no-daemon".into(),
        // No /etc/dnsmasq.conf and no /etc/hosts: this instance is fanlink's alone.
        "--conf-file=/dev/null".into(),
        "--no-hosts".into(),
        format!("--interface={}", cfg.fan),
        "--except-interface=lo".into(),
        // Bound to the bridge's address only: no DNS or DHCP on any other interface, and no
        // clash with another resolver on the host.
        "--bind-dynamic".into(),
        format!("--dhcp-range={first},{last},{},1h", cfg.bridge_address.netmask()),
        format!("--dhcp-option=option:router,{router}"),
        format!("--dhcp-option=option:mtu,{}", cfg.mtu),
        "--dhcp-authoritative".into(),
        // The ICMP probe before an offer needs a raw socket, and only delays the offer.
        "--no-ping".into(),
        format!("--dhcp-leasefile={}", state_dir.join(format!("{}.leases", cfg.fan)).display()),
        "--log-facility=-".into(),
        "--log-dhcp".into(),
    ]
}

fn pid_file(runtime_dir: &Path, fan: &IfName) -> PathBuf {
    runtime_dir.join(format!("dnsmasq-{fan}.pid"))
}

struct Running {
    child: Child,
    cfg: DhcpConfig,
    started: Instant,
}

/// The dnsmasq children, one per fan with `dhcp = true` that is up.
pub struct Supervisor {
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

impl Supervisor {
    pub fn new(
        state_dir: PathBuf,
        runtime_dir: PathBuf,
        exited: Arc<dyn Fn(IfName) + Send + Sync>,
    ) -> Supervisor {
        Supervisor { running: HashMap::new(), retry_at: HashMap::new(), state_dir, runtime_dir, exited }
    }

    /// Makes dnsmasq run with `cfg`: started, or restarted if its configuration changed.
    pub fn ensure(&mut self, cfg: DhcpConfig) {
        if self.running.get(&cfg.fan).is_some_and(|r| r.cfg == cfg) {
            return;
        }
        if self.retry_at.get(&cfg.fan).is_some_and(|at| Instant::now() < *at) {
            return;
        }
        self.stop(&cfg.fan);
        if let Err(e) = self.start(cfg.clone()) {
            log::error!("{}: cannot start dnsmasq: {e}", cfg.fan);
        }
    }

    fn start(&mut self, cfg: DhcpConfig) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        std::fs::create_dir_all(&self.runtime_dir)?;
        self.kill_stale(&cfg.fan);
        let (first, last) = range(cfg.slice);
        let mut command = Command::new("dnsmasq");
        // The daemon blocks SIGTERM and SIGHUP in all its threads (one thread takes them with
        // sigwait); a child inherits that mask and would never see our SIGTERM.
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
    fn the_range_is_the_hosts_24_or_the_whole_narrower_slice() {
        let r = |s: &str| {
            let (a, b) = range(s.parse().unwrap());
            format!("{a}-{b}")
        };
        assert_eq!(r("250.3.4.0/24"), "250.3.4.2-250.3.4.254");
        assert_eq!(r("250.178.0.0/16"), "250.178.0.2-250.178.0.254");
        assert_eq!(r("100.66.128.0/26"), "100.66.128.2-100.66.128.62");
        assert_eq!(r("240.0.0.4/30"), "240.0.0.6-240.0.0.6");
    }

    #[test]
    fn dnsmasq_is_bound_to_the_bridge_and_tells_the_mtu() {
        let cfg = DhcpConfig {
            fan: "fan-250".parse().unwrap(),
            bridge_address: "250.3.4.1/8".parse().unwrap(),
            slice: "250.3.4.0/24".parse().unwrap(),
            mtu: 1450,
        };
        let args = args(&cfg, Path::new("/var/lib/fanlink")).join(" ");
        for want in [
            "--conf-file=/dev/null",
            "--interface=fan-250 --except-interface=lo --bind-dynamic",
            "--dhcp-range=250.3.4.2,250.3.4.254,255.0.0.0,1h",
            "--dhcp-option=option:router,250.3.4.1",
            "--dhcp-option=option:mtu,1450",
            "--dhcp-authoritative",
            "--no-daemon",
            "--dhcp-leasefile=/var/lib/fanlink/fan-250.leases",
        ] {
            assert!(args.contains(want), "{want} in {args}");
        }
    }
}
