//! Command line: which part to play, chosen by program name and arguments; logging set-up.
//!
//! Started as `docker-credential-<anything>`, the binary is a Docker credential helper and takes
//! the action as its only argument, exactly as Docker calls it. Otherwise clap parses the
//! `ecr-edge` subcommands (`ecr-edge helper get` does the same for people and scripts).

use std::ffi::OsString;
use std::path::Path;

use clap::{Parser, Subcommand};

use crate::helper::{self, Action};

/// Amazon ECR credentials for edge devices.
#[derive(Debug, Parser)]
#[command(name = "ecr-edge", version = None, disable_version_flag = true)]
struct Cli {
    /// Print version and target triple.
    #[arg(short = 'V', long = "version")]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Docker credential helper actions (what docker-credential-ecr-edge runs).
    Helper {
        /// get | store | erase | list | version
        action: String,
    },
}

const HELPER_PREFIX: &str = "docker-credential-";

/// Runs the program with `args` (including the program name); returns the exit status.
pub fn main(args: Vec<OsString>) -> u8 {
    init_logging();
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if program.starts_with(HELPER_PREFIX) {
        let action = args.get(1).and_then(|a| a.to_str());
        return run_helper(&program, action, args.len());
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if cli.version {
        println!("{}", crate::version_line());
        return 0;
    }
    match cli.command {
        Some(Command::Helper { action }) => run_helper("ecr-edge helper", Some(&action), 2),
        None => {
            println!("{}", crate::version_line());
            println!("Run `ecr-edge --help` for commands.");
            0
        }
    }
}

fn run_helper(program: &str, action: Option<&str>, argc: usize) -> u8 {
    match action.and_then(Action::parse) {
        Some(action) if argc == 2 => helper::run(
            action,
            &mut std::io::stdin().lock(),
            &mut std::io::stdout().lock(),
        ),
        _ => {
            // Same place and shape as docker-credential-helpers' usage message.
            println!("Usage: {program} <store|get|erase|list|version>");
            1
        }
    }
}

/// Logs go to stderr, which Docker never shows: warnings only by default, more with
/// `ECR_EDGE_LOG=debug` (or `info`, `trace`, `off`). ecr-edge's own events follow that level;
/// the SDK and HTTP stack are held at `info` at most, since their debug and trace levels are
/// hundreds of lines of request plumbing per call. No log line carries a secret (checked at
/// `trace` by the `secrets_never_reach_stderr…` test).
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = std::env::var("ECR_EDGE_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    if level == LevelFilter::OFF {
        return;
    }
    let filter = Targets::new()
        .with_target("ecr_edge", level)
        .with_default(level.min(LevelFilter::INFO));
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .finish()
        .with(filter)
        .try_init();
}
