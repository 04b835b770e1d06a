//! The CLI as a person runs it: `check` on good and bad rules, drop-in precedence,
//! `addr` and `docker-args`. Full output strings are asserted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A directory removed when dropped, also when the test fails.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("fanlink-{tag}-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn fanlink(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fanlink")).args(args).env_remove("RUST_LOG").output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `check` on a directory holding just this fixture; returns (exit code, stderr without the dir).
fn check_fixture(name: &str) -> (i32, String) {
    let dir = TempDir::new("check");
    fs::copy(Path::new(FIXTURES).join("bad").join(name), dir.path().join(name)).unwrap();
    let out = fanlink(&["check", "--rules-dir", dir.path().to_str().unwrap()]);
    let prefix = format!("{}/", dir.path().display());
    (out.status.code().unwrap(), text(&out.stderr).replace(&prefix, ""))
}

#[test]
fn every_rule_error_names_file_line_and_column() {
    let cases = [
        ("bad-name.toml", "bad-name.toml:2:8: error: `name`: \"fan/250\" contains '/', which interface names cannot contain"),
        ("default-name-clash.toml", "default-name-clash.toml:6:8: error: a fan named \"fan-250\" is already defined at default-name-clash.toml:1:1; give this one another `name`"),
        ("dhcp-no-room.toml", "dhcp-no-room.toml:5:8: error: `dhcp = true` has no address to hand out: a /30 slice has none left beside the host's 1 and Docker's share 1/2; set docker-share = \"none\" or a smaller host-reserve"),
        ("duplicate-name.toml", "duplicate-name.toml:7:8: error: a fan named \"fan-a\" is already defined at duplicate-name.toml:2:8; give this one another `name`"),
        ("empty.toml", "empty.toml: error: the file is empty (is it being written?); a file without fans needs at least a comment"),
        ("host-reserve.toml", "host-reserve.toml:4:16: error: `host-reserve = 200` does not fit a /24 slice with docker-share \"1/2\": at most 127 addresses"),
        ("long-name.toml", "long-name.toml:2:8: error: `name`: \"fan-250-overlay0\" is 16 bytes long; interface names have at most 15"),
        ("loopback.toml", "loopback.toml:2:11: error: overlay 127.0.0.0/8 overlaps 127.0.0.0/8 (loopback); use an unused range such as 240.0.0.0/8 to 254.0.0.0/8"),
        ("masquerade.toml", "masquerade.toml:4:14: error: `masquerade` must be true or false, not \"yes\""),
        ("missing-overlay.toml", "missing-overlay.toml:1:1: error: this fan has no `overlay`; add e.g. overlay = \"250.0.0.0/8\""),
        ("mtu.toml", "mtu.toml:4:7: error: `mtu` must be an integer from 576 to 9000, not 100000"),
        ("multicast.toml", "multicast.toml:2:11: error: overlay 224.0.0.0/8 overlaps 224.0.0.0/4 (multicast); use an unused range such as 240.0.0.0/8 to 254.0.0.0/8"),
        ("narrow-slice.toml", "narrow-slice.toml:2:11: error: overlay 250.0.0.0/16 over underlay 10.0.0.0/16 gives each host a /32 slice, narrower than /30; use an overlay of /14 or wider"),
        ("not-a-prefix.toml", "not-a-prefix.toml:2:11: error: `overlay` \"250.0.0.0\" is not an IPv4 prefix such as \"250.0.0.0/8\""),
        ("overlapping-overlays.toml", "overlapping-overlays.toml:7:11: error: overlay 250.7.0.0/16 overlaps overlay 250.0.0.0/8 of fan \"fan-250\" at overlapping-overlays.toml:2:11"),
        ("same-vni.toml", "same-vni.toml:8:11: error: overlay 250.1.1.64/26 would use VNI 16384257, which overlay 250.1.1.0/26 of fan \"fan-a\" at same-vni.toml:3:11 uses; two fans need overlays in different /24s"),
        ("syntax.toml", "syntax.toml:1:7: error: unclosed array table, expected `]`"),
        ("this-network.toml", "this-network.toml:2:11: error: overlay 0.0.0.0/8 overlaps 0.0.0.0/8 (\"this network\"); use an unused range such as 240.0.0.0/8 to 254.0.0.0/8"),
        ("tiny-underlay.toml", "tiny-underlay.toml:2:11: error: underlay 10.0.0.0/31 leaves fewer than 2 host bits, so no host can own a slice; use /30 or wider"),
        ("unaligned.toml", "unaligned.toml:2:11: error: overlay 250.1.0.0/8 has host bits set; did you mean 250.0.0.0/8?"),
        ("unknown-key.toml", "unknown-key.toml:4:1: error: unknown key `colour`; a fan has name, overlay, underlay, interface, mtu, masquerade, dhcp, dhcp-lease, host-reserve, docker-share, enable"),
        ("unknown-table.toml", "unknown-table.toml:1:1: error: unknown field `fans`, expected `fan`"),
        ("wrong-type.toml", "wrong-type.toml:3:12: error: `underlay` must be a string such as \"10.0.0.0/16\", not an integer"),
    ];
    let listed: Vec<String> = fs::read_dir(Path::new(FIXTURES).join("bad"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed.len(), cases.len(), "every fixture has a case: {listed:?}");
    for (file, expected) in cases {
        let (code, stderr) = check_fixture(file);
        assert_eq!(code, 1, "{file}");
        assert_eq!(stderr, format!("{expected}\nfanlink: 1 error(s) in the rules\n"), "{file}");
    }
}

#[test]
fn check_reports_all_errors_of_all_files() {
    let dir = TempDir::new("many");
    for name in ["mtu.toml", "unknown-key.toml", "wrong-type.toml"] {
        fs::copy(Path::new(FIXTURES).join("bad").join(name), dir.path().join(name)).unwrap();
    }
    dir.write(
        "50-two.toml",
        "[[fan]]\nname = \"a b\"\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\nmtu = 10\n",
    );
    let out = fanlink(&["check", "--rules-dir", dir.path().to_str().unwrap()]);
    let stderr = text(&out.stderr).replace(&format!("{}/", dir.path().display()), "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr,
        "50-two.toml:2:8: error: `name`: \"a b\" contains ' ', which interface names cannot contain\n\
         50-two.toml:5:7: error: `mtu` must be an integer from 576 to 9000, not 10\n\
         mtu.toml:4:7: error: `mtu` must be an integer from 576 to 9000, not 100000\n\
         unknown-key.toml:4:1: error: unknown key `colour`; a fan has name, overlay, underlay, interface, mtu, masquerade, dhcp, dhcp-lease, host-reserve, docker-share, enable\n\
         wrong-type.toml:3:12: error: `underlay` must be a string such as \"10.0.0.0/16\", not an integer\n\
         fanlink: 5 error(s) in the rules\n"
    );
}

#[test]
fn errors_across_files_point_at_the_key_and_cite_the_earlier_one() {
    let dir = TempDir::new("across");
    let fan = |name: &str, overlay: &str| {
        format!("# lab\n\n[[fan]]\n# why\nunderlay = \"10.0.0.0/16\"\nname = \"{name}\"\noverlay = \"{overlay}\"\n")
    };
    dir.write("20-a.toml", &fan("fan-a", "250.0.0.0/8"));
    dir.write("21-b.toml", &fan("fan-a", "251.0.0.0/8"));
    dir.write("22-c.toml", &fan("fan-c", "250.4.0.0/14"));
    dir.write("23-d.toml", "[[fan]]\nunderlay = \"10.0.0.0/16\"\n  overlay = \"250.0.0.0/8\"\n");
    let out = fanlink(&["check", "--rules-dir", dir.path().to_str().unwrap()]);
    let stderr = text(&out.stderr).replace(&format!("{}/", dir.path().display()), "");
    assert_eq!(
        stderr,
        "21-b.toml:6:8: error: a fan named \"fan-a\" is already defined at 20-a.toml:6:8; give this one another `name`\n\
         22-c.toml:7:11: error: overlay 250.4.0.0/14 overlaps overlay 250.0.0.0/8 of fan \"fan-a\" at 20-a.toml:7:11\n\
         23-d.toml:3:13: error: overlay 250.0.0.0/8 overlaps overlay 250.0.0.0/8 of fan \"fan-a\" at 20-a.toml:7:11\n\
         fanlink: 3 error(s) in the rules\n"
    );
}

#[test]
fn check_lists_good_fans() {
    let good = format!("{FIXTURES}/good");
    let out = fanlink(&["check", "--rules-dir", &good]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "fan-240  overlay 240.0.0.0/8  underlay 10.0.0.0/16  vni 15728640  link ens3  mtu auto  masquerade on  ({good}/lxd.toml:2)\n\
             fan-250  overlay 250.0.0.0/8  underlay 192.168.1.0/24  vni 16384000  link auto  mtu 1400  masquerade off  ({good}/lxd.toml:8)\n"
        )
    );
}

