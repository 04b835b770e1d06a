//! `fanlink generate`: the manual page `fanlink(8)` and the bash, zsh and fish completions,
//! rendered from the clap definitions in `cli.rs` so that they cannot drift from the binary.
//! The dependency runs one way: this module reads `cli` (the command and `Artifact`), `cli`
//! knows nothing of it.
//! `packaging/build-deb` runs it before `cargo deb`; the output is not committed.
//!
//! The man page is one page for the whole tool: clap_mangen's own subcommand list points at
//! `fanlink-check(8)` and friends, pages a tool this small should not need, so each command
//! gets a subsection of `fanlink(8)` instead, built from clap_mangen's section renderers.

use crate::cli::{Artifact, Cli};
use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name an artifact is written to under `--out`.
pub fn file_name(what: Artifact) -> &'static str {
    match what {
        Artifact::Man => "fanlink.8",
        Artifact::CompleteBash => "fanlink.bash",
        Artifact::CompleteZsh => "_fanlink",
        Artifact::CompleteFish => "fanlink.fish",
    }
}

/// `fanlink generate WHAT [--out DIR]`: to stdout, or to `DIR/<file_name>` (path printed).
pub fn run(what: Artifact, out: Option<&Path>) -> Result<u8> {
    let text = render(what)?;
    match out {
        None => std::io::stdout().write_all(&text).context("stdout")?,
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            let path: PathBuf = dir.join(file_name(what));
            std::fs::write(&path, &text).with_context(|| path.display().to_string())?;
            println!("{}", path.display());
        }
    }
    Ok(0)
}

/// The artifact's bytes.
pub fn render(what: Artifact) -> Result<Vec<u8>> {
    let shell = match what {
        Artifact::Man => return Ok(man_page()?.into_bytes()),
        Artifact::CompleteBash => Shell::Bash,
        Artifact::CompleteZsh => Shell::Zsh,
        Artifact::CompleteFish => Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "fanlink", &mut buf);
    Ok(buf)
}

/// `fanlink(8)`: clap_mangen's title, name, synopsis, description and global options, then a
/// COMMANDS section with a subsection per visible command, then what clap does not know.
fn man_page() -> Result<String> {
    let mut cmd = Cli::command();
    cmd.build();
    let subs: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    // Hidden from clap_mangen's top part, whose list points at fanlink-NAME(8) pages that do not
    // exist; COMMANDS below describes them instead.
    let names: Vec<String> = subs.iter().map(|s| s.get_name().to_string()).collect();
    for name in &names {
        cmd = cmd.mut_subcommand(name, |s| s.hide(true));
    }
    let man = Man::new(cmd).section("8").date(env!("FANLINK_BUILD_DATE")).manual("System Administration");
    let mut page = String::new();
    page += &capture(|w| man.render_title(w))?;
    page += &capture(|w| man.render_name_section(w))?;
    page += &capture(|w| man.render_synopsis_section(w))?;
    page += &capture(|w| man.render_description_section(w))?;
    page += &capture(|w| man.render_options_section(w))?;

    page += ".SH COMMANDS\n";
    for sub in subs {
        page += &command_section(sub)?;
    }
    page += &strip_preamble(&trailer().render());
    Ok(format!("{}{page}", Roff::new().render()))
}

/// One command's subsection: synopsis, description, and its own options (the global ones are
/// described once, at the top).
fn command_section(sub: clap::Command) -> Result<String> {
    let name = format!("fanlink {}", sub.get_name());
    // `-h` is on every command and said once at the top, like the global options.
    let sub = sub
        .mut_args(|a| if a.is_global_set() || a.get_id() == "help" { a.hide(true) } else { a })
        .bin_name(&name);
    let man = Man::new(sub);
    let mut roff = Roff::new();
    roff.control("SS", [name.as_str()]);
    let mut text = strip_preamble(&roff.render());
    // clap_mangen's renderers open with their own `.SH` line; the body is what is wanted.
    let parts = [Man::render_synopsis_section, Man::render_description_section, Man::render_options_section];
    for render in parts {
        let body = capture(|w| render(&man, w))?;
        text += body.split_once('\n').map_or("", |(_, rest)| rest);
        text += ".PP\n";
    }
    Ok(text)
}

