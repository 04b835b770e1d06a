//! `fanlink import` as a person runs it: the corpus in `fixtures/import/` (good sources with
//! their exact output, bad ones with their exact errors), `--command`, stdin, and an
//! interface underlay read from a real link in a private network namespace.
//!
//! Each fixture `NAME.fan`, `NAME.sh` or `NAME.yaml` (`lxc network show`) may have a `NAME.args` with extra arguments; good
//! ones have the expected stdout in `NAME.toml`, bad ones the expected stderr in `NAME.err`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fanlink::config::parse_all;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/import");

/// Runs `fanlink import ARGS` in `dir`, feeding `stdin`.
fn import(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fanlink"))
        .arg("import")
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A run that reads a file, not stdin, may have exited before this is written.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The sources of one corpus directory, with their extra arguments.
fn sources(kind: &str) -> Vec<(PathBuf, Vec<String>)> {
    let dir = Path::new(CORPUS).join(kind);
    let mut found: Vec<(PathBuf, Vec<String>)> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "fan" || x == "sh" || x == "yaml"))
        .map(|p| {
            let args = fs::read_to_string(p.with_extension("args")).unwrap_or_default();
            let args = args.split_whitespace().map(String::from).collect();
            (p, args)
        })
        .collect();
    found.sort();
    found
}

fn run_fixture(path: &Path, args: &[String]) -> Output {
    let name = path.file_name().unwrap().to_str().unwrap();
    let mut all = vec![name];
    all.extend(args.iter().map(String::as_str));
    import(path.parent().unwrap(), &all, "")
}

/// The output must load with fanlink's own parser, every fan of it (a disabled one as a rule
/// with `enable = false`), and so must each disabled fan once it is enabled on its own.
fn assert_round_trips(toml: &str, what: &str) {
    let (rules, errors) = parse_all(&[(PathBuf::from(what), toml.to_string())]);
    assert!(errors.is_empty(), "{what}: {errors:?}");
    assert_eq!(rules.len(), toml.lines().filter(|l| *l == "[[fan]]").count(), "{what}");
    for block in toml.split("\n\n").filter(|b| b.contains("\nenable = false")) {
        let enabled = block.replace("\nenable = false", "\nenable = true");
        let (rules, errors) = parse_all(&[(PathBuf::from(what), enabled.clone())]);
        assert!(errors.is_empty() && rules.len() == 1, "{what}: disabled fan\n{enabled}\n{errors:?}");
    }
}

#[test]
fn good_corpus_translates_exactly_and_round_trips() {
    let good = sources("good");
    assert!(good.len() >= 6, "{good:?}");
    for (path, args) in good {
        let out = run_fixture(&path, &args);
        let what = path.display().to_string();
        assert_eq!((out.status.code(), text(&out.stderr)), (Some(0), String::new()), "{what}");
        let expected = fs::read_to_string(path.with_extension("toml")).unwrap();
        assert_eq!(text(&out.stdout), expected, "{what}");
        assert_round_trips(&expected, &what);
    }
}

#[test]
fn bad_corpus_is_refused_with_exact_errors_and_no_output() {
    let bad = sources("bad");
    assert!(bad.len() >= 11, "{bad:?}");
    for (path, args) in bad {
        let out = run_fixture(&path, &args);
        let what = path.display().to_string();
        let expected = fs::read_to_string(path.with_extension("err")).unwrap();
        assert_eq!(out.status.code(), Some(2), "{what}");
        assert_eq!(text(&out.stdout), "", "{what}: nothing on stdout");
        assert_eq!(text(&out.stderr), expected, "{what}");
    }
}

#[test]
fn the_seed_articles_command() {
    let out = import(Path::new(CORPUS), &["--command", "sudo fanctl up -u 10.0.0.0/16 -o 240.0.0.0/8"], "");
    assert_eq!((out.status.code(), text(&out.stderr)), (Some(0), String::new()));
    let expected = "# fanlink rules imported from --command by `fanlink import`.\n\
                    # Save as /etc/fanlink.d/NAME.toml, then run `fanlink check`.\n\
                    \n\
                    # command: sudo fanctl up -u 10.0.0.0/16 -o 240.0.0.0/8\n\
                    [[fan]]\n\
                    overlay = \"240.0.0.0/8\"\n\
                    underlay = \"10.0.0.0/16\"\n";
    assert_eq!(text(&out.stdout), expected);
}

#[test]
fn a_hook_script_is_recognised_without_script() {
    // The seed's networkd-dispatcher hook, where it lives: a file name that says nothing.
    let hook = fs::read_to_string(Path::new(CORPUS).join("good/seed-hook.sh")).unwrap();
    let expected = fs::read_to_string(Path::new(CORPUS).join("good/seed-hook.toml")).unwrap();
    let dir = crate::cli::TempDir::new("hook");
    dir.write("50-fan", &hook);
    for (args, origin) in [(&["50-fan"][..], "50-fan"), (&["-"], "<stdin>"), (&["--script", "-"], "<stdin>")]
    {
        let out = import(dir.path(), args, &hook);
        assert_eq!((out.status.code(), text(&out.stderr)), (Some(0), String::new()), "{args:?}");
        assert_eq!(text(&out.stdout), expected.replace("seed-hook.sh", origin), "{args:?}");
    }
    // No shebang: the fanctl line alone makes it a script, and its error is about fanctl's
    // arguments, not about /etc/network/fan's syntax.
    let out = import(dir.path(), &["-"], "if true; then\n  fanctl up -u 10.0.0.0/16\nfi\n");
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "<stdin>:2:3: error: `fanctl up` takes -u UNDERLAY -o OVERLAY [OPTIONS], e.g. `fanctl up -u 10.0.0.0/16 -o 250.0.0.0/8`\n\
         fanlink: cannot import <stdin>: 1 problem(s); nothing printed\n"
    );
}

