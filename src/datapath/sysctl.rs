//! Kernel settings under `/proc/sys` that a fan host needs: IPv4 forwarding on a fan's
//! bridge and underlay link (`net.ipv4.conf.LINK.forwarding`), never host-wide.
//!
//! Everything under `/proc/sys/net` belongs to the network namespace of the thread that
//! opens the file, not to the process: a thread that has `setns`'d into another namespace
//! reads and writes that namespace's values (the tests rely on this).
//!
//! Writes read first and only write when the value differs, so an already-right setting is
//! never touched (no needless audit noise, and it works on a read-only `/proc/sys` when
//! nothing has to change, as in containers that mount it so).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where IPv4 forwarding is set for packets coming in on `link`. (`net.ipv4.ip_forward`,
/// which is `conf/all/forwarding`, sets every interface of the namespace: fanlink leaves it
/// alone.)
pub fn forwarding_path(link: &str) -> PathBuf {
    Path::new("/proc/sys/net/ipv4/conf").join(link).join("forwarding")
}

/// A sysctl that could not be read or written, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}{}", path.display(), hint(source))]
pub struct SysctlError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The fix for the errno values people actually meet.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EROFS) => {
            " (/proc/sys is mounted read-only, as in most containers; set it on the host or give \
             the container its own network namespace with a writable /proc/sys)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => " (fanlink needs root or CAP_NET_ADMIN to change it)",
        Some(libc::ENOENT) => " (the kernel lacks this setting)",
        _ => "",
    }
}

/// The value of a sysctl file, without the trailing newline.
pub fn read(path: &Path) -> Result<String, SysctlError> {
    fs::read_to_string(path).map(|s| s.trim_end().to_string()).map_err(|source| SysctlError {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Sets a sysctl to `value` unless it already has it; returns whether it changed.
pub fn ensure(path: &Path, value: &str) -> Result<bool, SysctlError> {
    if read(path)? == value {
        return Ok(false);
    }
    fs::write(path, value).map_err(|source| SysctlError { op: "write", path: path.to_path_buf(), source })?;
    log::info!("set {} to {value}", path.display());
    Ok(true)
}

/// Turns on IPv4 forwarding for packets coming in on `link`; returns whether it was off.
pub fn ensure_forwarding(link: &str) -> Result<bool, SysctlError> {
    ensure(&forwarding_path(link), "1")
}

/// Whether `link` forwards IPv4; `None` if it has no such setting (it is gone, or has no
/// IPv4 state).
pub fn forwarding(link: &str) -> Result<Option<bool>, SysctlError> {
    match read(&forwarding_path(link)) {
        Ok(value) => Ok(Some(value == "1")),
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("fanlink-sysctl-{}-{name}", std::process::id()));
        fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn ensure_writes_only_when_different() {
        let path = temp("differs", "0\n");
        assert!(ensure(&path, "1").unwrap());
        assert_eq!(read(&path).unwrap(), "1");
        assert!(!ensure(&path, "1").unwrap());
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn forwarding_is_per_link_and_a_missing_link_has_none() {
        assert_eq!(forwarding_path("eth0.100"), Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding"));
        assert_eq!(forwarding("no-such-link0").unwrap(), None);
        assert!(forwarding("lo").unwrap().is_some());
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let err = read(Path::new("/proc/sys/net/ipv4/no_such_knob")).unwrap_err().to_string();
        assert_eq!(
            err,
            "cannot read /proc/sys/net/ipv4/no_such_knob: No such file or directory (os error 2) \
             (the kernel lacks this setting)"
        );
        let erofs = io::Error::from_raw_os_error(libc::EROFS);
        assert!(hint(&erofs).contains("read-only"));
    }
}
