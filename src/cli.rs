//! Command line: which part to play, chosen by program name and arguments; logging set-up.
//!
//! Started as `docker-credential-<anything>`, the binary is a Docker credential helper and takes
//! the action as its only argument, exactly as Docker calls it. Otherwise clap parses the
//! `ecr-edge` subcommands (`ecr-edge helper get` does the same for people and scripts).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::frontend::helper::{self, Action};

/// Amazon ECR credentials for edge devices.
#[derive(Debug, Parser)]
#[command(name = "ecr-edge", version = None, disable_version_flag = true)]
struct Cli {
    /// Print version and target triple.
    #[arg(short = 'V', long = "version")]
    version: bool,
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
    /// The kubelet image credential provider: a CredentialProviderRequest on stdin, the
    /// response on stdout (what ecr-edge-credential-provider runs; see configure --k3s).
    KubeletCredentialProvider,
    /// Check this device: CPU and helpers, credHelpers keys, config, network, clock,
    /// credentials. Exits 0 only when nothing failed.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
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

/// Runs the program with `args` (including the program name); returns the exit status.
pub fn main(args: Vec<OsString>) -> u8 {
    use tracing_subscriber::filter::LevelFilter;
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if program == crate::frontend::kubelet::PROVIDER_NAME {
        init_logging(LevelFilter::WARN);
        return kubelet_provider(None);
    }
    if program.starts_with(HELPER_PREFIX) {
        let level = init_logging(LevelFilter::WARN);
        let action = args.get(1).and_then(|a| a.to_str());
        return run_helper(&program, action, args.len(), None, level);
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    // The daemon logs its refreshes to the journal by default; everything else only warns.
    // Chosen from the parsed command, so options before it (`--config X daemon`) count.
    let level = init_logging(match cli.command {
        Some(Command::Daemon { check: false }) => LevelFilter::INFO,
        _ => LevelFilter::WARN,
    });
    if cli.version {
        println!("{}", crate::version_line());
        return 0;
    }
    match cli.command {
        Some(Command::Helper { action }) => run_helper(
            "ecr-edge helper",
            Some(&action),
            2,
            cli.config.as_deref(),
            level,
        ),
        Some(Command::Configure(args)) => configure_command(args, cli.config.as_deref()),
        Some(Command::KubeletCredentialProvider) => kubelet_provider(cli.config.as_deref()),
        Some(Command::Doctor { json }) => doctor(cli.config.as_deref(), json),
        Some(Command::Daemon { check: true }) => daemon_configured(cli.config.as_deref()),
        Some(Command::Daemon { check: false }) => daemon(cli.config.as_deref()),
        Some(Command::Status { json }) => crate::commands::status::run(cli.config.as_deref(), json),
        Some(Command::Credentials) => print_credentials(cli.config.as_deref()),
        None => {
            println!("{}", crate::version_line());
            println!("Run `ecr-edge --help` for commands.");
            0
        }
    }
}

/// `ecr-edge configure`: the kubelet provider (`--k3s`, `--kubelet-config`) and the
/// `credHelpers` entries, each as asked; the exit status is the worst of them.
fn configure_command(args: ConfigureArgs, config: Option<&Path>) -> u8 {
    let ConfigureArgs {
        registries,
        account,
        region,
        containers,
        docker_config,
        remove,
        replace,
        dry_run,
        k3s,
        kubelet_config,
        root,
    } = args;
    // The configuration's registries and aliases: the entries written when none are named,
    // and extra patterns for the kubelet. An unusable file is an error here (configure is run
    // by a person, who should hear of it); an absent default file is no registries.
    let named = !registries.is_empty() || account.is_some();
    let configured = match crate::config::load(config) {
        Ok(c) => c,
        Err(e) if named => {
            eprintln!("ecr-edge configure: warning: {e}; its registries and aliases are left out");
            crate::config::Config::default()
        }
        Err(e) => {
            eprintln!("ecr-edge configure: {e}");
            return 2;
        }
    };
    let aliases: Vec<String> = configured
        .registries
        .iter()
        .flat_map(|r| r.aliases.iter().cloned())
        .collect();
    let kubelet = k3s || kubelet_config.is_some();
    let mut status = 0;
    if remove && kubelet {
        let mut layouts = Vec::new();
        if k3s {
            layouts.push(crate::commands::provider_setup::Layout::k3s(&root));
        }
        if let Some(path) = &kubelet_config {
            layouts.push(crate::commands::provider_setup::Layout::kubelet(
                &root, path,
            ));
        }
        for layout in layouts {
            status = status.max(remove_provider(&layout, dry_run));
        }
    } else if k3s {
        status = status.max(install_provider(
            &crate::commands::provider_setup::Layout::k3s(&root),
            &root,
            &aliases,
            dry_run,
        ));
    }
    if let Some(path) = kubelet_config.filter(|_| !remove) {
        let layout = crate::commands::provider_setup::Layout::kubelet(&root, &path);
        status = status.max(install_provider(&layout, &root, &aliases, dry_run));
        if status == 0 {
            println!(
                "start the kubelet with --image-credential-provider-config={} \
                 --image-credential-provider-bin-dir={}",
                path.display(),
                Path::new("/")
                    .join(
                        layout
                            .bin_dir
                            .strip_prefix(&root)
                            .unwrap_or(&layout.bin_dir)
                    )
                    .display()
            );
        }
    }
    if kubelet && registries.is_empty() && account.is_none() && replace.is_none() {
        return status;
    }
    status.max(configure(
        registries,
        account.zip(region),
        &configured,
        replace.as_deref(),
        containers,
        docker_config,
        remove,
        dry_run,
    ))
}

/// `ecr-edge daemon`: runs until stopped; a failure to start is one line on stderr (the
/// journal) and exit status 1.
fn daemon(config: Option<&Path>) -> u8 {
    match crate::daemon::main(config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ecr-edge daemon: {e}");
            1
        }
    }
}

/// `ecr-edge credentials`: the JSON on stdout, or one line on stderr and exit status 1.
fn print_credentials(config: Option<&Path>) -> u8 {
    match credentials(config) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            eprintln!("ecr-edge: {e}");
            1
        }
    }
}