#[test]
fn earlier_directories_mask_later_ones_and_dev_null_masks_all() {
    let (etc, lib) = (TempDir::new("etc"), TempDir::new("lib"));
    let fan = |octet: u8| format!("[[fan]]\noverlay = \"{octet}.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\n");
    lib.write("10-a.toml", &fan(240));
    etc.write("10-a.toml", &fan(241));
    lib.write("20-b.toml", &fan(242));
    std::os::unix::fs::symlink("/dev/null", etc.path().join("20-b.toml")).unwrap();
    lib.write("05-c.toml", &fan(243));
    lib.write("30-d.conf", &fan(244));
    let out = fanlink(&[
        "check",
        "--rules-dir",
        etc.path().to_str().unwrap(),
        "--rules-dir",
        lib.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let names: Vec<String> =
        text(&out.stdout).lines().map(|l| l.split_whitespace().next().unwrap().to_string()).collect();
    assert_eq!(names, ["fan-243", "fan-241"], "05-c from lib, 10-a from etc, 20-b masked, .conf ignored");
}

#[test]
fn addr_computes_the_slice() {
    let args = ["addr", "--overlay", "250.0.0.0/8", "--underlay", "10.0.0.0/16", "--address", "10.0.3.4"];
    let out = fanlink(&args);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "overlay         250.0.0.0/8\nunderlay        10.0.0.0/16\naddress         10.0.3.4\n\
         slice           250.3.4.0/24\nbridge address  250.3.4.1/8\nvni             16384000\n\
         fan hosts       10.0.0.1 - 10.0.255.254 (each owns a /24)\n\
         host addresses  250.3.4.1 (the bridge)\n\
         dhcp range      250.3.4.2 - 250.3.4.127 (126 addresses)\n\
         docker range    250.3.4.128/25 (--ip-range; 250.3.4.255 kept out)\n"
    );
    let out = fanlink(&[&args[..], &["--json"]].concat());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["slice"], "250.3.4.0/24");
    assert_eq!(json["bridge_address"], "250.3.4.1/8");
    assert_eq!(json["vni"], 16384000);
    assert_eq!(
        json["plan"],
        serde_json::json!({
            "host": ["250.3.4.1", "250.3.4.1"],
            "dhcp": ["250.3.4.2", "250.3.4.127"],
            "docker_ip_range": "250.3.4.128/25",
            "docker_aux_addresses": ["250.3.4.255"],
        })
    );
}

