//! The `bpf(2)` calls fanlink needs: load a tc program, ask the kernel about it, pin it.
//! Hand-rolled on `libc::syscall` because the attribute unions are simple fixed layouts
//! (`union bpf_attr` in `include/uapi/linux/bpf.h`) and no BPF library is worth a
//! dependency for three commands.
//!
//! Before 5.11 a program's memory counts against RLIMIT_MEMLOCK (later, the cgroup's), so
//! the soft limit is raised to the hard one before the first load, and a refused load there
//! says when the limit, not a capability, is the likely cause.

use super::insn::Insn;
use super::insn::{exit, jmp32_imm, mov32_imm, Cond, R0};
use super::program::{fan_egress, FanProgram};
use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_OBJ_NAME_LEN`, including the terminating NUL.
const OBJ_NAME_LEN: usize = 16;
/// Big enough for a failed run of this small program at log level 1; since 6.4 the kernel
/// keeps the log's tail (where the error is) when it does not fit.
const LOG_SIZE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("BPF program name {0:?} must be 1 to 15 characters of A-Z, a-z, 0-9, '_' and '.'")]
    Name(String),
    #[error("BPF pin path {0:?} contains a NUL byte")]
    Path(String),
    #[error("the kernel's verifier rejected BPF program {name} ({errno}): {}\n{log}", verdict(log))]
    Rejected { name: String, errno: Errno, log: String },
    #[error("{op}: {errno}{}", hint(*.errno))]
    Syscall { op: &'static str, errno: Errno },
    /// EPERM from a process that holds the capabilities, on a kernel that charges BPF memory
    /// to RLIMIT_MEMLOCK per user: the charge of every BPF object root's processes hold
    /// (systemd's own cgroup programs for sandboxed units included) went over this limit.
    #[error(
        "{op}: {errno}: the BPF memory of this user's processes is over RLIMIT_MEMLOCK ({}): \
         before Linux 5.11 every BPF object root holds is charged to it, systemd's own for \
         sandboxed units too; raise it with LimitMEMLOCK= in fanlink.service (the shipped \
         unit sets 64M; see `systemctl show fanlink -p LimitMEMLOCK`)",
        kib(*.limit)
    )]
    Memlock { op: &'static str, errno: Errno, limit: u64 },
}

fn kib(bytes: u64) -> String {
    if bytes == libc::RLIM_INFINITY {
        "infinity".to_string()
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// The verifier's reason, for a one-line report: the last line of its log that is neither an
/// instruction it walked nor its closing statistics.
fn verdict(log: &str) -> &str {
    let walked = |l: &str| l.split_once(": ").is_some_and(|(n, _)| n.parse::<u32>().is_ok());
    let statistics =
        |l: &str| ["processed ", "verification time", "stack depth"].iter().any(|s| l.starts_with(s));
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !walked(l) && !statistics(l))
        .unwrap_or("see the log")
}

/// What a person can do about an errno the BPF syscall returned without a verifier log.
fn hint(errno: Errno) -> &'static str {
    match errno {
        Errno::EPERM | Errno::EACCES => " (needs CAP_BPF and CAP_NET_ADMIN, or root)",
        Errno::ENOSYS => " (this kernel was built without the bpf() syscall)",
        Errno::ENOENT => " (is the pin directory on a bpffs mount?)",
        Errno::EEXIST => " (the pin path exists already)",
        _ => "",
    }
}

/// `union bpf_attr`, as bytes: 128 is more than every command here uses, and the kernel
/// accepts a larger attr as long as the bytes it does not know are zero.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn u32(&mut self, at: usize, v: u32) -> &mut Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn ptr<T>(&mut self, at: usize, p: *const T) -> &mut Attr {
        self.0[at..at + 8].copy_from_slice(&(p as u64).to_ne_bytes());
        self
    }

    fn call(&mut self, cmd: libc::c_long, op: &'static str) -> Result<libc::c_long, Errno> {
        // SAFETY: the attr is a zeroed `union bpf_attr` whose pointers point at buffers
        // that outlive this call and are as long as the lengths stored beside them.
        let ret =
            unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), self.0.len() as libc::c_long) };
        if ret < 0 {
            let errno = Errno::last();
            log::debug!("bpf({op}): {errno}");
            Err(errno)
        } else {
            Ok(ret)
        }
    }
}

fn check_name(name: &str) -> Result<(), LoadError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    if name.is_empty() || name.len() >= OBJ_NAME_LEN || !name.chars().all(ok) {
        return Err(LoadError::Name(name.to_string()));
    }
    Ok(())
}

/// Loads a `SCHED_CLS` (tc) program. If the kernel refuses it, loads it again with the
/// verifier log on, so the error says which instruction failed and why.
pub fn load(insns: &[Insn], name: &str) -> Result<OwnedFd, LoadError> {
    check_name(name)?;
    raise_memlock();
    let code: Vec<u8> = insns.iter().flat_map(Insn::to_bytes).collect();
    let license = c"GPL";
    let mut prog_name = [0u8; OBJ_NAME_LEN];
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let attr = || {
        let mut a = Attr::new();
        a.u32(0, BPF_PROG_TYPE_SCHED_CLS).u32(4, insns.len() as u32);
        a.ptr(8, code.as_ptr()).ptr(16, license.as_ptr());
        a.0[48..64].copy_from_slice(&prog_name);
        a
    };
    let errno = match attr().call(BPF_PROG_LOAD, "BPF_PROG_LOAD") {
        Ok(fd) => return Ok(owned(fd)),
        Err(errno) => errno,
    };
    let mut log = vec![0u8; LOG_SIZE];
    let mut a = attr();
    a.u32(24, 1).u32(28, LOG_SIZE as u32).ptr(32, log.as_mut_ptr());
    // A program that loads only with the log on (a transient failure) is still loaded.
    let errno = match a.call(BPF_PROG_LOAD, "BPF_PROG_LOAD with log") {
        Ok(fd) => return Ok(owned(fd)),
        Err(Errno::ENOSPC) => errno,
        Err(e) => e,
    };
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let log = String::from_utf8_lossy(&log[..end]).trim_end().to_string();
    if log.is_empty() {
        Err(refused(errno, &kernel_release(), capable(), memlock_limit()))
    } else {
        Err(LoadError::Rejected { name: name.to_string(), errno, log })
    }
}

/// The error of a load the kernel refused without a verifier log. Before 5.11, EPERM under
/// the capabilities a load needs is the memlock charge (the only other EPERM there, the
/// unprivileged_bpf_disabled sysctl, does not apply to a capable process).
fn refused(errno: Errno, release: &str, capable: bool, limit: u64) -> LoadError {
    let op = "BPF_PROG_LOAD";
    if errno == Errno::EPERM && capable && !release_at_least(release, (5, 11)) {
        LoadError::Memlock { op, errno, limit }
    } else {
        LoadError::Syscall { op, errno }
    }
}

/// Whether this process may load a tc program: CAP_BPF or CAP_SYS_ADMIN, and CAP_NET_ADMIN
/// or CAP_SYS_ADMIN, in its effective set (/proc/self/status, `CapEff`).
fn capable() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1 << cap) != 0;
    const NET_ADMIN: u32 = 12;
    const SYS_ADMIN: u32 = 21;
    const BPF: u32 = 39;
    (has(BPF) || has(SYS_ADMIN)) && (has(NET_ADMIN) || has(SYS_ADMIN))
}

/// This process's RLIMIT_MEMLOCK soft limit, in bytes (0 if unknown).
fn memlock_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a plain syscall on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        0
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK, often 64 KiB; raising the soft
/// limit to the hard one needs no privilege. Later kernels ignore it.
fn raise_memlock() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: plain syscalls on a local struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
            }
        }
    });
}

/// Whether the kernel's verifier knows the JMP32 instructions fanlink's programs use
/// (Linux 5.1), the newest BPF feature they need. A release of 5.1 or later has them; an
/// older number may have them backported (RHEL 8's 4.18), so only there is the verifier
/// asked, with a three-instruction program: a load costs 0.1-0.2 ms of every start.
/// `Err` when the question cannot be asked (no privilege, no bpf syscall).
pub fn supports_jmp32() -> Result<bool, LoadError> {
    if release_at_least(&kernel_release(), (5, 1)) {
        return Ok(true);
    }
    let probe = [mov32_imm(R0, 0), jmp32_imm(Cond::Eq, R0, 0), exit()];
    match load(&probe, "fanlink_probe") {
        Ok(_) => Ok(true),
        Err(LoadError::Rejected { errno: Errno::EINVAL, .. }) => Ok(false),
        Err(LoadError::Syscall { errno: Errno::EINVAL, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The running kernel's release (`uname -r`), e.g. "6.18.44-fc"; empty if unknown.
fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct it is given; its fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
    }
}

/// Whether a release string ("MAJOR.MINOR[.PATCH][-EXTRA]") is at least `want`; a string
/// that does not parse is not.
fn release_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (number(), number()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// Builds and loads one fan's egress program under its [`FanProgram::prog_name`].
pub fn load_fan(p: &FanProgram) -> Result<OwnedFd, LoadError> {
    load(&fan_egress(p), &p.prog_name())
}

/// What the kernel reports about a loaded program (`struct bpf_prog_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    pub name: String,
    /// Instructions after the verifier's rewrites (context accesses, helper calls).
    pub xlated_insns: u32,
    pub jited_bytes: u32,
    pub tag: [u8; 8],
}

