//! Simulated hosts for kernel tests: named network namespaces on a switch namespace, with
//! container namespaces behind a host's fan bridge. Everything is removed on drop, also when
//! a test fails; traffic stays between the namespaces made here.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A short name unique to this process and call, for namespaces and interfaces.
pub fn unique(tag: &str) -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::SeqCst);
    format!("{tag}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command line through `sh -c`, inside `ns` when given.
pub fn sh(ns: Option<&str>, command: &str) -> Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "sh", "-c", command]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", command]);
            c
        }
    };
    cmd.env_remove("RUST_LOG").output().expect("sh runs")
}

/// Like `sh`, but the command must succeed; returns its stdout.
pub fn run(ns: Option<&str>, command: &str) -> String {
    let out = sh(ns, command);
    assert!(
        out.status.success(),
        "`{command}` in {ns:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `ok` to hold, up to `limit`; panics with `what` otherwise.
pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A named network namespace, deleted on drop (which also deletes its devices).
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run(None, &format!("ip netns add {name}"));
        let ns = Netns(name);
        ns.run("ip link set lo up");
        ns
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn run(&self, command: &str) -> String {
        run(Some(&self.0), command)
    }

    pub fn sh(&self, command: &str) -> Output {
        sh(Some(&self.0), command)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A background process, killed on drop. Its output is read as it comes, so a test can wait
/// for a line instead of stopping the process early (a tcpdump that stops drops what it has
/// not read yet, and under load it reads late).
pub struct Background {
    child: Option<Child>,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Background {
    pub fn spawn(ns: &Netns, command: &str) -> Background {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sh", "-c", &format!("exec {command} 2>&1")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawns");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (stdout, sink) = (child.stdout.take().expect("piped"), output.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Background { child: Some(child), output }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until its output contains each of `needles`.
    pub fn wait_for_output(&self, needles: &[&str]) {
        wait_for(&format!("{needles:?} in the output"), Duration::from_secs(10), || {
            let out = self.output();
            needles.iter().all(|n| out.contains(n))
        });
    }

    /// Stops the process (SIGINT, so tcpdump flushes) and returns what it printed.
    pub fn finish(mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let _ = child.wait();
        }
        // The reader ends at EOF, right after the process.
        wait_for("the output to end", Duration::from_secs(5), || {
            std::sync::Arc::strong_count(&self.output) == 1
        });
        self.output()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The underlay: a switch namespace with bridge `sw-br`, and hosts plugged into it.
pub struct Switch {
    pub ns: Netns,
}

impl Switch {
    pub fn new() -> Switch {
        let ns = Netns::new("flsw");
        ns.run("ip link add sw-br type bridge && ip link set sw-br up");
        Switch { ns }
    }

    /// A host namespace with `uplink0` at `address` (e.g. "10.99.1.1/16") on the switch.
    /// The switch side is `port`, returned for captures.
    pub fn host(&self, address: &str) -> Host {
        let ns = Netns::new("flh");
        let port = unique("p");
        run(
            None,
            &format!(
                "ip link add uplink0 netns {h} type veth peer name {port} netns {s} && \
                 ip -n {s} link set {port} master sw-br up && \
                 ip -n {h} addr add {address} dev uplink0 && ip -n {h} link set uplink0 up",
                h = ns.name(),
                s = self.ns.name()
            ),
        );
        Host { ns, port }
    }
}

pub struct Host {
    pub ns: Netns,
    /// The host's port on the switch, where captures see its underlay traffic.
    pub port: String,
}

impl Host {
    /// A container namespace on `bridge` with `address` (e.g. "250.1.1.10/8"), default
    /// route via `gateway`, every MTU at `mtu`.
    pub fn container(&self, bridge: &str, address: &str, gateway: &str, mtu: u32) -> Netns {
        let c = Netns::new("flc");
        let veth = unique("v");
        run(
            None,
            &format!(
                "ip link add {veth} netns {h} mtu {mtu} type veth peer name eth0 netns {c} mtu {mtu} && \
                 ip -n {h} link set {veth} master {bridge} up && \
                 ip -n {c} addr add {address} dev eth0 && ip -n {c} link set eth0 up && \
                 ip -n {c} route add default via {gateway}",
                h = self.ns.name(),
                c = c.name()
            ),
        );
        c
    }
}

/// The two ways fanlink builds a fan; tests that exercise the datapath run in both, the
/// shared one forced on this kernel (which has vnifilter) as on a kernel before 5.18.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Vnifilter,
    Shared,
}

impl Mode {
    /// The environment assignment that forces the mode, for a shell command line.
    pub fn env(self) -> &'static str {
        match self {
            Mode::Vnifilter => "FANLINK_DATAPATH=vnifilter",
            Mode::Shared => "FANLINK_DATAPATH=shared",
        }
    }
}

/// `in_both_datapaths! { #[ignore = "why"] fn name(mode) { body } }`: the body as two tests,
/// `name::vnifilter` and `name::shared`.
#[macro_export]
macro_rules! in_both_datapaths {
    ($(#[doc = $doc:literal])* #[ignore = $why:literal] fn $name:ident($mode:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($mode: $crate::topology::Mode) $body
            #[test]
            #[ignore = $why]
            fn vnifilter() {
                body($crate::topology::Mode::Vnifilter)
            }
            #[test]
            #[ignore = $why]
            fn shared() {
                body($crate::topology::Mode::Shared)
            }
        }
    };
}
