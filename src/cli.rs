//! The command line, declared with clap's derive API. Help texts here are the manual:
//! `fanlink(8)` is generated from them.

use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "fanlink",
    version,
    long_version = env!("FANLINK_LONG_VERSION"),
    about = "Bring Fan overlay networks up and down with the underlay, on a stock kernel",
    long_about = "fanlink builds Fan overlay networks (250.0.0.0/8 mapped onto an underlay such as \
10.0.0.0/16, each host owning the slice its underlay address selects) through netlink, with a \
tc-BPF program doing the fan arithmetic, wire-compatible with Ubuntu's vxlan fan. Rules are TOML \
files in /etc/fanlink.d, /run/fanlink.d and /usr/lib/fanlink.d.\n\n\
Exit status: 0 success, 1 problems found (invalid rules, for `check`), \
2 error."
)]
pub struct Cli {
    /// Read rules from DIR instead of the default directories (repeatable; earlier wins).
    #[arg(long = "rules-dir", value_name = "DIR", global = true)]
    pub rules_dirs: Vec<PathBuf>,

    /// Where the daemon keeps the leases of the DHCP servers it runs (`dhcp = true`).
    #[arg(long = "state-dir", value_name = "DIR", default_value = "/var/lib/fanlink", global = true)]
    pub state_dir: PathBuf,

    /// Where the daemon keeps its control socket.
    #[arg(long = "runtime-dir", value_name = "DIR", default_value = "/run/fanlink", global = true)]
    pub runtime_dir: PathBuf,

    /// How fans are built: `vnifilter` (a vxlan per fan; Linux 5.18+), `shared` (one vxlan
    /// for the host, a veth per fan, VNIs steered by tc-BPF; any kernel from 5.1), or `auto`:
    /// what the kernel supports, by a probe. For tests and for hosts whose probe misleads.
    #[arg(long, value_name = "MODE", env = "FANLINK_DATAPATH", default_value = "auto", global = true,
          value_parser = ["auto", "vnifilter", "shared"])]
    pub datapath: String,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate the rules and list the fans they define.
    ///
    /// Every error of every file is reported as FILE:LINE:COL: error: MESSAGE.
    /// Exits 1 when any rule is invalid.
    Check,

    /// Compute a host's slice, bridge address, VNI and address plan on a fan.
    ///
    /// The plan cuts the slice in three parts that never overlap: the host's own addresses
    /// (the bridge's and the rule's `host-reserve`), the DHCP range (`dhcp = true`) and
    /// Docker's `--ip-range` (the rule's `docker-share`).
    Addr {
        #[command(flatten)]
        fan: FanSelector,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },

    /// Print the arguments of `docker network create` for a Docker network on this host's
    /// share of a fan's slice.
    ///
    /// Prints one line of plain words, ready for the shell to split, ending with the network's
    /// name:
    ///
    ///   --driver bridge --subnet=OVERLAY --gateway=BRIDGE-ADDRESS --ip-range=DOCKER-SHARE
    ///   --aux-address=last=ADDRESS -o com.docker.network.bridge.name=FAN
    ///   -o com.docker.network.driver.mtu=MTU NETWORK
    ///
    /// Run it as: docker network create $(fanlink docker-args fan-250)
    ///
    /// Docker's range is the rule's `docker-share` of the slice (the last half by default),
    /// never an address of the host's or of the DHCP range. Without --address, this host's
    /// underlay address is read from the kernel, as `fanlink up` finds it.
    DockerArgs {
        #[command(flatten)]
        fan: FanSelector,
        #[command(flatten)]
        name: FanName,
        /// The fan MTU (default: the rule's `mtu`, else the underlay link's MTU - 50; 1450
        /// with --address).
        #[arg(long)]
        mtu: Option<u32>,
        /// Name of the Docker network to create, the last word printed (default: the fan's
        /// name).
        #[arg(long = "network-name", value_name = "NAME")]
        network_name: Option<String>,
    },

    /// Bring a fan up on this host now: bridge, vxlan, BPF program, forwarding, NAT.
    ///
    /// Repeating it changes nothing; a half-built fan is completed.
    Up {
        #[command(flatten)]
        target: UpTarget,
        /// Apply only the first N operations (to test recovery from a crash part-way).
        #[arg(long = "stop-after", value_name = "N", hide = true)]
        stop_after: Option<usize>,
    },

    /// Remove a fan from this host: exactly the devices, program and NAT fanlink made.
    ///
    /// Refuses, as fanctl did, while workloads are attached (ports on the fan's bridge other
    /// than fanlink's own): it names them and takes nothing down; --force removes the fan
    /// anyway (the workloads' interfaces stay, detached).
    Down {
        /// Name of the fan (its bridge).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every fan fanlink made on this host, with or without a rule.
        #[arg(long)]
        all: bool,
        /// Take the fans down even if workloads are attached to their bridges.
        #[arg(long)]
        force: bool,
    },

    /// Run the daemon: follow systemd-networkd and keep every fan right.
    ///
    /// Brings each fan up while its underlay link is routable and down (devices kept)
    /// otherwise. SIGHUP reloads the rules (a reload with errors, or with a file still being
    /// written, changes nothing); SIGTERM exits and leaves the fans as they are. Speaks
    /// systemd's notify protocol.
    Run {
        /// Who says whether an underlay is routable: networkd, the kernel, or networkd
        /// when it is on the bus and the kernel otherwise.
        #[arg(long, value_enum, default_value = "auto")]
        source: crate::daemon::Source,
    },

    /// Show each fan: wanted and why, what the kernel has, and any drift.
    ///
    /// Asks the running daemon; without one, reads the rules and the kernel.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },

    /// Check that a fan works on this host, as ubuntu-fan's `fanatic test` did.
    ///
    /// Steps: the fan is up with its devices, program and NAT as planned; the underlay's
    /// MTU leaves room for the fan's + 50; IPv4 forwarding is on for the bridge and the
    /// underlay; the NAT table is there; and for each peer, its bridge address answers
    /// across the fan (vxlan on UDP 8472 both ways) and a packet of the fan's MTU with DF set
    /// crosses too. Each step prints ok, FAILED or skipped with what to check.
    /// Exits 1 when a step failed. Sends ICMP echoes (needs root).
    Test {
        /// Name of a configured fan.
        name: String,
        /// A host on the fan to reach across it, by its underlay address (repeatable;
        /// default: the hosts this one talked to on the fan recently, from the bridge's
        /// neighbours).
        #[arg(long, value_name = "ADDRESS")]
        peer: Vec<Ipv4Addr>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },

    /// Translate ubuntu-fan's /etc/network/fan, a hook script that runs `fanctl up`, or a
    /// `fanctl up` command, into a fanlink rule file printed on stdout.
    ///
    /// Reads every form fanctl and cloud-init's `fan:` module write: UNDERLAY OVERLAY or the
    /// old OVERLAY UNDERLAY, -u/-o; fanctl's bridge option or `bridge NAME` becomes `name`; --dhcp or
    /// `dhcp` becomes `dhcp = true`; --disable or `off` becomes `enable = false` (kept, not
    /// brought up); an underlay given as an interface (`eth0/16`) becomes `interface` and
    /// its prefix, `default` the prefix alone. fanctl's commands: `up -a` is the daemon,
    /// `down -a`/`-e` is `down --all`, `show` is `status`.
    ///
    /// Refuses (exit 2, nothing on stdout) what it cannot translate: the ipip type (it needs
    /// Ubuntu's kernel fan patch), unknown options; each as FILE:LINE:COL: error: MESSAGE.
    Import(crate::import::ImportArgs),

    /// Print the operations `up` would apply, applying nothing (all fans without NAME).
    Plan {
        /// Name of a configured fan.
        name: Option<String>,
        /// This host's underlay address (default: its address inside the underlay).
        #[arg(long)]
        address: Option<Ipv4Addr>,
    },

    /// Write the man page or a shell completion, generated from these definitions (used by
    /// packaging/build-deb; hidden because it is for packagers).
    #[command(hide = true)]
    Generate {
        what: Artifact,
        /// Write DIR/<file> instead of stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// A fan by the name of its rule, or fanctl-style by its prefixes.
#[derive(Args, Debug)]
pub struct FanRef {
    /// Name of a configured fan (its bridge name), instead of --overlay/--underlay.
    #[arg(required_unless_present_all = ["overlay", "underlay"], conflicts_with_all = ["overlay", "underlay"])]
    pub name: Option<String>,
    /// Overlay prefix, e.g. 250.0.0.0/8 (with --underlay: no rule file needed).
    #[arg(long, requires = "underlay")]
    pub overlay: Option<Ipv4Net>,
    /// Underlay prefix, e.g. 10.0.0.0/16.
    #[arg(long, requires = "overlay")]
    pub underlay: Option<Ipv4Net>,
}

/// The name of a fan given by prefixes: a rule's `name`, which is its bridge's name.
#[derive(Args, Debug)]
pub struct FanName {
    /// Name of a fan given by --overlay/--underlay, as a rule's `name` (its bridge's name;
    /// default fan-<first overlay octet>).
    // `--bridge` is fanctl's word for it, kept working but not shown: the rules say `name`.
    #[arg(
        id = "fan_name",
        long = "name",
        alias = "bridge",
        value_name = "NAME",
        requires = "overlay",
        conflicts_with = "name"
    )]
    pub name: Option<String>,
}