#[test]
fn addr_shows_the_rules_split() {
    let dir = TempDir::new("split");
    dir.write(
        "50-split.toml",
        "[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\nhost-reserve = 10\ndocker-share = \"1/4\"\n",
    );
    let out =
        fanlink(&["--rules-dir", dir.path().to_str().unwrap(), "addr", "fan-250", "--address", "10.0.3.4"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with(
            "host addresses  250.3.4.1 - 250.3.4.10 (the bridge and 9 reserved)\n\
             dhcp range      250.3.4.11 - 250.3.4.191 (181 addresses)\n\
             docker range    250.3.4.192/26 (--ip-range; 250.3.4.255 kept out)\n"
        ),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn addr_by_rule_name_and_its_errors() {
    let good = format!("{FIXTURES}/good");
    let out = fanlink(&["--rules-dir", &good, "addr", "fan-250", "--address", "192.168.1.178"]);
    assert!(text(&out.stdout).contains("slice           250.178.0.0/16\n"), "{}", text(&out.stdout));
    let out = fanlink(&["--rules-dir", &good, "addr", "fan-250", "--address", "192.168.1.255"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "fanlink: 192.168.1.255 is the broadcast address of 192.168.1.0/24; its host part is all ones and owns no slice\n"
    );
    let out = fanlink(&["--rules-dir", &good, "addr", "fan-9", "--address", "10.0.0.1"]);
    assert_eq!(text(&out.stderr), format!("fanlink: no fan named \"fan-9\" in {good}\n"));
}

/// The words `docker network create $(fanlink docker-args ...)` gets: split as the shell
/// splits an unquoted expansion (on whitespace; nothing to glob), and each one an option
/// `docker network create` takes, with its value.
fn docker_words(stdout: &[u8]) -> Vec<String> {
    let line = text(stdout);
    assert!(line.ends_with('\n') && line.lines().count() == 1, "one line: {line:?}");
    let words: Vec<String> = line.split_whitespace().map(String::from).collect();
    for w in &words {
        assert!(!w.contains(['*', '?', '[', '\'', '"', '\\', '$', '`']), "{w} is not shell-safe");
    }
    let mut i = 0;
    while i + 1 < words.len() {
        match words[i].split_once('=').map_or(words[i].as_str(), |(k, _)| k) {
            "--driver" | "-o" => i += 2,
            "--subnet" | "--gateway" | "--ip-range" | "--aux-address" => i += 1,
            other => panic!("`{other}` is not an option of docker network create we print: {words:?}"),
        }
    }
    assert_eq!(i, words.len() - 1, "the network's name last: {words:?}");
    words
}

#[test]
fn docker_args_are_words_for_docker_network_create() {
    let good = format!("{FIXTURES}/good");
    let out = fanlink(&["--rules-dir", &good, "docker-args", "fan-240", "--address", "10.0.3.4"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        docker_words(&out.stdout),
        [
            "--driver",
            "bridge",
            "--subnet=240.0.0.0/8",
            "--gateway=240.3.4.1",
            "--ip-range=240.3.4.128/25",
            "--aux-address=last=240.3.4.255",
            "-o",
            "com.docker.network.bridge.name=fan-240",
            "-o",
            "com.docker.network.driver.mtu=1450",
            "fan-240",
        ]
    );
    let named = |network: &str| {
        let address = ["--address", "192.168.1.178"];
        fanlink(
            &[&["--rules-dir", &good, "docker-args", "fan-250"], &address[..], &["--network-name", network]]
                .concat(),
        )
    };
    let words = docker_words(&named("web").stdout);
    assert_eq!(words.last().map(String::as_str), Some("web"));
    assert!(words.contains(&"--ip-range=250.178.128.0/17".to_string()), "{words:?}");
    assert!(words.contains(&"com.docker.network.driver.mtu=1400".to_string()), "the rule's mtu: {words:?}");
    let out = named("a b");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "fanlink: --network-name \"a b\": a Docker network name is letters, digits, '_', '.' and '-', starting with a letter or digit\n"
    );
    let help = text(&fanlink(&["docker-args", "--help"]).stdout);
    assert!(help.contains("Run it as: docker network create $(fanlink docker-args fan-250)"), "{help}");
    assert!(help.contains("--driver bridge --subnet=OVERLAY --gateway=BRIDGE-ADDRESS"), "{help}");
}

#[test]
#[ignore = "needs root (a network namespace): run with --include-ignored"]
fn docker_args_read_this_hosts_underlay_address_from_the_kernel() {
    let good = format!("{FIXTURES}/good");
    let ns = crate::topology::Netns::new("fldk");
    let fanlink = env!("CARGO_BIN_EXE_fanlink");
    let run = |args: &str| ns.sh(&format!("{fanlink} --rules-dir {good} {args}"));
    // No address in the underlay yet: a clear error, nothing on stdout.
    let out = run("docker-args fan-240");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "fanlink: fan-240: the underlay interface ens3 does not exist; give this host's underlay address with --address\n"
    );
    ns.run("ip link add ens3 mtu 9000 type veth peer name ens3p && ip addr add 10.0.7.9/16 dev ens3 && ip link set ens3 up");
    let out = run("docker-args fan-240");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let words = docker_words(&out.stdout);
    assert!(words.contains(&"--ip-range=240.7.9.128/25".to_string()), "{words:?}");
    assert!(words.contains(&"--gateway=240.7.9.1".to_string()), "{words:?}");
    assert!(
        words.contains(&"com.docker.network.driver.mtu=8950".to_string()),
        "the link's MTU - 50: {words:?}"
    );
    let out = run("addr fan-240");
    assert!(text(&out.stdout).contains("slice           240.7.9.0/24\n"), "{}", text(&out.stdout));
}

#[test]
fn a_fan_given_by_prefixes_is_named_with_name_or_its_alias_bridge() {
    let by = |flag: &str| {
        let args =
            ["docker-args", "--overlay", "250.0.0.0/8", "--underlay", "10.0.0.0/16", "--address", "10.0.3.4"];
        fanlink(&[&args[..], &[flag, "lab0"]].concat())
    };
    let (name, bridge) = (by("--name"), by("--bridge"));
    assert_eq!(name.status.code(), Some(0), "{}", text(&name.stderr));
    assert!(
        text(&name.stdout).contains(" -o com.docker.network.bridge.name=lab0 "),
        "{}",
        text(&name.stdout)
    );
    assert!(text(&name.stdout).ends_with(" lab0\n"), "{}", text(&name.stdout));
    assert_eq!(text(&bridge.stdout), text(&name.stdout), "--bridge is an alias of --name");
    // `up` checks the name before it touches the kernel, so this runs without root.
    for flag in ["--name", "--bridge"] {
        let out = fanlink(&["up", "--overlay", "250.0.0.0/8", "--underlay", "10.0.0.0/16", flag, "a b"]);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            text(&out.stderr),
            "fanlink: --name: \"a b\" contains ' ', which interface names cannot contain\n"
        );
    }
    // One word in the help: the rule's.
    for sub in ["up", "docker-args"] {
        let help = text(&fanlink(&[sub, "--help"]).stdout);
        assert!(help.contains("--name <NAME>") && !help.contains("--bridge"), "{sub}: {help}");
    }
    let out = fanlink(&["up", "fan-250", "--name", "lab0"]);
    assert_eq!(out.status.code(), Some(2), "a configured fan has its name already");
}

#[test]
fn help_and_version() {
    let out = fanlink(&["-V"]);
    assert_eq!(text(&out.stdout), format!("fanlink {}\n", env!("CARGO_PKG_VERSION")));
    // The long form adds the commit (when built from git) and the build date, from build.rs.
    let out = fanlink(&["--version"]);
    let long = text(&out.stdout);
    assert!(long.starts_with(&format!("fanlink {} (", env!("CARGO_PKG_VERSION"))), "{long}");
    assert!(long.ends_with(&format!("{})\n", env!("FANLINK_BUILD_DATE"))), "{long}");
    for sub in ["check", "addr", "docker-args"] {
        let out = fanlink(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub}");
        assert!(text(&out.stdout).contains("Usage: fanlink"), "{sub}");
    }
    let out = fanlink(&["addr", "--address", "10.0.0.1"]);
    assert_eq!(out.status.code(), Some(2), "a fan must be named or given by prefixes");
}
