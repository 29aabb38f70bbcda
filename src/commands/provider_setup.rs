//! `ecr-edge configure --k3s` / `--kubelet-config`: installs the kubelet image credential
//! provider ([`crate::frontend::kubelet`]): the provider link and a `CredentialProviderConfig`
//! naming it for every ECR host form. Files ecr-edge did not write are never replaced.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::exit::Exit;
use crate::frontend::kubelet::{match_images, API_V1, PROVIDER_NAME};
use crate::store::files::{self, FilesError};

/// The first line of every configuration file [`install`] writes: a file without it is
/// someone else's and is never overwritten.
pub const MARKER: &str = "# Written by `ecr-edge configure`; rerun it to update this file.";

/// A `CredentialProviderConfig` naming ecr-edge for every ECR host form.
pub fn provider_config() -> String {
    provider_config_for(&[])
}

/// [`provider_config`], also matching `aliases` (the `[[registry]] aliases` of the
/// configuration: the kubelet only asks for images whose host a pattern matches).
pub fn provider_config_for(aliases: &[String]) -> String {
    let mut out = format!(
        "{MARKER}\napiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\n\
         providers:\n  - name: {PROVIDER_NAME}\n    apiVersion: {API_V1}\n    matchImages:\n"
    );
    for pattern in match_images().iter().chain(aliases) {
        out.push_str(&format!("      - \"{pattern}\"\n"));
    }
    // Used only if a response had no cacheDuration; ecr-edge always sends one.
    out.push_str("    defaultCacheDuration: \"6h\"\n");
    out
}

/// Where [`install`] puts things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The `CredentialProviderConfig` file.
    pub config: PathBuf,
    /// The directory the kubelet runs providers from; gets the [`PROVIDER_NAME`] link.
    pub bin_dir: PathBuf,
}

impl Layout {
    /// k3s's fixed paths under `root` (k3s enables the provider flags when both exist).
    pub fn k3s(root: &Path) -> Layout {
        let base = root.join("var/lib/rancher/credentialprovider");
        Layout {
            config: base.join("config.yaml"),
            bin_dir: base.join("bin"),
        }
    }

    /// A plain kubelet: `config` (the path as the target system sees it) and the link in
    /// `/usr/libexec/ecr-edge` (the packages install the same link), both under `root`.
    pub fn kubelet(root: &Path, config: &Path) -> Layout {
        let config = if root == Path::new("/") {
            config.to_owned()
        } else {
            root.join(config.strip_prefix("/").unwrap_or(config))
        };
        Layout {
            config,
            bin_dir: root.join("usr/libexec/ecr-edge"),
        }
    }
}

/// Why [`install`] changed nothing.
#[derive(Debug)]
pub enum InstallError {
    /// A file or link at our path was not written by ecr-edge; it is left as it is.
    NotOurs {
        /// The file.
        path: PathBuf,
        /// What to do instead.
        hint: String,
    },
    /// A file operation failed.
    Files(FilesError),
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::NotOurs { path, hint } => write!(
                f,
                "{} exists and was not written by ecr-edge; left unchanged. {hint}",
                path.display()
            ),
            InstallError::Files(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for InstallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InstallError::Files(e) => Some(e),
            InstallError::NotOurs { .. } => None,
        }
    }
}

impl From<FilesError> for InstallError {
    fn from(e: FilesError) -> InstallError {
        InstallError::Files(e)
    }
}

