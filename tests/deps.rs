//! What a fresh machine needs: every program the code, the tests and the scripts run is
//! installed by `tests/setup`, and a test whose program is missing says which one.

use crate::util::start_error;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What the shell and Python scripts run (tests/harness, tests/fleet, bench, packaging, demo),
/// beyond the programs every Debian system has. The Rust sources are scanned instead.
const SCRIPTS_RUN: &[&str] = &[
    "ip",
    "tc",
    "bridge",
    "nft",
    "iptables",
    "dbus-daemon",
    "busctl",
    "networkctl",
    "/lib/systemd/systemd-networkd",
    "systemd-analyze",
    "tcpdump",
    "ping",
    "dnsmasq",
    "busybox",
    "bpftool",
    "sysctl",
    "free",
    "lintian",
    "man",
    "file",
    "objcopy",
    "networkd-dispatcher",
    "iperf3",
    "perf",
    "python3",
];

/// The packages `tests/setup` installs: the words of its `packages=( ... )` list.
fn setup_packages() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("tests/setup")).unwrap();
    let list = text.split_once("packages=(").expect("tests/setup has a packages=( list").1;
    let list = list.split_once("\n)").expect("the packages list ends with `)`").0;
    list.lines().filter_map(|l| l.split('#').next()?.split_whitespace().next()).map(str::to_owned).collect()
}

/// The literal programs in `Command::new("...")` under `dir`.
fn commands_in(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            commands_in(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (_, rest) in text.match_indices("Command::new(\"").map(|(i, _)| text.split_at(i + 14)) {
                let program = rest.split('"').next().unwrap();
                let word = program.chars().all(|c| c.is_ascii_alphanumeric() || "-_./+".contains(c));
                if word && program.chars().any(|c| c.is_ascii_alphabetic()) {
                    found.push(program.to_owned());
                }
            }
        }
    }
}

/// Where `program` may live: in `PATH` first, then the system directories (a PATH shim, such
/// as pyenv's `python3`, is not what a fresh machine has).
fn candidates(program: &str) -> Vec<PathBuf> {
    if program.starts_with('/') {
        return vec![program.into()];
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    let mut found: Vec<PathBuf> = dirs.map(|d| d.join(program)).filter(|p| p.is_file()).collect();
    // dpkg knows a usrmerged file by its old name (/bin/ip for /usr/bin/ip) and a symlink's target.
    for p in found.clone() {
        found.extend(std::fs::canonicalize(&p));
        found.extend(p.strip_prefix("/usr").map(|rest| Path::new("/").join(rest)));
    }
    found
}

/// Package of each path dpkg knows, as `(package, path)`; one dpkg call for all.
fn owners(paths: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let out = Command::new("dpkg").arg("-S").args(paths).output().expect("dpkg");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines = text.lines().filter(|l| !l.starts_with("diversion"));
    lines.filter_map(|l| l.split_once(": ")).map(|(pkg, path)| (pkg.to_owned(), path.into())).collect()
}

/// Fields of installed packages, one line each (`dpkg-query -W -f`).
fn query(format: &str, packages: &[String]) -> Vec<String> {
    let out = Command::new("dpkg-query").arg("-W").arg(format!("-f={format}\\n")).args(packages).output();
    String::from_utf8_lossy(&out.expect("dpkg-query").stdout).lines().map(str::to_owned).collect()
}

#[test]
fn setup_installs_every_program_the_code_and_tests_run() {
    let mut programs: Vec<String> = SCRIPTS_RUN.iter().map(|s| s.to_string()).collect();
    commands_in(&Path::new(ROOT).join("src"), &mut programs);
    commands_in(&Path::new(ROOT).join("tests"), &mut programs);
    programs.sort();
    programs.dedup();
    let listed = setup_packages();
    assert!(listed.iter().any(|p| p == "iproute2"), "read tests/setup's list: {listed:?}");
    // What setup installs: its packages and what they depend on (`dbus` brings `dbus-daemon`).
    let depends = query("${Pre-Depends}, ${Depends}", &listed).join(", ");
    let pulled = depends.split([',', '|']).filter_map(|d| d.split_whitespace().next());
    let installed: Vec<&str> = listed.iter().map(String::as_str).chain(pulled).collect();
    let paths: Vec<Vec<PathBuf>> = programs.iter().map(|p| candidates(p)).collect();
    let owners = owners(&paths.concat());
    let owner = |paths: &[PathBuf]| paths.iter().find_map(|p| owners.iter().find(|(_, q)| q == p)).cloned();
    let found: Vec<_> = paths.iter().map(|p| owner(p)).collect();
    // Essential and required packages are on every Debian system: setup need not list them.
    let packages: Vec<String> = found.iter().flatten().map(|(pkg, _)| pkg.clone()).collect();
    let base: Vec<String> = query("${Package} ${Essential} ${Priority}", &packages)
        .into_iter()
        .filter(|l| l.contains(" yes ") || l.ends_with(" required"))
        .filter_map(|l| Some(l.split_whitespace().next()?.to_owned()))
        .collect();
    let mut problems = Vec::new();
    for ((program, paths), found) in programs.iter().zip(&paths).zip(found) {
        match found {
            _ if paths.is_empty() => {
                problems.push(format!("{program}: not installed here (run tests/setup)"))
            }
            Some((package, _)) if installed.contains(&package.as_str()) || base.contains(&package) => {}
            Some((package, path)) => problems
                .push(format!("{program} ({}): its package {package} is not in tests/setup", path.display())),
            None => problems.push(format!("{program}: {paths:?} belong to no Debian package")),
        }
    }
    assert!(problems.is_empty(), "programs a fresh machine would lack:\n{}", problems.join("\n"));
}

#[test]
fn a_missing_program_is_named() {
    let program = "fanlink-no-such-program";
    let e = Command::new(program).output().unwrap_err();
    let message = start_error(program.as_ref(), &e);
    assert!(message.starts_with("`fanlink-no-such-program` is not installed;"), "{message}");
    assert!(message.contains("tests/setup"), "{message}");
}
