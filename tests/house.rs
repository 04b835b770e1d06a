//! The house's shape, where a refactor put one thing in one place: checked on the sources,
//! so that a second copy coming back fails here rather than in review.

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn source(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap()
}

/// The Rust files under `dir`, with their text.
fn sources_under(dir: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut dirs = vec![Path::new(ROOT).join(dir)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path.strip_prefix(ROOT).unwrap().display().to_string();
                found.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    found
}

#[test]
fn the_cli_does_not_depend_on_the_generator() {
    // generate.rs renders the clap command; cli.rs declares it, `Artifact` included.
    assert!(source("src/generate.rs").contains("use crate::cli::"));
    assert!(!source("src/cli.rs").contains("generate::"), "src/cli.rs names the generate module");
}

#[test]
fn the_daemon_reaches_networkd_the_way_the_tests_do() {
    // One function connects, subscribes, starts delivering and reads the state:
    // networkd::attach, which also covers "networkd not on the bus yet".
    let follow = source("src/daemon/follow.rs");
    assert!(follow.contains("networkd::attach("), "follow.rs does not use networkd::attach");
    for step in ["Networkd::connect", ".subscribe()", ".deliver("] {
        assert!(!follow.contains(step), "follow.rs repeats a step of networkd::attach: {step}");
    }
}

#[test]
fn the_tests_start_the_daemon_in_one_place() {
    let launchers: Vec<String> = sources_under("tests")
        .into_iter()
        .filter(|(name, _)| name != "tests/house.rs")
        .filter(|(_, text)| text.contains("struct Daemon") || text.contains(".arg(\"run\")"))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(launchers, ["tests/launch.rs"], "the daemon launcher is in one file");
    let launch = source("tests/launch.rs");
    assert_eq!(launch.matches("struct Daemon").count(), 1);
    assert_eq!(launch.matches(".arg(\"run\")").count(), 1, "one place builds `fanlink run`");
}
