//! The daemon reads the rule files so that it never acts on one caught mid-write.
//!
//! An in-place rewrite (`>` in a shell, many editors) truncates the file and writes it in
//! pieces. A read between two pieces sees a prefix that does not change while it is read and
//! may be valid rules with a fan or a key missing, so no check on one read can catch it
//! (a size or mtime that changes during the read catches only a write during those few
//! microseconds). A second read a moment later does: the daemon reads the files until two
//! reads `INTERVAL` apart agree, text and `fstat` alike. A file still changing after `READS`
//! reads is an error, so the reload is refused and the running rules are kept. This costs
//! one wait per reload or start, and nothing while the daemon is idle.

use crate::config::{self, FileRead, Rule, RuleError};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Between two reads that must agree: longer than a writer's pause between two writes (a
/// few ms), short enough to go unnoticed in a reload.
const INTERVAL: Duration = Duration::from_millis(50);
/// Reads before a file that keeps changing is refused: 200 ms of waiting at most.
const READS: usize = 5;

/// The rules in effect and every error, as `config::load`, from reads that agreed. A file
/// that never stayed unchanged is left out with an error, like a file that does not parse.
pub fn load(dirs: &[PathBuf]) -> (Vec<Rule>, Vec<RuleError>) {
    let (reads, changing) = settle(|| config::read_files(dirs), || std::thread::sleep(INTERVAL), READS);
    let (rules, mut errors) = config::parse_reads(reads.iter().filter(|r| !changing.contains(&r.path)));
    errors.extend(changing.into_iter().map(|path| RuleError {
        path,
        position: None,
        message: format!(
            "changed between each of {READS} reads {} ms apart (is it being written?); \
             not used until it stays unchanged: reload again once it is written",
            INTERVAL.as_millis()
        ),
    }));
    (config::in_effect(rules), errors)
}

/// Reads (at least twice, at most `reads` times) until two reads in a row agree; returns
/// the last read and the paths that differed between the last two (none: they agreed).
fn settle(
    mut read: impl FnMut() -> Vec<FileRead>,
    mut wait: impl FnMut(),
    reads: usize,
) -> (Vec<FileRead>, Vec<PathBuf>) {
    let mut last = read();
    let mut changing = Vec::new();
    for _ in 1..reads.max(2) {
        wait();
        let next = read();
        changing = differing(&last, &next);
        last = next;
        if changing.is_empty() {
            break;
        }
    }
    (last, changing)
}

/// The paths whose reads differ, or that only one of `a` and `b` has.
fn differing(a: &[FileRead], b: &[FileRead]) -> Vec<PathBuf> {
    let find = |reads: &[FileRead], path: &PathBuf| reads.iter().find(|r| &r.path == path).cloned();
    let paths: BTreeSet<&PathBuf> = a.iter().chain(b).map(|r| &r.path).collect();
    paths.into_iter().filter(|p| find(a, p) != find(b, p)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own for each test, removed at the end (also when it fails).
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("fanlink-settled-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Reads of a real directory whose file is rewritten before each read, as `rewrites` says.
    fn settle_over(tag: &str, rewrites: &[Option<&str>], reads: usize) -> (Vec<String>, Vec<PathBuf>, usize) {
        let dir = Dir::new(tag);
        let path = dir.path().join("60-a.toml");
        let dirs = [dir.path().to_path_buf()];
        let mut next = rewrites.iter();
        let mut read_count = 0;
        let mut read = || {
            if let Some(Some(text)) = next.next() {
                std::fs::write(&path, text).unwrap();
            }
            read_count += 1;
            config::read_files(&dirs)
        };
        let (last, changing) = settle(&mut read, || {}, reads);
        let texts = last.iter().map(|r| format!("{r:?}")).collect();
        (texts, changing, read_count)
    }

    const FAN: &str = "[[fan]]\noverlay = \"251.0.0.0/8\"\nunderlay = \"10.99.0.0/16\"\nmtu = 1300\n";

    #[test]
    fn a_file_left_alone_is_read_twice() {
        // Reading changes atime: it is not part of what must agree.
        let (texts, changing, reads) = settle_over("alone", &[Some(FAN)], 5);
        assert_eq!((changing, reads), (vec![], 2));
        assert!(texts[0].contains("mtu = 1300"), "{texts:?}");
    }

    #[test]
    fn a_file_being_written_is_read_until_two_reads_agree() {
        // Truncated, a prefix that is valid rules without the mtu, then the rest.
        let prefix = &FAN[..FAN.find("mtu").unwrap()];
        let (texts, changing, reads) = settle_over("written", &[Some(""), Some(prefix), Some(FAN)], 5);
        assert_eq!((changing, reads), (vec![], 4));
        assert!(texts[0].contains("mtu = 1300"), "{texts:?}");
    }

    #[test]
    fn a_file_that_keeps_changing_is_named() {
        let rewrites: Vec<_> = (0..5).map(|i| Some(["", FAN][i % 2])).collect();
        let (_, changing, reads) = settle_over("changing", &rewrites, 5);
        assert_eq!(reads, 5);
        assert_eq!(changing.len(), 1);
        assert!(changing[0].ends_with("60-a.toml"), "{changing:?}");
    }

    #[test]
    fn a_file_that_appears_or_goes_differs() {
        let dir = Dir::new("appears");
        std::fs::write(dir.path().join("a.toml"), FAN).unwrap();
        let one = config::read_files(&[dir.path().to_path_buf()]);
        std::fs::write(dir.path().join("b.toml"), FAN).unwrap();
        let two = config::read_files(&[dir.path().to_path_buf()]);
        assert_eq!(differing(&one, &two), [dir.path().join("b.toml")]);
        assert_eq!(differing(&two, &one), [dir.path().join("b.toml")]);
        assert_eq!(differing(&two, &two), Vec::<PathBuf>::new());
    }

    #[test]
    fn the_same_text_written_again_differs() {
        // Renamed over it with the same bytes: the inode tells (both exist at once).
        let dir = Dir::new("renamed");
        let path = dir.path().join("a.toml");
        std::fs::write(&path, FAN).unwrap();
        let one = config::read_files(&[dir.path().to_path_buf()]);
        let tmp = dir.path().join(".a.toml.tmp");
        std::fs::write(&tmp, FAN).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let two = config::read_files(&[dir.path().to_path_buf()]);
        assert_eq!(differing(&one, &two), [path]);
    }
}
