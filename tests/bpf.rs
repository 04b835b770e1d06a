//! The fan's BPF program against the real kernel: the verifier accepts it, reports the
//! expected size, explains a rejection, and (end to end, in a private network and mount
//! namespace) a ping into the overlay leaves the underlay as the Ubuntu fan's VXLAN packet.

use crate::util::{output, spawn};
use fanlink::datapath::bpf::insn::{exit, mov64_imm, R0};
use fanlink::datapath::bpf::{fan_egress, load, load_fan, pin, prog_id, prog_info, FanProgram, LoadError};
use fanlink::fan::FanMap;
use nix::mount::{mount, umount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn program(overlay: &str, underlay: &str, local: &str) -> FanProgram {
    let map = FanMap::new(overlay.parse().unwrap(), underlay.parse().unwrap()).unwrap();
    FanProgram::new(map, local.parse().unwrap())
}

fn example() -> FanProgram {
    program("250.0.0.0/8", "10.0.0.0/16", "10.0.3.4")
}

#[test]
#[ignore = "needs root (CAP_BPF): run with --include-ignored"]
fn kernel_accepts_fan_programs() {
    let p = example();
    let insns = fan_egress(&p);
    let fd = load(&insns, &p.prog_name()).unwrap();
    let info = prog_info(fd.as_fd()).unwrap();
    assert_eq!(info.name, "fanlink_fa0000");
    assert_eq!(info.xlated_insns as usize, insns.len(), "the verifier rewrote only in place");
    assert_eq!(insns.len(), 58);
    assert_eq!(prog_id(fd.as_fd()).unwrap(), info.id);

    // The kernel's own rendering shows the immediates where fan.md's arithmetic puts them.
    let out = output(Command::new("bpftool").args([
        "prog",
        "dump",
        "xlated",
        "id",
        &info.id.to_string(),
        "opcodes",
    ]));
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let dump = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in [
        "w4 &= -16777216",
        "if w4 != 0xfa000000 goto",
        "w5 >>= 8",
        "if w5 == 0xffff goto",
        "w5 |= 167772160",
        "if w5 == 0xa000304 goto",
        "r5 <<= 32",
        "r5 |= 16384000",
        "*(u64 *)(r10 -32) = r5",
        "r4 <<= 40",
        "*(u64 *)(r10 -16) = r4",
        "r3 = 28",
        "call bpf_skb_load_bytes",
        "call bpf_skb_set_tunnel_key",
    ] {
        assert!(dump.contains(line), "{line:?} missing from\n{dump}");
    }
    // And its bytes are ours, except where the verifier rewrites by design: context loads
    // (uapi `__sk_buff` offsets become `sk_buff` ones) and helper numbers (become addresses).
    let kernel: Vec<Vec<u8>> = dump
        .lines()
        .filter(|l| l.starts_with("       "))
        .map(|l| l.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect())
        .collect();
    assert_eq!(kernel.len(), insns.len());
    for (k, (ours, theirs)) in insns.iter().zip(&kernel).enumerate() {
        let is_ctx_load = ours.code & 0x07 == 0x01 && ours.src() == 6;
        let is_call = ours.code == 0x85;
        if is_ctx_load {
            assert_eq!(ours.regs, theirs[1], "insn {k}");
        } else if is_call {
            assert_eq!(ours.code, theirs[0], "insn {k}");
        } else {
            assert_eq!(ours.to_bytes().as_slice(), theirs.as_slice(), "insn {k}");
        }
    }

    for p in [
        program("250.0.0.0/8", "192.168.1.0/24", "192.168.1.178"),
        program("100.64.0.0/10", "10.224.220.0/24", "10.224.220.10"),
        program("240.0.0.0/4", "10.0.0.0/30", "10.0.0.1"),
    ] {
        load_fan(&p).unwrap_or_else(|e| panic!("{}: {e}", p.tag()));
    }
}

#[test]
#[ignore = "needs root (CAP_BPF): run with --include-ignored"]
fn rejection_carries_the_verifier_log() {
    let err = load(&[exit()], "fanlink_bad").unwrap_err();
    assert!(matches!(err, LoadError::Rejected { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("the kernel's verifier rejected BPF program fanlink_bad (EACCES"), "{text}");
    assert!(text.lines().next().unwrap().ends_with("): R0 !read_ok"), "the reason on the first line: {text}");
    assert!(text.contains("R0 !read_ok"), "{text}");
    load(&[mov64_imm(R0, 0), exit()], "fanlink_ok").unwrap();
}

fn run(cmd: &str) {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let out = output(Command::new(args[0]).args(&args[1..]));
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A bpffs in a temporary directory of this thread's own mount namespace, for `tc ...
/// pinned` (tc takes no fd). Gone with the namespace; unmounted early when dropped.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount() -> Bpffs {
        // Private first, so the mount does not propagate to the host's namespace.
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).unwrap();
        let dir = std::env::temp_dir().join(format!("fanlink-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        mount(Some("bpf"), &dir, Some("bpf"), MsFlags::empty(), None::<&str>).unwrap();
        Bpffs(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = umount(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Captures UDP port 8472 on `dev` into `file` until stopped.
struct Capture(std::process::Child);

impl Capture {
    fn start(dev: &str, file: &Path) -> Capture {
        let mut child = spawn(
            Command::new("tcpdump")
                .args(["-i", dev, "-n", "-U", "-w"])
                .arg(file)
                .args(["udp", "port", "8472"])
                .stderr(Stdio::piped()),
        );
        // Packets sent before tcpdump listens would be missed.
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "tcpdump: {line}");
        Capture(child)
    }

    fn stop(mut self) {
        kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "tcpdump did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The frames of a pcap file (native byte order, as tcpdump writes it).
fn pcap_frames(file: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(file).unwrap();
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32::from_ne_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        frames.push(data[at + 16..at + 16 + len].to_vec());
        at += 16 + len;
    }
    frames
}

fn ping(args: &str) {
    let _ = Command::new("ping")
        .args(args.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[test]
#[ignore = "needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run with --include-ignored"]
fn ping_leaves_as_fan_vxlan() {
    // This thread only (and the commands it spawns): a network and a mount namespace.
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).unwrap();
    let bpffs = Bpffs::mount();
    let p = example();
    let fd = load_fan(&p).unwrap();
    let pinned = bpffs.0.join("fan_egress");
    pin(fd.as_fd(), &pinned).unwrap();

    // Underlay: this host is 10.0.3.4; 10.0.6.7 and 10.0.9.9 are neighbours behind ul1.
    for cmd in [
        "ip link set lo up",
        "ip link add ul0 type veth peer name ul1",
        "ip addr add 10.0.3.4/16 dev ul0",
        "ip link set ul0 up",
        "ip link set ul1 up",
        "ip neigh add 10.0.6.7 lladdr 02:00:00:00:06:07 dev ul0 nud permanent",
        "ip neigh add 10.0.9.9 lladdr 02:00:00:00:09:09 dev ul0 nud permanent",
        "ip link add fan-250 type bridge",
        "ip addr add 250.3.4.1/8 dev fan-250",
        "ip link set fan-250 mtu 1450 up",
        "ip link add fan-vx type vxlan external vnifilter dstport 8472 nolearning",
        "ip link set fan-vx mtu 1450 master fan-250 up",
        "bridge vni add dev fan-vx vni 16384000",
        "tc qdisc add dev fan-vx clsact",
        // A neighbour for the remote container, so the first packet out is the ICMP.
        "ip neigh add 250.6.7.8 lladdr 02:00:00:fa:06:07 dev fan-250 nud permanent",
    ] {
        run(cmd);
    }
    run(&format!("tc filter add dev fan-vx egress bpf da pinned {}", pinned.display()));

    let file = bpffs.0.with_extension("pcap");
    let capture = Capture::start("ul1", &file);
    // Unmappable: our own slice (its ARP), the overlay broadcast (the underlay hole).
    ping("-c 1 -W 1 250.3.4.9");
    ping("-c 1 -W 1 -b 250.255.255.255");
    // 250.9.9.9 has no neighbour entry: its ARP request must cross to 10.0.9.9.
    ping("-c 1 -W 1 250.9.9.9");
    ping("-c 1 -W 1 250.6.7.8");
    std::thread::sleep(Duration::from_millis(200));
    capture.stop();
    let frames = pcap_frames(&file);
    let _ = std::fs::remove_file(&file);

    let kinds: Vec<&str> = frames.iter().map(|f| fan_vxlan(f)).collect();
    assert!(kinds.contains(&"arp 250.9.9.9") && kinds.contains(&"icmp 250.6.7.8"), "{kinds:?}");
    assert!(kinds.iter().all(|k| *k == "arp 250.9.9.9" || *k == "icmp 250.6.7.8"), "{kinds:?}");
}

/// Checks the outer headers of a captured frame as the Ubuntu fan builds them, and says
/// what it carries: `"icmp 250.6.7.8"` to 10.0.6.7 or `"arp 250.9.9.9"` to 10.0.9.9.
fn fan_vxlan(f: &[u8]) -> &'static str {
    let ip = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    assert_eq!((f[12], f[13], f[14], f[22], f[23]), (8, 0, 0x45, 64, 17), "IPv4, TTL 64, UDP: {f:02x?}");
    assert_eq!(ip(26), Ipv4Addr::new(10, 0, 3, 4));
    assert_eq!(u16::from_be_bytes([f[36], f[37]]), 8472);
    assert_eq!(f[42..50], [0x08, 0, 0, 0, 0xfa, 0, 0, 0], "VXLAN, VNI 16384000");
    let inner = &f[50..];
    match (ip(30).octets(), f[5], [inner[12], inner[13]]) {
        ([10, 0, 6, 7], 0x07, [0x08, 0x00]) if inner[23] == 1 && inner[30..34] == [250, 6, 7, 8] => {
            "icmp 250.6.7.8"
        }
        ([10, 0, 9, 9], 0x09, [0x08, 0x06])
            if inner[0..6] == [0xff; 6] && inner[38..42] == [250, 9, 9, 9] =>
        {
            "arp 250.9.9.9"
        }
        _ => panic!("unexpected frame {f:02x?}"),
    }
}

#[test]
#[ignore = "needs root (CAP_BPF): run with --include-ignored"]
fn kernel_accepts_the_shared_datapaths_programs() {
    use fanlink::datapath::bpf::{drop_all, fan_steer, steer_prog_name};
    let shared = FanProgram { redirect: Some(1), ..example() };
    for (insns, name, len) in [
        (fan_egress(&shared), shared.prog_name(), 60),
        (fan_steer(shared.vni, 1), steer_prog_name(shared.vni), 14),
        (drop_all(), "fanlink_drop".to_string(), 2),
    ] {
        let fd = load(&insns, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = prog_info(fd.as_fd()).unwrap();
        assert_eq!((info.name.as_str(), insns.len()), (name.as_str(), len));
        assert_eq!(info.xlated_insns as usize, insns.len(), "{name}: the verifier rewrote only in place");
    }
}
