//! Man pages and shell completions for the packages, generated from the CLI definition
//! (`ecr_edge::cli::command`), so they cannot drift from the binary's real options.
//!
//! `cargo run --example gen-docs [-- OUT_DIR]` (default `packaging/docs`) writes
//! - `man/ecr-edge.1` and one page per subcommand (`ecr-edge-daemon.1`, …);
//! - `completions/ecr-edge.bash`, `_ecr-edge` (zsh) and `ecr-edge.fish`.
//!
//! The output is committed under `packaging/docs`, so that the packages and the Yocto recipe
//! (which cannot run a host program from a cross build) install the same files; the test
//! `generated_docs_are_current` (tests/packaging.rs) fails when the CLI changed and they were
//! not regenerated. Generated here rather than by the binary (as ripgrep's `--generate man`
//! does) because roff and completion generators would cost the device binary tens of KB.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Extra sections for `ecr-edge(1)` that clap does not model: the helper name, environment,
/// files, exit status. Raw roff.
const EXTRA: &str = r#".SH "CREDENTIAL HELPER"
Started as \fBdocker\-credential\-ecr\-edge\fR (a symlink to the same binary), ecr\-edge speaks
the Docker credential helper protocol: \fBget\fR reads a registry host on standard input and
prints \fB{"ServerURL":...,"Username":"AWS","Secret":...}\fR; \fBlist\fR, \fBstore\fR,
\fBerase\fR and \fBversion\fR behave as Docker expects. Name it in \fB~/.docker/config.json\fR
(\fBcredHelpers\fR, key = the bare registry host) with \fBecr\-edge configure\fR. A host that
is not Amazon ECR gets "credentials not found"; every other failure is an error naming its
cause.
.SH ENVIRONMENT
.TP
\fBECR_EDGE_CONFIG\fR
Configuration file instead of \fI/etc/ecr\-edge/config.toml\fR.
.TP
\fBECR_EDGE_TIMEOUT\fR
Overall deadline of one helper call, in seconds (default 10).
.TP
\fBECR_EDGE_CACHE_DIR\fR
The helper's token cache (default \fI$XDG_RUNTIME_DIR/ecr\-edge\fR, else
\fI~/.cache/ecr\-edge\fR).
.TP
\fBECR_EDGE_SOCKET\fR
The daemon socket the helper asks first (default \fI/run/ecr\-edge/agent.sock\fR; empty: never
ask).
.TP
\fBECR_EDGE_DAEMON_WAIT\fR
Seconds the helper waits for the daemon's first reply before doing the work itself (default
0.2).
.TP
\fBECR_EDGE_LOG\fR
Log level on standard error: off, error, warn, info, debug (default warn; the daemon info).
.PP
The AWS variables (\fBAWS_PROFILE\fR, \fBAWS_ACCESS_KEY_ID\fR, \fBAWS_ENDPOINT_URL_ECR\fR,
\fBHTTPS_PROXY\fR, ...) work as in the AWS SDKs.
.SH FILES
.TP
\fI/etc/ecr\-edge/config.toml\fR
Configuration: \fB[iot]\fR (device certificate exchange) and \fB[daemon]\fR; every option is
documented, commented out, in the packaged file.
.TP
\fI/run/ecr\-edge/agent.sock\fR
The daemon's socket (group ecr\-edge, mode 0660).
.TP
\fI/usr/lib/systemd/system/ecr\-edge.service\fR
The hardened unit; it stays stopped until the configuration has a \fB[daemon]\fR section.
.TP
\fI/usr/share/doc/ecr\-edge/examples/kubelet\-credential\-provider.yaml\fR
A kubelet CredentialProviderConfig naming ecr\-edge.
.SH "EXIT STATUS"
0 on success; 1 when the command failed (the cause is on standard error); 2 for usage errors.
\fBstatus\fR and \fBdoctor\fR document their own codes above.
.SH "SEE ALSO"
\fBdocker\fR(1), \fBpodman\fR(1), \fBskopeo\fR(1), \fBsystemd.service\fR(5)
"#;

#[allow(dead_code)] // tests/packaging.rs includes this file for `generate` only.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("packaging/docs"), PathBuf::from);
    generate(&out)?;
    list(&out)
}

/// Writes the man pages and completions under `out`.
pub fn generate(out: &Path) -> std::io::Result<()> {
    let cmd = ecr_edge::cli::command()
        .version(env!("CARGO_PKG_VERSION"))
        .author("the ecr-edge developers")
        // `ecr-edge help` is not worth a page of its own.
        .disable_help_subcommand(true)
        .long_about(LONG_ABOUT);
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    // One page per subcommand, each named ecr-edge-<sub>.1 by clap_mangen.
    clap_mangen::generate_to(cmd.clone(), &man)?;
    // The top page again, with the sections clap does not model.
    let mut page = Vec::new();
    let top = clap_mangen::Man::new(cmd.clone());
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    top.render_subcommands_section(&mut page)?;
    page.write_all(EXTRA.as_bytes())?;
    top.render_version_section(&mut page)?;
    std::fs::write(man.join("ecr-edge.1"), page)?;
    // The helper name has its own page: Docker users look it up by that name.
    let helper = clap::Command::new("docker-credential-ecr-edge")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Docker credential helper for Amazon ECR (ecr-edge)")
        .long_about(HELPER_ABOUT)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(
            clap::Arg::new("action")
                .required(true)
                .value_parser(["get", "store", "erase", "list", "version"])
                .help(
                    "get: registry host on stdin, credentials JSON on stdout. list: the \
                     registries with a cached token. store: accepted for ECR hosts and \
                     stored nowhere (tokens are minted, not stored). erase: drops the cached \
                     token, so the next get fetches a fresh one. version: the version.",
                ),
        );
    let mut page = Vec::new();
    clap_mangen::Man::new(helper).render(&mut page)?;
    std::fs::write(man.join("docker-credential-ecr-edge.1"), page)?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, "ecr-edge", &completions)?;
    }
    Ok(())
}

/// The man page's description (the binary's own help stays short).
const LONG_ABOUT: &str = "Amazon ECR credentials for edge devices. One static binary that is a \
Docker credential helper (as docker-credential-ecr-edge) for Docker, podman, skopeo and \
nerdctl; a refresher daemon that keeps tokens warm through flaky links and serves them over a \
local socket; and an AWS IoT certificate exchange, so a device needs no long-lived AWS keys. \
ecr-edge doctor explains what is wrong on a device; ecr-edge configure writes exact \
credHelpers entries.";

/// The helper page's description.
const HELPER_ABOUT: &str = "docker-credential-ecr-edge is ecr-edge started under the helper \
name (a symlink), speaking the Docker credential helper protocol to Docker, podman, skopeo, \
buildah and nerdctl. Name it for each registry host in the credHelpers map of \
~/.docker/config.json or the containers auth.json (ecr-edge configure writes the entries). It \
asks the ecr-edge daemon first when one runs, else uses its token cache, else fetches a token \
with the device's IoT identity or the AWS default credentials, within ECR_EDGE_TIMEOUT. A host \
that is not Amazon ECR gets \"credentials not found\"; every other failure is an error naming \
its cause. See ecr-edge(1).";

/// Prints what was written.
#[allow(dead_code)]
fn list(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            list(&path)?;
        } else {
            println!("{}", path.display());
        }
    }
    Ok(())
}
