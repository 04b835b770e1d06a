//! Reading the rule files: which files take effect, and each one's bytes and `fstat` as read.

use super::{parse_all, Rule, RuleError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The rule files that take effect: `*.toml` by file name, an earlier directory masking a
/// later one, a link to /dev/null masking the name altogether. Sorted by file name.
pub fn rule_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut chosen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".toml") && !name.starts_with('.') {
                chosen.entry(name).or_insert_with(|| entry.path());
            }
        }
    }
    chosen
        .into_values()
        .filter(|path| std::fs::canonicalize(path).map(|p| p != Path::new("/dev/null")).unwrap_or(true))
        .collect()
}

/// One rule file as read: its text (or why it could not be read) and what `fstat` said of
/// it just before and just after the read. Two reads that are equal saw the same file: a
/// write changes its text, size, mtime or ctime (which no one can set back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRead {
    pub path: PathBuf,
    stamps: [Option<Stamp>; 2],
    text: Result<String, String>,
}

/// What of a file's `fstat` a write changes (not atime, which reading it may change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
}

impl Stamp {
    fn of(file: &std::fs::File) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().ok()?;
        let (ino, size, mode) = (m.ino(), m.size(), m.mode());
        Some(Stamp {
            ino,
            size,
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            mode,
        })
    }
}

/// Reads every rule file of `dirs` (see `rule_files`) once.
pub fn read_files(dirs: &[PathBuf]) -> Vec<FileRead> {
    use std::io::Read;
    let read = |path: PathBuf| {
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => return FileRead { path, stamps: [None, None], text: Err(e.to_string()) },
        };
        let before = Stamp::of(&file);
        let mut text = String::new();
        let text = file.read_to_string(&mut text).map(|_| text).map_err(|e| e.to_string());
        FileRead { path, stamps: [before, Stamp::of(&file)], text }
    };
    rule_files(dirs).into_iter().map(read).collect()
}

/// Every valid rule of the files read (in their order), and every error found.
pub fn parse_reads<'a>(reads: impl IntoIterator<Item = &'a FileRead>) -> (Vec<Rule>, Vec<RuleError>) {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for read in reads {
        let path = read.path.clone();
        warn_if_writable_by_others(&path, read.stamps[1]);
        match &read.text {
            Ok(text) => sources.push((path, text.clone())),
            Err(e) => errors.push(RuleError { path, position: None, message: format!("cannot read: {e}") }),
        }
    }
    let (rules, mut more) = parse_all(&sources);
    errors.append(&mut more);
    (rules, errors)
}

fn warn_if_writable_by_others(path: &Path, stamp: Option<Stamp>) {
    if stamp.is_some_and(|s| s.mode & 0o002 != 0) {
        log::warn!("{}: is world-writable; anyone on this host can change its fans", path.display());
    }
}