/// Installs the provider: `layout.bin_dir/ecr-edge-credential-provider` as a symlink to
/// `binary`, and the configuration file (0600). The bin directory must be a real directory of
/// this user's (created 0700 with missing parents at the default mode); the configuration's
/// directory is created 0700 when missing and otherwise left as it is. Idempotent; both are written atomically (temp name, then rename). An existing
/// file or link that ecr-edge did not write is never replaced. Returns what changed.
///
/// # Errors
/// [`InstallError`]; what was already in place stays as it was.
pub fn install(
    layout: &Layout,
    binary: &Path,
    aliases: &[String],
) -> Result<Vec<String>, InstallError> {
    let link = layout.bin_dir.join(PROVIDER_NAME);
    let text = provider_config_for(aliases);
    let mut changed = Vec::new();
    // Check both before touching either. A configuration file of someone else's is never
    // rewritten, but the link is ours to make either way: when that file names the provider
    // (its entry added by hand), the kubelet runs it through this link.
    let link_ok = link_in_place(&link, binary)?;
    let config = config_in_place(&layout.config, &text)?;
    if !link_ok {
        files::ensure_private_dir(&layout.bin_dir)?;
        let tmp = layout
            .bin_dir
            .join(format!(".{PROVIDER_NAME}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(binary, &tmp).map_err(files::io_err(&tmp))?;
        std::fs::rename(&tmp, &link).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            files::io_err(&link)(e)
        })?;
        changed.push(format!("{} -> {}", link.display(), binary.display()));
    }
    match config {
        ConfigState::InPlace | ConfigState::TheirsNamingUs => {}
        ConfigState::Write => {
            let dir = parent(&layout.config);
            if !dir.exists() {
                files::ensure_private_dir(&dir)?;
            }
            files::write_atomic(&layout.config, text.as_bytes(), 0o600)?;
            changed.push(format!("{} written", layout.config.display()));
        }
        ConfigState::TheirsWithoutUs => {
            return Err(InstallError::NotOurs {
                path: layout.config.clone(),
                hint: format!(
                    "{}Add this provider to its providers list, then run this again:\n{}",
                    if link_ok {
                        String::new()
                    } else {
                        format!("The provider link {} is in place. ", link.display())
                    },
                    text.lines()
                        .skip_while(|l| !l.starts_with("  - "))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            })
        }
    }
    Ok(changed)
}

/// Takes out what [`install`] put in place: the link, when it points to an ecr-edge binary,
/// and the configuration file, when ecr-edge wrote it; then the bin directory and the
/// configuration's directory when that left them empty. Returns what was removed.
///
/// # Errors
/// [`InstallError::NotOurs`] when a configuration file of someone else's still names the
/// provider (its entry must be taken out by hand: ecr-edge does not edit other people's
/// YAML); [`InstallError::Files`] when a removal fails.
pub fn uninstall(layout: &Layout) -> Result<Vec<String>, InstallError> {
    let link = layout.bin_dir.join(PROVIDER_NAME);
    let mut removed = Vec::new();
    if let Ok(target) = std::fs::read_link(&link) {
        // Absolute: made by `configure`. The packages' own link is relative and theirs.
        if target.is_absolute() && target.file_name().is_some_and(|n| n == "ecr-edge") {
            std::fs::remove_file(&link).map_err(files::io_err(&link))?;
            removed.push(format!("{} removed", link.display()));
        }
    }
    let state = config_in_place(&layout.config, "");
    match state {
        Ok(ConfigState::Write) if layout.config.exists() => {
            std::fs::remove_file(&layout.config).map_err(files::io_err(&layout.config))?;
            removed.push(format!("{} removed", layout.config.display()));
        }
        Ok(ConfigState::TheirsNamingUs) => {
            return Err(InstallError::NotOurs {
                path: layout.config.clone(),
                hint: format!("Take the {PROVIDER_NAME} entry out of its providers list by hand."),
            })
        }
        _ => {}
    }
    let mut dirs = vec![layout.bin_dir.clone(), parent(&layout.config)];
    // k3s's parent, which `configure --k3s` creates on a host without k3s.
    if let Some(rancher) = parent(&layout.config).parent() {
        if rancher.ends_with("var/lib/rancher") {
            dirs.push(rancher.to_owned());
        }
    }
    for dir in dirs {
        if std::fs::remove_dir(&dir).is_ok() {
            removed.push(format!("{} removed (empty)", dir.display()));
        }
    }
    Ok(removed)
}

/// What is at the configuration's path.
enum ConfigState {
    /// Ours, saying exactly what it should.
    InPlace,
    /// Missing, or ours and out of date: (re)write it.
    Write,
    /// Someone else's, and it names the provider: leave it, it works.
    TheirsNamingUs,
    /// Someone else's, without the provider: leave it; the user must add the entry.
    TheirsWithoutUs,
}

/// Whether the link is already ours and right (`false`: it must be (re)made).
fn link_in_place(link: &Path, binary: &Path) -> Result<bool, InstallError> {
    match std::fs::symlink_metadata(link) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(files::io_err(link)(e).into()),
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(link).map_err(files::io_err(link))?;
            let resolved = link.parent().map(|d| d.join(&target));
            let same = |a: &Path| match (a.canonicalize(), binary.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            };
            if target == binary || resolved.as_deref().is_some_and(same) {
                Ok(true)
            } else if target.is_absolute() && target.file_name().is_some_and(|n| n == "ecr-edge") {
                Ok(false) // an earlier install of ecr-edge elsewhere: repoint it
            } else {
                Err(InstallError::NotOurs {
                    path: link.to_owned(),
                    hint: format!(
                        "It points to {}; remove it to use ecr-edge.",
                        target.display()
                    ),
                })
            }
        }
        Ok(_) => Err(InstallError::NotOurs {
            path: link.to_owned(),
            hint: "Remove it to use ecr-edge.".into(),
        }),
    }
}

