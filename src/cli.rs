//! Command line: which part to play, chosen by program name and arguments; logging set-up.
//! Parsing and dispatch only: each command's work is its own `run(…, out, err) -> Exit`, and
//! [`main`] turns the [`Exit`] into the process status.
//!
//! Started as `docker-credential-<anything>`, the binary is a Docker credential helper and takes
//! the action as its only argument, exactly as Docker calls it. Otherwise clap parses the
//! `ecr-edge` subcommands (`ecr-edge helper get` does the same for people and scripts).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::KeyRef;
use crate::exit::Exit;
use crate::frontend::helper;
use crate::tpm::TpmName;

/// Amazon ECR credentials for edge devices.
#[derive(Debug, Parser)]
#[command(name = "ecr-edge", version = None, disable_version_flag = true)]
struct Cli {
    /// Print version and target triple.
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// With --version: also the commit, build date, target, compiler and features.
    #[arg(long, requires = "version")]
    verbose: bool,
    /// Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
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
    /// Print the device's exchanged IoT role credentials as credential_process JSON (for
    /// `credential_process = ecr-edge credentials` in ~/.aws/config).
    Credentials,
    /// Run the refresher daemon: keep tokens warm, serve them on the local socket, write
    /// sinks ([daemon] in the configuration). For systemd (Type=notify).
    Daemon {
        /// Only check whether the daemon is configured, for systemd's ExecCondition=: exit 0
        /// when the configuration has a [daemon] section, 1 (the service is skipped, not
        /// failed) when it has none, 255 (the start fails) when the file is invalid.
        #[arg(long)]
        check: bool,
    },
    /// Ask the daemon for each registry's expiry, last refresh, last error and next attempt.
    /// Exits 0 when every registry has a usable token, 1 when one has not, 2 without a daemon.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Ask the daemon to refresh now (each registry it holds, or those named), e.g. before a
    /// planned outage, and print each result and the offline runway after it. Exits 0 when
    /// every refresh got a token, 1 when one did not, 2 without a daemon.
    Refresh {
        /// Registry hosts (default: every registry the daemon holds).
        #[arg(value_name = "REGISTRY")]
        registries: Vec<String>,
    },
    /// The device's AWS IoT key: make it where it lives (TPM or a new 0600 file) and print a
    /// certificate signing request for it, so the private key is never copied anywhere.
    Iot {
        #[command(subcommand)]
        command: IotCommand,
    },
    /// The kubelet image credential provider: a CredentialProviderRequest on stdin, the
    /// response on stdout (what ecr-edge-credential-provider runs; see configure --k3s).
    KubeletCredentialProvider,
    /// Check this device: CPU and helpers, credHelpers keys, config, network, clock,
    /// credentials, and images a pull will need. Exits 0 only when nothing failed.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// An image to check as a pull would (repeatable): the manifest its tag points to, a
        /// variant for this device's platform, the permission to read it and its layers.
        #[arg(long = "image", value_name = "REF")]
        images: Vec<String>,
        /// The platform images must have (default: this device's, e.g. linux/arm/v7).
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
    },
    /// Add exact credHelpers entries naming ecr-edge to the Docker config (and, with
    /// --containers, the containers auth file), keeping everything else in the file.
    Configure(ConfigureArgs),
}

/// The command-line definition, for generating the man pages and shell completions
/// (examples/gen-docs.rs); the binary itself never calls it, so none of that is linked in.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// `ecr-edge configure`'s options.
#[derive(Debug, clap::Args)]
struct ConfigureArgs {
    /// Registry host (repeatable); URLs are reduced to the bare host.
    #[arg(long = "registry", value_name = "HOST")]
    registries: Vec<String>,
    /// With --region: the private registry of this 12-digit account.
    #[arg(long, requires = "region")]
    account: Option<String>,
    /// With --account: the registry's region.
    #[arg(long, requires = "account")]
    region: Option<String>,
    /// Also the containers auth file ($REGISTRY_AUTH_FILE or ~/.config/containers/auth.json).
    #[arg(long)]
    containers: bool,
    /// The Docker config file [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json]
    #[arg(long, value_name = "PATH")]
    docker_config: Option<PathBuf>,
    /// Take the entries out instead (only entries naming ecr-edge); with --k3s or
    /// --kubelet-config, the provider link and the configuration file configure made.
    #[arg(long, conflicts_with = "replace")]
    remove: bool,
    /// Move from another helper (`ecr-login`): its credHelpers entries name ecr-edge, and a
    /// credsStore naming it becomes entries for the ECR registries listed under auths.
    #[arg(long, value_name = "HELPER")]
    replace: Option<String>,
    /// Print the changes without writing.
    #[arg(long)]
    dry_run: bool,
    /// Install the kubelet image credential provider for k3s: the provider link and
    /// config.yaml in /var/lib/rancher/credentialprovider (k3s uses them when both exist).
    #[arg(long)]
    k3s: bool,
    /// Write a kubelet CredentialProviderConfig to PATH (plain kubelets), and the provider
    /// link in /usr/libexec/ecr-edge.
    #[arg(long, value_name = "PATH")]
    kubelet_config: Option<PathBuf>,
    /// With --k3s or --kubelet-config: install under DIR (an image's root file system).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
}