/// The kernel features fanlink uses and the release that brought each (README: Kernels).
const KERNEL_FEATURES: &[(&str, &str)] = &[
    ("vxlan external (collect_md)", "Linux 4.3."),
    ("tc clsact, cls_bpf direct-action", "Linux 4.5."),
    ("bpf_skb_set_tunnel_key, bpf_skb_get_tunnel_key, bpf_redirect to ingress", "Linux 4.5."),
    ("BPF JMP32 instructions", "Linux 5.1: the minimum."),
    (
        "CAP_BPF",
        "Linux 5.8. The unit grants CAP_NET_ADMIN and CAP_BPF; before 5.8 loading a program needs \
         CAP_SYS_ADMIN instead.",
    ),
    (
        "BPF memory charged to the cgroup",
        "Linux 5.11; before, to RLIMIT_MEMLOCK per user, which the unit sets to 64M \
         (LimitMEMLOCK=).",
    ),
    (
        "vxlan vnifilter",
        "Linux 5.18: the vnifilter datapath, a vxlan per fan. Without it (probed, not read from \
         the version) the shared datapath: one external vxlan for the host, a veth per fan, and \
         tc programs that steer each VNI into its fan. Both are the same on the wire.",
    ),
];

/// EXIT STATUS, FILES, ENVIRONMENT, SEE ALSO: facts about the program, not its arguments.
fn trailer() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    for (code, what) in [
        ("0", "Success."),
        ("1", "Problems found: invalid rules for check, drift for plan --check."),
        ("2", "An error: invalid arguments, missing privileges, a refusal of the kernel."),
    ] {
        r.control("TP", []).text([bold(code)]).text([roman(what)]);
    }
    r.control("SH", ["FILES"]);
    for (path, what) in [
        ("/etc/fanlink.d/*.toml", "Rules written by the administrator; see fanlink.d(5)."),
        ("/run/fanlink.d/*.toml", "Rules for this boot only."),
        ("/usr/lib/fanlink.d/*.toml", "Rules shipped by packages."),
        ("/run/fanlink/", "The daemon's runtime directory."),
    ] {
        r.control("TP", []).text([italic(path)]).text([roman(what)]);
    }
    r.control("SH", ["KERNEL"]);
    r.text([roman(
        "fanlink needs Linux 5.1 or later; up and run refuse an older kernel before changing anything, \
         naming what it lacks. What it uses, and the kernel that brings it:",
    )]);
    for (feature, what) in KERNEL_FEATURES {
        r.control("TP", []).text([bold(*feature)]).text([roman(*what)]);
    }
    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []).text([bold("RUST_LOG")]);
    r.text([roman("Log filter, e.g. debug or fanlink=trace; overrides -v.")]);
    r.control("TP", []).text([bold("FANLINK_DATAPATH")]);
    r.text([roman("auto (the default), vnifilter or shared: as --datapath.")]);
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("fanlink.d"),
        roman("(5), "),
        bold("systemd-networkd"),
        roman("(8), "),
        bold("nft"),
        roman("(8), "),
        bold("ip-link"),
        roman("(8)"),
    ]);
    r.control("SH", ["VERSION"]);
    r.text([roman(env!("FANLINK_LONG_VERSION"))]);
    r
}

/// Runs one of clap_mangen's writers and returns its text without the roff preamble, which
/// each writer repeats and the page needs once.
fn capture(f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<String> {
    let mut buf = Vec::new();
    f(&mut buf).context("rendering the man page")?;
    Ok(strip_preamble(&String::from_utf8(buf)?))
}

fn strip_preamble(text: &str) -> String {
    let preamble = Roff::new().render();
    text.strip_prefix(&preamble).unwrap_or(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_has_every_visible_command_once_and_no_dangling_page() {
        let page = String::from_utf8(render(Artifact::Man).unwrap()).unwrap();
        assert!(page.starts_with(&Roff::new().render()));
        assert_eq!(page.matches(".ie \\n(.g").count(), 1, "one preamble");
        assert!(page.contains(".TH fanlink 8 "));
        for sub in Cli::command().get_subcommands().filter(|s| !s.is_hide_set()) {
            let heading = format!(".SS \"fanlink {}\"\n", sub.get_name());
            assert_eq!(page.matches(&heading).count(), 1, "{heading}");
        }
        assert!(!page.contains("fanlink-check"), "no reference to per-command pages");
        assert!(!page.contains("generate"), "the packaging helper stays out of the manual");
        // One word for a fan's name, the rule's: `--bridge` is a hidden alias of `--name`.
        assert!(page.contains("\\fB\\-\\-name\\fR \\fI<NAME>\\fR"));
        assert!(!page.contains("\\-\\-bridge"));
    }

    #[test]
    fn completions_name_the_commands() {
        for what in [Artifact::CompleteBash, Artifact::CompleteZsh, Artifact::CompleteFish] {
            let text = String::from_utf8(render(what).unwrap()).unwrap();
            assert!(text.contains("docker-args"), "{what:?}");
        }
    }
}