#[test]
fn commands_are_refused_like_lines() {
    let cases = [
        (
            "fanctl up -u 10.0.0.0/16 -o 250.0.0.0/8 -t ipip",
            "--command:1:41: error: the ipip fan is not supported: fanlink builds the vxlan fan only (ipip was removed from LXD); use --type=vxlan on every host of this fan",
        ),
        (
            "fanctl show",
            "--command:1:1: error: not a `fanctl up` command; expected e.g. `fanctl up -u 10.0.0.0/16 -o 250.0.0.0/8`",
        ),
    ];
    for (command, error) in cases {
        let out = import(Path::new(CORPUS), &["--command", command], "");
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert_eq!(text(&out.stdout), "", "{command}");
        assert_eq!(
            text(&out.stderr),
            format!("{error}\nfanlink: cannot import --command: 1 problem(s); nothing printed\n")
        );
    }
}

#[test]
fn stdin_and_empty_sources() {
    let out =
        import(Path::new(CORPUS), &["-"], "# Underlay Overlay Flags\n10.0.0.0/16 250.0.0.0/8 --enable\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\n# <stdin>:2: 10.0.0.0/16 250.0.0.0/8 --enable\n[[fan]]\n"));

    let out = import(Path::new(CORPUS), &["-"], "# fan 250\n#10.0.0.0/16 250.0.0.0/8\n\n");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "# fanlink rules imported from <stdin> by `fanlink import`.\n\
         # Save as /etc/fanlink.d/NAME.toml, then run `fanlink check`.\n\
         # The source defines no fans.\n"
    );
    assert_eq!(text(&out.stderr), "fanlink: <stdin> has no fans\n");
}

#[test]
fn argument_errors() {
    let out = import(Path::new(CORPUS), &["does-not-exist.fan"], "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), "fanlink: does-not-exist.fan: No such file or directory (os error 2)\n");
    let out = import(Path::new(CORPUS), &["--underlay-prefix", "10.0.3.4/16", "-"], "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "fanlink: --underlay-prefix 10.0.3.4/16 has host bits set; did you mean 10.0.0.0/16?\n"
    );
}

/// Runs a tool in this thread's namespace.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored"]
fn interface_underlays_are_read_from_the_host() {
    // Only this thread moves; the fanlink child it spawns inherits the namespace.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    // A veth, since this project's test kernels may lack the dummy driver.
    ip(&["link", "add", "ens3", "type", "veth", "peer", "name", "ens3-peer"]);
    ip(&["link", "set", "ens3-peer", "up"]);
    ip(&["addr", "add", "10.0.9.9/32", "dev", "ens3"]);
    ip(&["addr", "add", "10.0.3.4/24", "dev", "ens3"]);
    ip(&["link", "set", "ens3", "up"]);
    ip(&["route", "add", "default", "via", "10.0.3.1", "dev", "ens3"]);

    let source = "ens3/16 250.0.0.0/8\ndefault 240.0.0.0/8\n";
    let out = import(Path::new(CORPUS), &["-"], source);
    assert_eq!((out.status.code(), text(&out.stderr)), (Some(0), String::new()));
    let expected = "# fanlink rules imported from <stdin> by `fanlink import`.\n\
                    # Save as /etc/fanlink.d/NAME.toml, then run `fanlink check`.\n\
                    \n\
                    # <stdin>:1: ens3/16 250.0.0.0/8\n\
                    # underlay 10.0.0.0/16: from ens3's address 10.0.3.4/24 on this host\n\
                    [[fan]]\n\
                    overlay = \"250.0.0.0/8\"\n\
                    underlay = \"10.0.0.0/16\"\n\
                    interface = \"ens3\"\n\
                    \n\
                    # <stdin>:2: default 240.0.0.0/8\n\
                    # `default`: ens3 has the default route on this host\n\
                    # underlay 10.0.3.0/24: from ens3's address 10.0.3.4/24 on this host\n\
                    # no `interface`: fanlink uses the link that has an address in the underlay\n\
                    [[fan]]\n\
                    overlay = \"240.0.0.0/8\"\n\
                    underlay = \"10.0.3.0/24\"\n";
    assert_eq!(text(&out.stdout), expected);
    assert_round_trips(expected, "netns");

    let out = import(Path::new(CORPUS), &["-"], "ens9/16 250.0.0.0/8\n");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "<stdin>:1:1: error: this host has no interface named ens9; give the underlay with --underlay-prefix\n\
         fanlink: cannot import <stdin>: 1 problem(s); nothing printed\n"
    );
}