const HELPER_PREFIX: &str = "docker-credential-";

/// Runs the program with `args` (including the program name); returns the exit status (the
/// one place an [`Exit`] becomes a number).
pub fn main(args: Vec<OsString>) -> u8 {
    dispatch(args).code()
}

fn dispatch(args: Vec<OsString>) -> Exit {
    use tracing_subscriber::filter::LevelFilter;
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if program == crate::frontend::kubelet::PROVIDER_NAME {
        init_logging(LevelFilter::WARN);
        return crate::frontend::kubelet::main(None);
    }
    if program.starts_with(HELPER_PREFIX) {
        let level = init_logging(LevelFilter::WARN);
        let action = args.get(1).and_then(|a| a.to_str());
        return helper::main(
            &program,
            action,
            args.len(),
            None,
            level == LevelFilter::OFF,
        );
    }
    let cli = match parse(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Success
            };
        }
    };
    // The daemon logs its refreshes to the journal by default; everything else only warns.
    // Chosen from the parsed command, so options before it (`--config X daemon`) count.
    let level = init_logging(match cli.command {
        Some(Command::Daemon { check: false }) => LevelFilter::INFO,
        _ => LevelFilter::WARN,
    });
    let (out, err) = (&mut std::io::stdout(), &mut std::io::stderr());
    if cli.version {
        if cli.verbose {
            print!("{}", crate::version_verbose());
        } else {
            println!("{}", crate::version_line());
        }
        return Exit::Success;
    }
    let config = cli.config.as_deref();
    match cli.command {
        Some(Command::Helper { action }) => helper::main(
            "ecr-edge helper",
            Some(&action),
            2,
            config,
            level == LevelFilter::OFF,
        ),
        Some(Command::Configure(args)) => {
            crate::commands::configure::run(args.into_options(), config, out, err)
        }
        Some(Command::KubeletCredentialProvider) => crate::frontend::kubelet::main(config),
        Some(Command::Doctor {
            json,
            images,
            platform,
        }) => crate::commands::doctor::report(
            config,
            &crate::commands::doctor::Options {
                json,
                images,
                platform,
            },
            out,
        ),
        Some(Command::Daemon { check: true }) => crate::daemon::check(config, err),
        Some(Command::Daemon { check: false }) => crate::daemon::run_until_stopped(config, err),
        Some(Command::Status { json }) => crate::commands::status::run(config, json, out, err),
        Some(Command::Credentials) => crate::commands::credentials::run(config, out, err),
        Some(Command::Refresh { registries }) => {
            crate::commands::refresh::run(config, registries, out, err)
        }
        Some(Command::Iot { command }) => match command {
            IotCommand::Keygen {
                tpm,
                handle,
                out: file,
            } => {
                use crate::commands::iot::KeygenOptions;
                let options = match (tpm, file) {
                    (Some(tpm), _) => KeygenOptions::Tpm { tpm, handle },
                    (None, Some(path)) => KeygenOptions::File(path),
                    (None, None) => return Exit::Usage,
                };
                crate::commands::iot::keygen(&options, out, err)
            }
            IotCommand::Csr { key, subject, tpm } => crate::commands::iot::csr(
                &crate::commands::iot::CsrOptions { key, tpm, subject },
                out,
                err,
            ),
        },
        None => {
            println!("{}", crate::version_line());
            println!("Run `ecr-edge --help` for commands.");
            Exit::Success
        }
    }
}