fn run_helper(
    program: &str,
    action: Option<&str>,
    argc: usize,
    config: Option<&Path>,
    level: tracing_subscriber::filter::LevelFilter,
) -> u8 {
    let mut echo = CauseOnStderr {
        off: level == tracing_subscriber::filter::LevelFilter::OFF,
    };
    match action.and_then(Action::parse) {
        Some(action) if argc == 2 => helper::run(
            action,
            config,
            &mut std::io::stdin().lock(),
            &mut std::io::stdout().lock(),
            Some(&mut echo),
        ),
        _ => {
            // Same place and shape as docker-credential-helpers' usage message.
            println!("Usage: {program} <store|get|erase|list|version>");
            1
        }
    }
}

/// Where a failed `get`'s cause goes besides stdout (helper::run says why): stderr, unless
/// someone already sees it there: a person reading stdout on a terminal, a client that shows
/// the stdout text itself, or nobody wants it (`ECR_EDGE_LOG=off`). Decided on the first write,
/// so a `get` that succeeds never looks.
struct CauseOnStderr {
    off: bool,
}

impl std::io::Write for CauseOnStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::IsTerminal;
        if self.off || std::io::stdout().is_terminal() || parent_shows_helper_errors() {
            self.off = true;
            return Ok(buf.len());
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Whether the program that started this helper puts a failed `get`'s stdout text in its own
/// error: the containers/image clients (podman, skopeo, buildah) do; the Docker CLI does not.
fn parent_shows_helper_errors() -> bool {
    let parent = std::os::unix::process::parent_id();
    std::fs::read_to_string(format!("/proc/{parent}/comm"))
        .is_ok_and(|comm| matches!(comm.trim_end(), "podman" | "skopeo" | "buildah"))
}

/// The kubelet credential provider on this process's stdin, stdout and stderr.
fn kubelet_provider(config: Option<&Path>) -> u8 {
    crate::frontend::kubelet::run(
        config,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// `configure --k3s` / `--kubelet-config`: links the provider name to this binary and writes
/// the provider configuration.
fn install_provider(
    layout: &crate::commands::provider_setup::Layout,
    root: &Path,
    aliases: &[String],
    dry_run: bool,
) -> u8 {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ecr-edge configure: cannot find this binary: {e}");
            return 1;
        }
    };
    // The link must name the binary as the target system sees it.
    let binary = match exe.strip_prefix(root) {
        Ok(rest) if root != Path::new("/") => Path::new("/").join(rest),
        _ => exe,
    };
    if dry_run {
        println!(
            "would link {} -> {} and write {}:\n{}",
            layout
                .bin_dir
                .join(crate::frontend::kubelet::PROVIDER_NAME)
                .display(),
            binary.display(),
            layout.config.display(),
            crate::commands::provider_setup::provider_config_for(aliases)
        );
        return 0;
    }
    match crate::commands::provider_setup::install(layout, &binary, aliases) {
        Ok(changes) if changes.is_empty() => {
            println!("{}: already up to date", layout.config.display());
            0
        }
        Ok(changes) => {
            for c in changes {
                println!("{c}");
            }
            0
        }
        Err(e) => {
            eprintln!("ecr-edge configure: {e}");
            1
        }
    }
}

/// `configure --k3s --remove` / `--kubelet-config PATH --remove`: takes out the link and the
/// configuration file `configure` made.
fn remove_provider(layout: &crate::commands::provider_setup::Layout, dry_run: bool) -> u8 {
    if dry_run {
        println!(
            "would remove {} (if it points to ecr-edge) and {} (if ecr-edge wrote it)",
            layout
                .bin_dir
                .join(crate::frontend::kubelet::PROVIDER_NAME)
                .display(),
            layout.config.display()
        );
        return 0;
    }
    match crate::commands::provider_setup::uninstall(layout) {
        Ok(removed) if removed.is_empty() => {
            println!("{}: nothing of ecr-edge to remove", layout.config.display());
            0
        }
        Ok(removed) => {
            for r in removed {
                println!("{r}");
            }
            0
        }
        Err(e) => {
            eprintln!("ecr-edge configure: {e}");
            1
        }
    }
}

/// `ecr-edge daemon --check`: whether the service should start. The packaged configuration
/// file sets nothing, so a fresh install stays stopped (not failed) until it is configured.
fn daemon_configured(config: Option<&Path>) -> u8 {
    match crate::config::load(config) {
        Ok(c) if c.daemon.is_some() => 0,
        Ok(_) => {
            let (path, _) = crate::config::locate(config);
            eprintln!(
                "ecr-edge daemon: not configured: {} has no [daemon] section; the service \
                 starts once it has one",
                path.display()
            );
            1
        }
        Err(e) => {
            eprintln!("ecr-edge daemon: {e}");
            255
        }
    }
}

/// `ecr-edge doctor`: prints each check; exit 0 when none failed, 1 otherwise.
fn doctor(config: Option<&Path>, json: bool) -> u8 {
    let checks = crate::commands::doctor::run(config);
    let ok = crate::commands::doctor::ok(&checks);
    if json {
        println!("{}", serde_json::json!({ "ok": ok, "checks": checks }));
    } else {
        for c in &checks {
            println!("{c}");
        }
        println!(
            "{}",
            if ok {
                "all checks passed"
            } else {
                "some checks failed"
            }
        );
    }
    u8::from(!ok)
}

/// `ecr-edge configure`: exit 0 when every file is (now) right, 1 when one could not be
/// updated, 2 for unusable arguments.
#[allow(clippy::too_many_arguments)]
fn configure(
    registries: Vec<String>,
    account_region: Option<(String, String)>,
    configured: &crate::config::Config,
    replace: Option<&str>,
    containers: bool,
    docker_config: Option<PathBuf>,
    remove: bool,
    dry_run: bool,
) -> u8 {
    let mut inputs = registries;
    if let Some((account, region)) = account_region {
        inputs.push(format!("{account}.dkr.ecr.{region}.amazonaws.com"));
    }
    let mut hosts = Vec::new();
    if inputs.is_empty() {
        // Every registry and alias the configuration names.
        let daemon = configured.daemon.iter().flat_map(|d| d.registries.iter());
        for r in &configured.registries {
            hosts.push(r.host.clone());
            hosts.extend(r.aliases.iter().cloned());
        }
        for h in daemon {
            if !hosts.contains(h) {
                hosts.push(h.clone());
            }
        }
        if hosts.is_empty() && replace.is_none() && !remove {
            eprintln!(
                "ecr-edge configure: name at least one --registry HOST (or --account and \
                 --region), add [[registry]] tables or [daemon] registries to the \
                 configuration, or use --replace ecr-login"
            );
            return 2;
        }
    }
    if replace == Some(crate::commands::configure::HELPER_NAME) {
        eprintln!("ecr-edge configure: --replace names the helper to move from, not ecr-edge");
        return 2;
    }
    for input in &inputs {
        match crate::registry::Registry::parse(input) {
            Some(r) => {
                if r.host() != input {
                    println!("using the bare host {} for {input:?}", r.host());
                }
                hosts.push(r.host().to_owned());
            }
            None => {
                eprintln!("ecr-edge configure: {input:?} is not an Amazon ECR registry host");
                return 2;
            }
        }
    }
    let mut targets = Vec::new();
    match docker_config.or_else(crate::commands::configure::docker_config_path) {
        Some(p) => targets.push(p),
        None => {
            eprintln!(
                "ecr-edge configure: HOME and DOCKER_CONFIG are unset; use --docker-config PATH"
            );
            return 2;
        }
    }
    if containers {
        match crate::commands::configure::containers_auth_path() {
            Some(p) => targets.push(p),
            None => {
                eprintln!("ecr-edge configure: HOME and REGISTRY_AUTH_FILE are unset");
                return 2;
            }
        }
    }
    let mut status = 0;
    // What --replace took over, per file, so that --remove gives it back.
    let records = crate::commands::configure::Records::open();
    for path in targets {
        let result = match (replace, &records) {
            (Some(from), _) => {
                crate::commands::configure::apply_replace(&path, from, &hosts, dry_run)
            }
            (None, Some(records)) if remove => {
                let record = records.get(&path);
                crate::commands::configure::apply_remove(&path, &record, &hosts, dry_run)
            }
            (None, _) => crate::commands::configure::apply(&path, &hosts, remove, dry_run),
        };
        if let (Ok(changes), Some(records), false) = (&result, &records, dry_run) {
            let kept = match (replace, remove) {
                (Some(_), _) => records.note(&path, changes),
                (None, true) => records.forget(&path),
                _ => Ok(()),
            };
            if let Err(e) = kept {
                eprintln!(
                    "ecr-edge configure: warning: {e}; `configure --remove` will not know which \
                     entries to give back to the helper they named"
                );
            }
        }
        match result {
            Ok(changes) if changes.is_empty() => println!("{}: already up to date", path.display()),
            Ok(changes) => {
                let verb = if dry_run { "would change" } else { "updated" };
                println!("{} {verb}:", path.display());
                for c in changes {
                    println!("  {c}");
                }
            }
            Err(e) => {
                eprintln!("ecr-edge configure: {e}");
                status = 1;
            }
        }
    }
    status
}

/// `ecr-edge credentials`: the `[iot]` exchange (and role hop), as `credential_process` JSON.
fn credentials(config: Option<&Path>) -> Result<String, String> {
    let settings = crate::settings::Settings::load(config).map_err(|e| e.to_string())?;
    if settings.config.iot.is_none() {
        return Err("no [iot] section in the configuration: nothing to exchange".into());
    }
    let source = crate::aws::credentials::Source::select(&settings.config);
    let region = crate::aws::credentials::home_region(&source, None);
    let fetcher = crate::aws::ecr::Fetcher::new(&source, &region, settings.deadline)
        .map_err(|e| e.to_string())?;
    let creds = fetcher.credentials().map_err(|e| e.to_string())?;
    let expiration = crate::aws::ecr::expiration_rfc3339(&creds);
    let out = serde_json::json!({
        "Version": 1,
        "AccessKeyId": creds.access_key_id(),
        "SecretAccessKey": creds.secret_access_key(),
        "SessionToken": creds.session_token(),
        "Expiration": expiration,
    });
    Ok(out.to_string())
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