pub fn prog_info(fd: BorrowedFd<'_>) -> Result<ProgInfo, LoadError> {
    // Up to and including `name`; the kernel fills in only what the caller's length covers.
    let mut info = [0u8; 80];
    let mut a = Attr::new();
    a.u32(0, fd.as_raw_fd() as u32).u32(4, info.len() as u32).ptr(8, info.as_mut_ptr());
    a.call(BPF_OBJ_GET_INFO_BY_FD, "BPF_OBJ_GET_INFO_BY_FD")
        .map_err(|errno| LoadError::Syscall { op: "BPF_OBJ_GET_INFO_BY_FD", errno })?;
    let u32_at = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().expect("4 bytes"));
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(ProgInfo {
        id: u32_at(4),
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        xlated_insns: u32_at(20) / 8,
        jited_bytes: u32_at(16),
        tag: info[8..16].try_into().expect("8 bytes"),
    })
}

/// The program's id, as `bpftool prog show id N` and tc's `bpf ... id N` show it.
pub fn prog_id(fd: BorrowedFd<'_>) -> Result<u32, LoadError> {
    prog_info(fd).map(|i| i.id)
}

/// Pins a program (or any BPF object) at `path`, which must be on a bpffs mount: how
/// `tc filter ... bpf pinned PATH` and other processes can refer to it.
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> Result<(), LoadError> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| LoadError::Path(path.display().to_string()))?;
    let mut a = Attr::new();
    a.ptr(0, c_path.as_ptr()).u32(8, fd.as_raw_fd() as u32);
    a.call(BPF_OBJ_PIN, "BPF_OBJ_PIN").map_err(|errno| LoadError::Syscall { op: "BPF_OBJ_PIN", errno })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_accepts() {
        assert!(check_name("fanlink_fa0000").is_ok());
        assert!(check_name("a.b_C9").is_ok());
        for bad in ["", "sixteen_chars_xx", "fan-egress", "fan egress"] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("1 to 15 characters"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn errno_hints() {
        let e = LoadError::Syscall { op: "BPF_PROG_LOAD", errno: Errno::EPERM };
        assert_eq!(
            e.to_string(),
            "BPF_PROG_LOAD: EPERM: Operation not permitted (needs CAP_BPF and CAP_NET_ADMIN, or root)"
        );
    }

    #[test]
    fn eperm_before_5_11_under_the_capabilities_is_the_memlock_charge() {
        // Debian 11's kernel, systemd 247's default limit: the second fan's load (issue 25).
        let e = refused(Errno::EPERM, "5.10.0-35-amd64", true, 64 * 1024).to_string();
        assert!(e.starts_with("BPF_PROG_LOAD: EPERM: Operation not permitted: "), "{e}");
        assert!(e.contains("over RLIMIT_MEMLOCK (64 KiB)"), "{e}");
        assert!(e.contains("LimitMEMLOCK= in fanlink.service"), "{e}");
        assert!(!e.contains("CAP_BPF"), "not a capability: {e}");
        assert!(refused(Errno::EPERM, "5.4.0", true, libc::RLIM_INFINITY).to_string().contains("(infinity)"));
        // Without the capabilities, or where the cgroup is charged instead, it is what it says.
        for (release, capable) in [("5.10.0-35-amd64", false), ("5.11.0", true), ("6.1.0-9-amd64", true)] {
            let e = refused(Errno::EPERM, release, capable, 64 * 1024).to_string();
            assert!(e.ends_with("(needs CAP_BPF and CAP_NET_ADMIN, or root)"), "{release} {capable}: {e}");
        }
        assert!(matches!(refused(Errno::EINVAL, "5.10.0", true, 0), LoadError::Syscall { .. }));
    }

    #[test]
    fn the_verdict_is_the_reason_line() {
        let debian12 = "43: (62) *(u32 *)(r10 -32) = 15990784   ; R10=fp0 fp-32_w=15990784\n\
                        44: (63) *(u32 *)(r10 -28) = r5\n\
                        attempt to corrupt spilled pointer on stack\n\
                        processed 44 insns (limit 1000000) max_states_per_insn 0 total_states 2\n";
        assert_eq!(verdict(debian12), "attempt to corrupt spilled pointer on stack");
        assert_eq!(verdict("0: (95) exit\nR0 !read_ok\nprocessed 1 insns\n"), "R0 !read_ok");
        assert_eq!(verdict(""), "see the log");
    }
}

#[cfg(test)]
mod release_tests {
    use super::release_at_least;

    #[test]
    fn only_releases_before_5_1_are_probed() {
        assert!(release_at_least("6.18.44-fc-v1045", (5, 1)));
        assert!(release_at_least("5.1.0", (5, 1)));
        assert!(release_at_least("5.10", (5, 1)));
        assert!(!release_at_least("5.0.21-generic", (5, 1)));
        assert!(!release_at_least("4.18.0-553.el8_10.x86_64", (5, 1)), "a backport is asked");
        assert!(!release_at_least("", (5, 1)));
        assert!(!release_at_least("linux", (5, 1)));
    }
}
