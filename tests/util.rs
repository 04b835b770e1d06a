//! Helpers shared by the integration tests: a real systemd-networkd on a private bus
//! (`tests/harness/networkd-harness.sh`) owned by a guard that tears it down even when the
//! test fails, and waiting on channels with deadlines instead of sleeps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/networkd-harness.sh");

/// One simulated host: netns + private dbus-daemon + networkd. Stopped on drop.
pub struct Harness {
    dir: PathBuf,
    env: HashMap<String, String>,
}

impl Harness {
    /// Starts an instance; `name` must be unique among concurrently running tests (the
    /// process id is appended, so parallel `cargo test` runs do not clash either).
    pub fn start(name: &str) -> Harness {
        Self::start_with(name, &[])
    }

    /// Like [`Harness::start`], with extra environment knobs (UPLINK_ADDR, SWITCH_NS, ...).
    pub fn start_with(name: &str, knobs: &[(&str, &str)]) -> Harness {
        let name = format!("fl{name}{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("fanlink-{name}"));
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(&dir)
            .env("NAME", &name)
            .envs(knobs.iter().copied())
            .output()
            .expect("cannot run bash");
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprint!("{stderr}");
        // The script cleans up after itself when start fails, so there is nothing to guard.
        assert!(out.status.success(), "harness start {name} failed ({}):\n{stderr}", out.status);
        eprintln!("[test] harness {name} up in {} ms", started.elapsed().as_millis());
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        Harness { dir, env }
    }

    /// A value the harness exported (`DBUS_SYSTEM_BUS_ADDRESS`, `HARNESS_NETNS`, ...).
    pub fn var(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| panic!("harness did not export {key}"))
    }

    /// The private bus, e.g. `unix:path=/tmp/fanlink-.../bus.sock`.
    pub fn bus(&self) -> &str {
        self.var("DBUS_SYSTEM_BUS_ADDRESS")
    }

    /// Runs a harness action (`carrier down`, `kill-networkd`, ...) and panics if it fails.
    pub fn run(&self, action: &str, args: &[&str]) {
        self.run_with(action, args, &[]);
    }

    /// Like [`Harness::run`], with environment knobs (e.g. `WAIT_ROUTABLE=0`).
    pub fn run_with(&self, action: &str, args: &[&str], knobs: &[(&str, &str)]) {
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg(action)
            .arg(&self.dir)
            .args(args)
            .envs(knobs.iter().copied())
            .output()
            .expect("cannot run bash");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "harness {action} {args:?} failed: {}", out.status);
    }

    /// Sends a signal from a fresh `busctl` connection on the harness bus: a forger.
    pub fn busctl(&self, args: &[&str]) {
        let out = output(Command::new("busctl").arg(format!("--address={}", self.bus())).args(args));
        assert!(out.status.success(), "busctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Captured and re-printed, so the test harness shows it only for failing tests.
        match Command::new("bash").arg(SCRIPT).arg("stop").arg(&self.dir).output() {
            Ok(out) if out.status.success() => eprint!("{}", String::from_utf8_lossy(&out.stderr)),
            other => eprintln!("[test] harness stop {} failed: {other:?}", self.dir.display()),
        }
    }
}

/// Polls `cond` every few milliseconds until it holds or `within` passes.
pub fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a program the tests need and waits for it. A program that is not installed fails the
/// test naming it and `tests/setup` (which installs every program the tests run).
pub fn output(cmd: &mut Command) -> Output {
    let out = cmd.output();
    started(cmd.get_program(), out)
}

/// Like [`output`], for a program that runs beside the test (a capture).
pub fn spawn(cmd: &mut Command) -> Child {
    let child = cmd.spawn();
    started(cmd.get_program(), child)
}

fn started<T>(program: &std::ffi::OsStr, result: std::io::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{}", start_error(program, &e)))
}

/// Why a program did not start, in words that say what to do.
pub fn start_error(program: &std::ffi::OsStr, e: &std::io::Error) -> String {
    let program = program.to_string_lossy();
    match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "`{program}` is not installed; tests/setup installs every program the tests run \
             (add its package there if it is missing)"
        ),
        _ => format!("cannot run `{program}`: {e}"),
    }
}
