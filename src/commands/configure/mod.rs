//! `ecr-edge configure`: the kubelet provider (`--k3s`, `--kubelet-config`) and exact
//! `credHelpers` entries in the user's auth files, each as asked; the exit status is the worst
//! of them. [`entries`] holds the edit of the files themselves.

mod entries;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use entries::*;

use crate::commands::provider_setup::{self, Layout};
use crate::config::Config;
use crate::exit::Exit;

/// What `ecr-edge configure` was asked (the command line's options, parsed).
#[derive(Debug, Default)]
pub struct Options {
    /// `--registry`, as given (URLs are reduced to the bare host).
    pub registries: Vec<String>,
    /// `--account` with `--region`: that account's private registry.
    pub account_region: Option<(String, String)>,
    /// `--containers`: the containers auth file too.
    pub containers: bool,
    /// `--docker-config`.
    pub docker_config: Option<PathBuf>,
    /// `--remove`.
    pub remove: bool,
    /// `--replace HELPER`.
    pub replace: Option<String>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--k3s`.
    pub k3s: bool,
    /// `--kubelet-config PATH`.
    pub kubelet_config: Option<PathBuf>,
    /// `--root DIR` (for the kubelet provider).
    pub root: PathBuf,
}

/// Runs `ecr-edge configure`: what it did on `out`, problems on `err`. [`Exit::Success`]
/// when every file is (now) right, [`Exit::Failure`] when one could not be updated,
/// [`Exit::Usage`] for unusable arguments.
pub fn run(
    options: Options,
    config: Option<&Path>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    // The configuration's registries and aliases: the entries written when none are named,
    // and extra patterns for the kubelet. An unusable file is an error here (configure is run
    // by a person, who should hear of it); an absent default file is no registries.
    let named = !options.registries.is_empty() || options.account_region.is_some();
    let configured = match crate::config::load(config) {
        Ok(c) => c,
        Err(e) if named => {
            let _ = writeln!(
                err,
                "ecr-edge configure: warning: {e}; its registries and aliases are left out"
            );
            Config::default()
        }
        Err(e) => {
            let _ = writeln!(err, "ecr-edge configure: {e}");
            return Exit::Usage;
        }
    };
    let aliases: Vec<String> = configured
        .registries
        .iter()
        .flat_map(|r| r.aliases.iter().cloned())
        .collect();
    let root = &options.root;
    let kubelet = options.k3s || options.kubelet_config.is_some();
    let mut status = Exit::Success;
    if options.remove && kubelet {
        let mut layouts = Vec::new();
        if options.k3s {
            layouts.push(Layout::k3s(root));
        }
        if let Some(path) = &options.kubelet_config {
            layouts.push(Layout::kubelet(root, path));
        }
        for layout in layouts {
            status = status.max(provider_setup::remove_reporting(
                &layout,
                options.dry_run,
                out,
                err,
            ));
        }
    } else if options.k3s {
        status = status.max(provider_setup::install_reporting(
            &Layout::k3s(root),
            root,
            &aliases,
            options.dry_run,
            out,
            err,
        ));
    }
    if let Some(path) = options.kubelet_config.as_ref().filter(|_| !options.remove) {
        let layout = Layout::kubelet(root, path);
        status = status.max(provider_setup::install_reporting(
            &layout,
            root,
            &aliases,
            options.dry_run,
            out,
            err,
        ));
        if status == Exit::Success {
            let bin_dir = layout.bin_dir.strip_prefix(root).unwrap_or(&layout.bin_dir);
            let _ = writeln!(
                out,
                "start the kubelet with --image-credential-provider-config={} \
                 --image-credential-provider-bin-dir={}",
                path.display(),
                Path::new("/").join(bin_dir).display()
            );
        }
    }
    if kubelet
        && options.registries.is_empty()
        && options.account_region.is_none()
        && options.replace.is_none()
    {
        return status;
    }
    status.max(helper_entries(&options, &configured, out, err))
}

/// The `credHelpers` part: the hosts named (or configured), each target file updated.
fn helper_entries(
    options: &Options,
    configured: &Config,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    let mut inputs = options.registries.clone();
    if let Some((account, region)) = &options.account_region {
        inputs.push(format!("{account}.dkr.ecr.{region}.amazonaws.com"));
    }
    let replace = options.replace.as_deref();
    let mut hosts = Vec::new();
    if inputs.is_empty() {
        // Every registry and alias the configuration names.
        let daemon = configured.daemon.iter().flat_map(|d| d.registries.iter());
        for r in &configured.registries {
            hosts.push(r.host.host().to_owned());
            hosts.extend(r.aliases.iter().cloned());
        }
        for h in daemon.map(|r| r.host()) {
            if !hosts.iter().any(|known| known == h) {
                hosts.push(h.to_owned());
            }
        }
        if hosts.is_empty() && replace.is_none() && !options.remove {
            return usage(
                err,
                "name at least one --registry HOST (or --account and --region), add \
                 [[registry]] tables or [daemon] registries to the configuration, or use \
                 --replace ecr-login",
            );
        }
    }
    if replace == Some(HELPER_NAME) {
        return usage(err, "--replace names the helper to move from, not ecr-edge");
    }
    for input in &inputs {
        match crate::registry::Registry::parse(input) {
            Some(r) => {
                if r.host() != input {
                    let _ = writeln!(out, "using the bare host {} for {input:?}", r.host());
                }
                hosts.push(r.host().to_owned());
            }
            None => {
                return usage(
                    err,
                    &format!("{input:?} is not an Amazon ECR registry host"),
                )
            }
        }
    }
    let mut targets = Vec::new();
    match options.docker_config.clone().or_else(docker_config_path) {
        Some(p) => targets.push(p),
        None => {
            return usage(
                err,
                "HOME and DOCKER_CONFIG are unset; use --docker-config PATH",
            )
        }
    }
    if options.containers {
        match containers_auth_path() {
            Some(p) => targets.push(p),
            None => return usage(err, "HOME and REGISTRY_AUTH_FILE are unset"),
        }
    }
    let (remove, dry_run) = (options.remove, options.dry_run);
    let mut status = Exit::Success;
    // What --replace took over, per file, so that --remove gives it back.
    let records = Records::open();
    for path in targets {
        let result = match (replace, &records) {
            (Some(from), _) => apply_replace(&path, from, &hosts, dry_run),
            (None, Some(records)) if remove => {
                apply_remove(&path, &records.get(&path), &hosts, dry_run)
            }
            (None, _) => apply(&path, &hosts, remove, dry_run),
        };
        if let (Ok(changes), Some(records), false) = (&result, &records, dry_run) {
            let kept = match (replace, remove) {
                (Some(_), _) => records.note(&path, changes),
                (None, true) => records.forget(&path),
                _ => Ok(()),
            };
            if let Err(e) = kept {
                let _ = writeln!(
                    err,
                    "ecr-edge configure: warning: {e}; `configure --remove` will not know which \
                     entries to give back to the helper they named"
                );
            }
        }
        match result {
            Ok(changes) if changes.is_empty() => {
                let _ = writeln!(out, "{}: already up to date", path.display());
            }
            Ok(changes) => {
                let verb = if dry_run { "would change" } else { "updated" };
                let _ = writeln!(out, "{} {verb}:", path.display());
                for c in changes {
                    let _ = writeln!(out, "  {c}");
                }
            }
            Err(e) => {
                let _ = writeln!(err, "ecr-edge configure: {e}");
                status = Exit::Failure;
            }
        }
    }
    status
}

/// An unusable argument: said on `err`.
fn usage(err: &mut dyn Write, message: &str) -> Exit {
    let _ = writeln!(err, "ecr-edge configure: {message}");
    Exit::Usage
}