/// What the configuration file at `path` is, against the `text` ecr-edge would write.
fn config_in_place(path: &Path, text: &str) -> Result<ConfigState, InstallError> {
    let old = match files::read_limited(path, 256 * 1024) {
        Ok(old) => old,
        Err(FilesError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConfigState::Write)
        }
        Err(e) => return Err(e.into()),
    };
    if old == text.as_bytes() {
        return Ok(ConfigState::InPlace);
    }
    if old.starts_with(MARKER.as_bytes()) {
        return Ok(ConfigState::Write);
    }
    // A provider entry is `- name: <provider>` (or `name:` on a line of its own in the entry).
    let names_us = String::from_utf8_lossy(&old).lines().any(|l| {
        let l = l.trim_start().trim_start_matches("- ").trim();
        l.strip_prefix("name:")
            .is_some_and(|v| v.trim().trim_matches(['"', '\'']) == PROVIDER_NAME)
    });
    Ok(if names_us {
        ConfigState::TheirsNamingUs
    } else {
        ConfigState::TheirsWithoutUs
    })
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// `configure --k3s` / `--kubelet-config`: links the provider name to this binary and writes
/// the provider configuration, saying what changed on `out` (what would, with `dry_run`).
pub fn install_reporting(
    layout: &Layout,
    root: &Path,
    aliases: &[String],
    dry_run: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "ecr-edge configure: cannot find this binary: {e}");
            return Exit::Failure;
        }
    };
    // The link must name the binary as the target system sees it.
    let binary = match exe.strip_prefix(root) {
        Ok(rest) if root != Path::new("/") => Path::new("/").join(rest),
        _ => exe,
    };
    if dry_run {
        let _ = writeln!(
            out,
            "would link {} -> {} and write {}:\n{}",
            layout.bin_dir.join(PROVIDER_NAME).display(),
            binary.display(),
            layout.config.display(),
            provider_config_for(aliases)
        );
        return Exit::Success;
    }
    match install(layout, &binary, aliases) {
        Ok(changes) if changes.is_empty() => {
            let _ = writeln!(out, "{}: already up to date", layout.config.display());
            Exit::Success
        }
        Ok(changes) => {
            for c in changes {
                let _ = writeln!(out, "{c}");
            }
            Exit::Success
        }
        Err(e) => {
            let _ = writeln!(err, "ecr-edge configure: {e}");
            Exit::Failure
        }
    }
}

/// `configure --k3s --remove` / `--kubelet-config PATH --remove`: takes out the link and the
/// configuration file `configure` made, saying what went on `out`.
pub fn remove_reporting(
    layout: &Layout,
    dry_run: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    if dry_run {
        let _ = writeln!(
            out,
            "would remove {} (if it points to ecr-edge) and {} (if ecr-edge wrote it)",
            layout.bin_dir.join(PROVIDER_NAME).display(),
            layout.config.display()
        );
        return Exit::Success;
    }
    match uninstall(layout) {
        Ok(removed) if removed.is_empty() => {
            let _ = writeln!(
                out,
                "{}: nothing of ecr-edge to remove",
                layout.config.display()
            );
            Exit::Success
        }
        Ok(removed) => {
            for r in removed {
                let _ = writeln!(out, "{r}");
            }
            Exit::Success
        }
        Err(e) => {
            let _ = writeln!(err, "ecr-edge configure: {e}");
            Exit::Failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_config_lists_every_pattern_and_the_packaged_example_agrees() {
        let text = provider_config();
        assert!(text.starts_with(MARKER));
        for p in match_images() {
            assert!(text.contains(&format!("- \"{p}\"")), "{p}");
        }
        let example = include_str!("../../packaging/kubelet-credential-provider.yaml");
        for p in match_images() {
            assert!(example.contains(&format!("- \"{p}\"")), "example lacks {p}");
        }
        assert_eq!(
            example.matches("      - \"").count(),
            match_images().len(),
            "example has patterns the provider does not list"
        );
        assert!(example.contains(&format!("name: {PROVIDER_NAME}")));
    }

    #[test]
    fn the_packages_recognise_the_files_configure_writes() {
        // Their removal scripts take out a config.yaml only when its first line is MARKER.
        for script in [
            include_str!("../../packaging/deb/postrm"),
            include_str!("../../packaging/rpm/postun.sh"),
        ] {
            assert!(script.contains(&format!("'{MARKER}'")));
            assert!(script.contains(&format!("bin/{PROVIDER_NAME}")));
        }
    }
}
