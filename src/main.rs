//! fanlink's entry point: parse the command line, set up logging, dispatch, and map the
//! outcome to an exit status (0 ok, 1 problems found, 2 error).

use clap::Parser;
use fanlink::cli::{Cli, Command};
use fanlink::{commands, daemon, oneshot};
use std::process::ExitCode;

/// Exit status for errors: invalid arguments, missing privileges, kernel refusals.
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_ERROR } else { 0 });
        }
    };
    init_logging(cli.verbose);
    // The option reaches `System` as the variable it also documents; no thread runs yet.
    std::env::set_var(fanlink::system::DATAPATH_ENV, &cli.datapath);
    match run(cli) {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            eprintln!("fanlink: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Logs go to stderr. Under systemd (JOURNAL_STREAM set) lines carry `<N>` priority
/// prefixes that journald understands, and no timestamps: journald stamps them itself.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        use std::io::Write;
        builder.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}", record.args())
        });
    } else {
        builder.format_timestamp(None);
    }
    builder.init();
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let dirs = commands::rule_dirs(&cli.rules_dirs);
    match cli.command {
        Command::Check => commands::check(&dirs),
        Command::Addr { fan, json } => commands::addr(&dirs, &fan, json),
        Command::DockerArgs { fan, name, mtu, network_name } => {
            commands::docker_args(&dirs, &fan, &name, mtu, network_name.as_deref())
        }
        Command::Up { target, stop_after } => oneshot::up(&dirs, &target, stop_after),
        Command::Down { name, all, force } => oneshot::down(name.as_deref(), all, force),
        Command::Import(args) => fanlink::import::run(&args),
        Command::Plan { name, address } => oneshot::plan_cmd(&dirs, name.as_deref(), address),
        Command::Run { source } => {
            let (runtime_dir, state_dir) = (cli.runtime_dir, cli.state_dir);
            daemon::run(daemon::Options { rule_dirs: dirs, runtime_dir, state_dir, source })?;
            Ok(0)
        }
        Command::Status { json } => oneshot::status(&dirs, &cli.runtime_dir, json),
        Command::Test { name, peer, json } => {
            fanlink::selftest::run(&dirs, &cli.runtime_dir, &name, &peer, json)
        }
        Command::Generate { what, out } => fanlink::generate::run(what, out.as_deref()),
    }
}