#[derive(Debug, Subcommand)]
enum IotCommand {
    /// Make an EC P-256 device key: in the TPM, kept at a persistent handle (--tpm), or in a new
    /// file only its owner can read (--out). An existing key is never replaced.
    Keygen {
        /// Make the key in the TPM; optionally which one, in the tpm2-tss form
        /// (swtpm:host=127.0.0.1,port=2321).
        #[arg(long, value_name = "TPM", num_args = 0..=1, default_missing_value = "device:/dev/tpmrm0",
              value_parser = TpmName::parse, conflicts_with = "out", required_unless_present = "out")]
        tpm: Option<TpmName>,
        /// The persistent handle for the TPM key.
        #[arg(long, value_name = "HANDLE", default_value = "0x81000001", value_parser = persistent_handle)]
        handle: u32,
        /// Make a key file instead (PKCS#8 PEM, mode 0600), for devices without a TPM.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print a PEM certificate signing request signed by the device key, for `aws iot
    /// create-certificate-from-csr` or the fleet's CA.
    Csr {
        /// The key, as [iot] key names it: a file, handle:0x81000001 or credential:NAME.
        #[arg(long, value_name = "KEY", value_parser = key_ref)]
        key: KeyRef,
        /// The subject, such as CN=edge-thing-0001 (CN, O, OU, C, ST, L).
        #[arg(long, value_name = "NAME")]
        subject: String,
        /// The TPM that holds a handle: key (tpm2-tss form; default device:/dev/tpmrm0).
        #[arg(long, value_name = "TPM", value_parser = TpmName::parse)]
        tpm: Option<TpmName>,
    },
}

fn persistent_handle(text: &str) -> Result<u32, String> {
    match KeyRef::try_from(format!("handle:{text}"))? {
        KeyRef::TpmHandle(h) => Ok(h),
        _ => Err(format!("{text:?} is not a persistent handle")),
    }
}

fn key_ref(text: &str) -> Result<KeyRef, String> {
    KeyRef::try_from(text.to_owned())
}

impl ConfigureArgs {
    fn into_options(self) -> crate::commands::configure::Options {
        crate::commands::configure::Options {
            registries: self.registries,
            account_region: self.account.zip(self.region),
            containers: self.containers,
            docker_config: self.docker_config,
            remove: self.remove,
            replace: self.replace,
            dry_run: self.dry_run,
            k3s: self.k3s,
            kubelet_config: self.kubelet_config,
            root: self.root,
        }
    }
}

/// Whether stderr is the journal stream systemd connected: `$JOURNAL_STREAM` names its device
/// and inode (`dev:ino`). A program whose stderr was redirected (dockerd or the kubelet
/// capturing a helper's, a shell) logs lines to stderr as elsewhere, though it inherited the
/// variable.
fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| v.split_once(':').map(|(d, i)| (d.to_owned(), i.to_owned())))
    else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev.to_string() == dev && st.st_ino.to_string() == ino,
        Err(_) => false,
    }
}

/// Parses the command line on a thread of its own when one can be started. clap builds the
/// whole command tree on the stack, some 80 KiB deep, and the daemon would keep those pages of
/// its main stack resident for its whole life; a thread's stack is unmapped when it ends
/// (BENCHMARKS.md, issue 30, sixth part). Docker's helper calls never come here.
fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let copy = args.clone();
    let thread = std::thread::Builder::new()
        .name("ecr-edge-args".into())
        .spawn(move || Cli::try_parse_from(args));
    match thread {
        Ok(thread) => thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        // No thread (a limit on tasks): parsed here instead.
        Err(_) => Cli::try_parse_from(copy),
    }
}

/// Logs go to stderr, which Docker, podman and skopeo connect to the user's terminal: warnings
/// only by default, more with `ECR_EDGE_LOG=debug` (or `info`, `trace`, `off`). ecr-edge's own
/// events follow that level; the SDK and HTTP stack are held at `info` at most, since their
/// debug and trace levels are hundreds of lines of request plumbing per call. No log line
/// carries a secret (checked at `trace` by the `secrets_never_reach_stderr…` test).
/// Under systemd (stderr is the journal stream) events go to the journal natively instead
/// ([`crate::journal`]). Returns the level in force.
fn init_logging(
    default: tracing_subscriber::filter::LevelFilter,
) -> tracing_subscriber::filter::LevelFilter {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = match crate::settings::log_level() {
        Ok(level) => level.unwrap_or(default),
        Err(e) => {
            eprintln!("ecr-edge: {e}; logging at the default level");
            default
        }
    };
    if level == LevelFilter::OFF {
        return level;
    }
    let filter = Targets::new()
        .with_target("ecr_edge", level)
        .with_default(level.min(LevelFilter::INFO));
    if stderr_is_journal() {
        if let Ok(journal) = crate::journal::Journal::connect() {
            use tracing_subscriber::Layer;
            let _ = tracing_subscriber::registry()
                .with(journal.with_filter(filter))
                .try_init();
            return level;
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .finish()
        .with(filter)
        .try_init();
    level
}