impl FanName {
    /// The given name, or the default one of a fan on `map`.
    pub fn or_default(&self, map: &crate::fan::FanMap) -> anyhow::Result<crate::ifname::IfName> {
        match &self.name {
            Some(name) => name.parse().map_err(|e| anyhow::anyhow!("--name: {e}")),
            None => Ok(crate::config::default_name(map)),
        }
    }
}

/// Which fan `up` brings up, and where.
#[derive(Args, Debug)]
pub struct UpTarget {
    #[command(flatten)]
    pub fan: FanRef,
    #[command(flatten)]
    pub name: FanName,
    /// This host's underlay address (default: its address inside the underlay).
    #[arg(long)]
    pub address: Option<Ipv4Addr>,
}

/// A fan plus this host's underlay address, for the commands that compute.
#[derive(Args, Debug)]
pub struct FanSelector {
    #[command(flatten)]
    pub fan: FanRef,
    /// This host's underlay address, e.g. 10.0.3.4 (default: read from the kernel, as
    /// `fanlink up` finds it: the address inside the underlay on the rule's `interface` or
    /// any link).
    #[arg(long)]
    pub address: Option<Ipv4Addr>,
}

/// What `fanlink generate` writes (rendered by `generate`, which depends on this module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Artifact {
    /// The manual page, fanlink.8 (roff).
    Man,
    /// bash completion, fanlink.bash.
    CompleteBash,
    /// zsh completion, _fanlink.
    CompleteZsh,
    /// fish completion, fanlink.fish.
    CompleteFish,
}
