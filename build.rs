//! Build script: stamps the commit and the build date into `fanlink --version` and the man
//! page. The date comes from `SOURCE_DATE_EPOCH` when set (reproducible builds: the .deb
//! build sets it to the commit time), else from the clock. No dependencies: the date is
//! converted by hand.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let date = civil_date(epoch);
    // A source tarball has no git: the version then carries the date alone.
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    let long = match &commit {
        Some(c) => format!("{} ({c} {date})", env!("CARGO_PKG_VERSION")),
        None => format!("{} ({date})", env!("CARGO_PKG_VERSION")),
    };
    println!("cargo:rustc-env=FANLINK_BUILD_DATE={date}");
    println!("cargo:rustc-env=FANLINK_LONG_VERSION={long}");
    // Re-run when HEAD moves. `--git-path` resolves through a worktree's `.git` file; the
    // branch ref may be loose or packed, so watch both.
    for path in ["HEAD", "packed-refs"] {
        watch(git(&["rev-parse", "--git-path", path]));
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &r]));
    }
}

fn watch(path: Option<String>) {
    if let Some(p) = path.filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// `YYYY-MM-DD` (UTC) of a Unix time: Howard Hinnant's days-to-civil algorithm.
fn civil_date(epoch: u64) -> String {
    let z = (epoch / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
