//! The test suite's own machinery, so that it cannot pass while something is wrong: the
//! machine scenarios' runner prints a line for every scenario whatever a scenario raises
//! (tests/machines/lib/test_fleet.py), and tests/run's closing line counts every stage,
//! with a missing result line as a failure (tests/tally).

use crate::cli::TempDir;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_machine_runner_prints_every_scenarios_line_whatever_a_scenario_raises() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "test_fleet"])
        .current_dir(Path::new(ROOT).join("tests/machines/lib"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("\nOK"), "{text}");
}

/// tests/tally over stages given as (name, output, exit status, expected checks).
fn tally(stages: &[(&str, &str, i32, &str)]) -> (bool, String) {
    let dir = TempDir::new("tally");
    let names: Vec<&str> = stages.iter().map(|s| s.0).collect();
    dir.write("stages", &(names.join("\n") + "\n"));
    for (name, output, rc, expected) in stages {
        dir.write(name, output);
        dir.write(&format!("{name}.rc"), &format!("{rc}\n"));
        dir.write(&format!("{name}.expected"), expected);
    }
    let out = Command::new(Path::new(ROOT).join("tests/tally")).arg(dir.path()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn closing(text: &str) -> &str {
    text.lines().last().unwrap_or_default()
}

const TESTS: &str = "test result: ok. 7 passed; 0 failed; 2 ignored; 0 measured\n\
                     test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured\n";
const MACHINES: &str = "1-a\n2-b\n";

#[test]
fn every_stage_is_counted_in_the_closing_line() {
    let (ok, text) = tally(&[
        ("fmt", "", 0, ""),
        ("clippy", "    Finished\n", 0, ""),
        ("test", TESTS, 0, ""),
        ("fleet", "[fleet 9.0s] PASS: N=8\n", 0, ""),
        ("deb", "", 0, ""),
        (
            "machines",
            "machine scenario fleet/1-a: passed in 3.0 s\nmachine scenario fleet/2-b: skipped in 0.0 s: x\n",
            0,
            MACHINES,
        ),
        ("bench", "fanlink flap, warm ...\nbench smoke: 9 passed, 0 failed\n", 0, ""),
    ]);
    assert!(ok, "{text}");
    // fmt, clippy, fleet, deb: one each; 10 tests; one scenario; nine bench checks.
    assert_eq!(closing(&text), "fanlink: 24 passed, 0 failed, 3 skipped", "{text}");
    assert!(text.contains("stage fleet: 1 passed, 0 failed, 0 skipped (exit status 0)\n"), "{text}");
}

#[test]
fn a_failed_stage_without_failed_lines_is_counted_as_failed() {
    // The fleet test and the bench without their summary line count by exit status; cargo
    // test that did not build prints no "test result:" line at all.
    for (stage, output) in
        [("fleet", "FAIL: x\n"), ("bench", "bench/run: no figures\n"), ("test", "error[E0308]\n")]
    {
        let (ok, text) = tally(&[("fmt", "", 0, ""), (stage, output, 1, "")]);
        assert!(!ok, "{text}");
        assert_eq!(closing(&text), "fanlink: 1 passed, 1 failed, 0 skipped", "{stage}: {text}");
    }
    // A bench summary with a failure counts as it says, not once more.
    let (ok, text) = tally(&[("bench", "bench smoke: 7 passed, 2 failed\n", 1, "")]);
    assert!(!ok);
    assert_eq!(closing(&text), "fanlink: 7 passed, 2 failed, 0 skipped", "{text}");
}

#[test]
fn a_machine_scenario_without_its_line_is_a_failure() {
    // The runner ended after the first scenario and exited 0: the second is counted failed.
    let (ok, text) = tally(&[("machines", "machine scenario fleet/1-a: passed in 3.0 s\n", 0, MACHINES)]);
    assert!(!ok, "{text}");
    assert!(text.contains("stage machines: 2-b printed no result line: failed\n"), "{text}");
    assert_eq!(closing(&text), "fanlink: 1 passed, 1 failed, 0 skipped", "{text}");
    // No package, so the runner never ran: every scenario fails.
    let (ok, text) = tally(&[("machines", "machines: not run\n", 0, MACHINES)]);
    assert!(!ok);
    assert_eq!(closing(&text), "fanlink: 0 passed, 2 failed, 0 skipped", "{text}");
}
