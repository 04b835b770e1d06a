//! The one way the tests start `fanlink run` (tests/daemon.rs, tests/faults.rs,
//! tests/dhcp.rs): in a network namespace, logging to a file, stopped on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fanlink");
/// Generous: the daemon reacts within milliseconds, but CI machines have 2 busy cores.
pub const SOON: Duration = Duration::from_secs(10);

/// How the tests start `fanlink run`: what differs between one daemon and the next.
pub struct Launch<'a> {
    pub ns: &'a str,
    /// `DBUS_SYSTEM_BUS_ADDRESS` for the daemon.
    pub bus: &'a str,
    pub rules: &'a Path,
    /// The test's directory: the log file, `--state-dir` DIR/state and, unless `runtime`
    /// says otherwise, `--runtime-dir` DIR/rt.
    pub dir: &'a Path,
    pub runtime: Option<&'a Path>,
    /// A command the daemon runs under (`unshare -m sh -c ...`), outside the namespace.
    pub wrapper: &'a [&'a str],
    /// A command it runs under inside the namespace (`setpriv ...`: `ip netns exec` itself
    /// needs the capabilities such a wrapper drops).
    pub inside: &'a [&'a str],
    /// More environment (`NOTIFY_SOCKET=...`, `RUST_LOG=debug`: later ones win).
    pub env: &'a [&'a str],
    /// After `run` (`--source kernel`).
    pub args: &'a [&'a str],
}

impl<'a> Launch<'a> {
    pub fn new(ns: &'a str, bus: &'a str, rules: &'a Path, dir: &'a Path) -> Launch<'a> {
        Launch { ns, bus, rules, dir, runtime: None, wrapper: &[], inside: &[], env: &[], args: &[] }
    }
}

/// `fanlink run` in a namespace (the child's PID is fanlink's: `ip netns exec` and `env`
/// exec), logging to a file. SIGKILLed on drop; fans stay, by design.
pub struct Daemon {
    pub child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn start(l: &Launch<'_>) -> Daemon {
        let log = l.dir.join(format!("fanlink-{}.log", crate::topology::unique("d")));
        let mut cmd = match l.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("ip");
                c
            }
            None => Command::new("ip"),
        };
        let child = cmd
            .args(["netns", "exec", l.ns])
            .args(l.inside)
            .arg("env")
            .arg(format!("DBUS_SYSTEM_BUS_ADDRESS={}", l.bus))
            .arg("RUST_LOG=info")
            .args(l.env)
            .args([BIN, "--rules-dir"])
            .arg(l.rules)
            .arg("--runtime-dir")
            .arg(l.runtime.map_or_else(|| l.dir.join("rt"), Path::to_path_buf))
            .arg("--state-dir")
            .arg(l.dir.join("state"))
            .arg("run")
            .args(l.args)
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        Daemon { child: crate::util::spawn(child), log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, text: &str) {
        wait_until(
            || format!("log line {text:?}; threads {}; log:\n{}", self.threads(), self.log()),
            || self.log().contains(text),
        );
    }

    pub fn signal_hup(&self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("the daemon is alive");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Each thread's name and what it waits in, for messages about a daemon that hangs.
    pub fn threads(&self) -> String {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).into_iter().flatten().flatten();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
        tasks
            .map(|t| format!("{}:{}", read(t.path().join("comm")), read(t.path().join("wchan"))))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// (VmRSS in kB, open fds).
    pub fn footprint(&self) -> (u64, usize) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap();
        let rss = rss.trim().trim_end_matches(" kB").trim().parse().unwrap();
        (rss, std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap().count())
    }
}

impl Drop for Daemon {
    /// SIGTERM first, so that the daemon stops the dnsmasq children it started (a SIGKILL
    /// would orphan them, holding their ports); SIGKILL if it has not exited soon after.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill9();
    }
}

/// Polls `ok` until it holds or [`SOON`] passes; then panics with `what()`, which is only
/// formatted then (so a log in it is the log at the deadline, not at the start).
pub fn wait_until(what: impl Fn() -> String, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out after {SOON:?} waiting for {}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}
