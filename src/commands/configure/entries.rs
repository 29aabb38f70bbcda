//! The `credHelpers` entries `ecr-edge configure` writes into Docker and containers auth files.
//!
//! A `credHelpers` key that is not exactly the registry host silently means anonymous pulls, so
//! keys are always written as the bare host [`Registry::host`] derives. The user's file is
//! otherwise left as it was: every other key and value survives (order kept, numbers kept to the
//! digit), its mode and owner are kept, the write is atomic, concurrent runs serialise on a lock
//! of the file's directory, and a file that is not a JSON object is reported and not touched.
//! Running twice changes nothing the second time.
//!
//! The edit itself is pure ([`edit`]: text in, text out) so it can be tested and fuzzed apart
//! from the file handling, which [`crate::store::authfile`] does for this command and for the
//! daemon's sinks alike.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::store::authfile::{parse_object, to_text, update, AuthFileError, EditError};

/// The helper name written as the `credHelpers` value (`docker-credential-ecr-edge`).
pub const HELPER_NAME: &str = "ecr-edge";

/// One change to `credHelpers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new entry.
    Added(String),
    /// An entry that named another helper now names ecr-edge.
    Replaced {
        /// The registry host.
        host: String,
        /// The helper it named before.
        was: String,
    },
    /// An ecr-edge entry taken out.
    Removed(String),
    /// A `credsStore` naming the helper being replaced, taken out (its ECR registries get
    /// `credHelpers` entries instead).
    StoreRemoved(String),
    /// An entry `--replace` took from another helper, given back by `--remove`.
    Restored {
        /// The registry host.
        host: String,
        /// The helper it names again.
        helper: String,
    },
    /// The `credsStore` `--replace` took out, put back by `--remove`.
    StoreRestored(String),
    /// A key for the same registry that is not its bare host (`https://…/`, upper case, a
    /// path): Docker never matched it, so it only hid the missing entry. Taken out.
    Unmatched {
        /// The key as it was.
        key: String,
        /// The helper it named.
        helper: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added(h) => write!(f, "+ credHelpers[\"{h}\"] = \"{HELPER_NAME}\""),
            Change::Replaced { host, was } => write!(
                f,
                "~ credHelpers[\"{host}\"] = \"{HELPER_NAME}\" (was \"{was}\")"
            ),
            Change::Removed(h) => write!(f, "- credHelpers[\"{h}\"] = \"{HELPER_NAME}\""),
            Change::StoreRemoved(was) => write!(f, "- credsStore = \"{was}\""),
            Change::Restored { host, helper } => write!(
                f,
                "~ credHelpers[\"{host}\"] = \"{helper}\" (given back: was \"{HELPER_NAME}\")"
            ),
            Change::StoreRestored(was) => write!(f, "+ credsStore = \"{was}\" (given back)"),
            Change::Unmatched { key, helper } => write!(
                f,
                "- credHelpers[{key:?}] = {helper:?} (not a bare host: Docker never used it)"
            ),
        }
    }
}

/// Applies the entries for `hosts` to the JSON text `old` (empty text = a new file).
///
/// Returns the new text (tab-indented as Docker writes it, with a final newline) and the
/// changes; no changes means the file should not be rewritten. With `remove`, only entries that
/// name ecr-edge are taken out.
///
/// # Errors
/// A message when `old` is not a JSON object or its `credHelpers` is not an object.
pub fn edit(old: &str, hosts: &[String], remove: bool) -> Result<(String, Vec<Change>), EditError> {
    let mut root = parse_object(old)?;
    let mut changes = Vec::new();
    let helpers = root
        .entry("credHelpers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(helpers) = helpers else {
        return Err(EditError::NotAnObject("credHelpers"));
    };
    for host in hosts {
        // Keys that name this registry in another form never matched a pull: whatever helper
        // they name, they go (doctor fails on them and prints this command as the fix).
        let unmatched: Vec<String> = helpers
            .keys()
            .filter(|k| {
                *k != host && crate::registry::Registry::parse(k).is_some_and(|r| r.host() == host)
            })
            .cloned()
            .collect();
        for key in unmatched {
            if let Some(v) = helpers.shift_remove(&key) {
                changes.push(Change::Unmatched {
                    key,
                    helper: v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                });
            }
        }
        match (remove, helpers.get(host)) {
            (false, Some(Value::String(v))) if v == HELPER_NAME => {}
            (false, existing) => {
                let change = match existing {
                    Some(v) => Change::Replaced {
                        host: host.clone(),
                        was: v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    },
                    None => Change::Added(host.clone()),
                };
                helpers.insert(host.clone(), Value::String(HELPER_NAME.into()));
                changes.push(change);
            }
            (true, Some(Value::String(v))) if v == HELPER_NAME => {
                helpers.shift_remove(host);
                changes.push(Change::Removed(host.clone()));
            }
            (true, _) => {}
        }
    }
    if helpers.is_empty() && remove {
        root.shift_remove("credHelpers");
    }
    Ok((to_text(root)?, changes))
}

/// Moves a file from the helper `from` (`ecr-login`) to ecr-edge: every `credHelpers` entry
/// naming `from` names ecr-edge instead, and a `credsStore` of `from` is replaced by
/// `credHelpers` entries for the ECR registries found among the `auths` keys (other
/// registries go back to Docker's own store). Everything else is kept as [`edit`] keeps it.
///
/// # Errors
/// A message when `old` is not a JSON object or its `credHelpers` is not an object.
pub fn replace(old: &str, from: &str) -> Result<(String, Vec<Change>), EditError> {
    let mut root = parse_object(old)?;
    let mut changes = Vec::new();
    let mut hosts: Vec<String> = Vec::new();
    if root.get("credsStore").and_then(Value::as_str) == Some(from) {
        root.shift_remove("credsStore");
        changes.push(Change::StoreRemoved(from.to_owned()));
        if let Some(Value::Object(auths)) = root.get("auths") {
            for key in auths.keys() {
                if let Some(r) = crate::registry::Registry::parse(key) {
                    if !hosts.iter().any(|h| h == r.host()) {
                        hosts.push(r.host().to_owned());
                    }
                }
            }
        }
    }
    if let Some(Value::Object(helpers)) = root.get("credHelpers") {
        for (host, v) in helpers {
            if v.as_str() == Some(from) && !hosts.contains(host) {
                hosts.push(host.clone());
            }
        }
    }
    if hosts.is_empty() && changes.is_empty() {
        return Ok((to_text(root)?, changes));
    }
    let (text, more) = edit(&to_text(root)?, &hosts, false)?;
    changes.extend(more);
    Ok((text, changes))
}

/// What `--replace` took over in one auth file, so that `--remove` can give it back: the
/// entries that named another helper, a `credsStore` taken out, and the entries added in its
/// place. Kept by ecr-edge (see [`Records`]), not in the auth file: Docker rewrites that file
/// and drops keys it does not know.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Replaced {
    /// Host -> the helper its entry named before.
    #[serde(default)]
    pub helpers: std::collections::BTreeMap<String, String>,
    /// The `credsStore` taken out.
    #[serde(default)]
    pub store: Option<String>,
    /// Entries added for the registries that store served.
    #[serde(default)]
    pub added: Vec<String>,
}

impl Replaced {
    /// Adds what one `--replace` changed (an earlier record of a host is kept: it is the
    /// original).
    fn note(&mut self, changes: &[Change]) {
        let store_removed = changes.iter().any(|c| matches!(c, Change::StoreRemoved(_)));
        for c in changes {
            match c {
                Change::Replaced { host, was } => {
                    self.helpers
                        .entry(host.clone())
                        .or_insert_with(|| was.clone());
                }
                Change::StoreRemoved(was) => self.store = Some(was.clone()),
                Change::Added(host) if store_removed && !self.added.contains(host) => {
                    self.added.push(host.clone());
                }
                _ => {}
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.helpers.is_empty() && self.store.is_none() && self.added.is_empty()
    }
}

/// Gives back what `record` says `--replace` took, where ecr-edge still holds it: entries that
/// still name ecr-edge name their old helper again, the `credsStore` comes back (unless one was
/// set since) and the entries added in its place go.
///
/// # Errors
/// As [`edit`].
pub fn restore(old: &str, record: &Replaced) -> Result<(String, Vec<Change>), EditError> {
    let mut root = parse_object(old)?;
    let mut changes = Vec::new();
    if let Some(Value::Object(helpers)) = root.get_mut("credHelpers") {
        for (host, helper) in &record.helpers {
            if helpers.get(host).and_then(Value::as_str) == Some(HELPER_NAME) {
                helpers.insert(host.clone(), Value::String(helper.clone()));
                changes.push(Change::Restored {
                    host: host.clone(),
                    helper: helper.clone(),
                });
            }
        }
        if record.store.is_some() {
            for host in &record.added {
                if helpers.get(host).and_then(Value::as_str) == Some(HELPER_NAME) {
                    helpers.shift_remove(host);
                    changes.push(Change::Removed(host.clone()));
                }
            }
        }
        if helpers.is_empty() {
            root.shift_remove("credHelpers");
        }
    }
    if let Some(store) = &record.store {
        if !root.contains_key("credsStore") {
            root.insert("credsStore".into(), Value::String(store.clone()));
            changes.push(Change::StoreRestored(store.clone()));
        }
    }
    Ok((to_text(root)?, changes))
}

/// The records of what `--replace` took, per auth file: `$XDG_CONFIG_HOME/ecr-edge/replaced.json`
/// (else `~/.config/ecr-edge/replaced.json`), written atomically, mode 0600.
pub struct Records {
    path: PathBuf,
}

impl Records {
    /// This user's records, if there is a home to keep them in.
    pub fn open() -> Option<Records> {
        let dir = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| home().map(|h| h.join(".config")))?;
        Some(Records {
            path: dir.join("ecr-edge/replaced.json"),
        })
    }

    fn load(&self) -> std::collections::BTreeMap<String, Replaced> {
        let _as_owner = crate::store::files::act_as_owner_of(&self.path);
        crate::store::files::read_limited(&self.path, 1 << 20)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The record for `file`.
    pub fn get(&self, file: &Path) -> Replaced {
        self.load()
            .remove(&file.display().to_string())
            .unwrap_or_default()
    }

    /// Adds `changes` of a `--replace` on `file`.
    ///
    /// # Errors
    /// The records cannot be written.
    pub fn note(
        &self,
        file: &Path,
        changes: &[Change],
    ) -> Result<(), crate::store::files::FilesError> {
        let mut all = self.load();
        all.entry(file.display().to_string())
            .or_default()
            .note(changes);
        self.save(&all)
    }

    /// Forgets `file`'s record (its entries were given back).
    ///
    /// # Errors
    /// The records cannot be written.
    pub fn forget(&self, file: &Path) -> Result<(), crate::store::files::FilesError> {
        let mut all = self.load();
        if all.remove(&file.display().to_string()).is_none() {
            return Ok(());
        }
        self.save(&all)
    }

    fn save(
        &self,
        all: &std::collections::BTreeMap<String, Replaced>,
    ) -> Result<(), crate::store::files::FilesError> {
        let _as_owner = crate::store::files::act_as_owner_of(&self.path);
        let all: std::collections::BTreeMap<_, _> =
            all.iter().filter(|(_, r)| !r.is_empty()).collect();
        if all.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(crate::store::files::io_err(&self.path)(e))
                }
                _ => Ok(()),
            };
        }
        if let Some(dir) = self.path.parent() {
            if !dir.exists() {
                crate::store::files::ensure_private_dir(dir)?;
            }
        }
        let text = serde_json::to_string_pretty(&all).unwrap_or_default();
        crate::store::files::write_atomic(&self.path, text.as_bytes(), 0o600)
    }
}

/// `--remove` on the auth file at `path`: first what `record` says `--replace` took is given
/// back, then the remaining entries naming ecr-edge for `hosts` go; one atomic update.
///
/// # Errors
/// [`AuthFileError`]; the file is unchanged in every error case.
pub fn apply_remove(
    path: &Path,
    record: &Replaced,
    hosts: &[String],
    dry_run: bool,
) -> Result<Vec<Change>, AuthFileError> {
    update(path, dry_run, |old| {
        let (text, mut changes) = restore(old, record)?;
        let (text, more) = edit(&text, hosts, true)?;
        changes.extend(more);
        Ok((text, changes))
    })
}

/// Updates the auth file at `path` for `hosts`; returns the changes made (or, with `dry_run`,
/// the changes that would be made, writing nothing).
///
/// A missing file is created (0600, its directory 0700). An existing file keeps its mode and
/// owner. A symlink at `path` is refused rather than followed or replaced.
///
/// # Errors
/// [`AuthFileError`]; the file is unchanged in every error case.
pub fn apply(
    path: &Path,
    hosts: &[String],
    remove: bool,
    dry_run: bool,
) -> Result<Vec<Change>, AuthFileError> {
    update(path, dry_run, |old| edit(old, hosts, remove))
}

/// [`replace`] on the auth file at `path`, then [`edit`] for `hosts`, in one atomic update.
///
/// # Errors
/// [`AuthFileError`]; the file is unchanged in every error case.
pub fn apply_replace(
    path: &Path,
    from: &str,
    hosts: &[String],
    dry_run: bool,
) -> Result<Vec<Change>, AuthFileError> {
    update(path, dry_run, |old| {
        let (text, mut changes) = replace(old, from)?;
        let (text, more) = edit(&text, hosts, false)?;
        changes.extend(more);
        Ok((text, changes))
    })
}

/// The Docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(Path::new(&dir).join("config.json"));
    }
    home().map(|h| h.join(".docker/config.json"))
}

/// The persistent containers auth file (podman, skopeo, buildah): `$REGISTRY_AUTH_FILE`, else
/// `~/.config/containers/auth.json`.
pub fn containers_auth_path() -> Option<PathBuf> {
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(f));
    }
    home().map(|h| h.join(".config/containers/auth.json"))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn adds_to_empty_and_is_idempotent() {
        let (text, changes) = edit("", &hosts(&["public.ecr.aws"]), false).unwrap();
        assert_eq!(
            text,
            "{\n\t\"credHelpers\": {\n\t\t\"public.ecr.aws\": \"ecr-edge\"\n\t}\n}\n"
        );
        assert_eq!(changes, vec![Change::Added("public.ecr.aws".into())]);
        let (again, changes) = edit(&text, &hosts(&["public.ecr.aws"]), false).unwrap();
        assert!(changes.is_empty());
        assert_eq!(again, text);
    }

    #[test]
    fn keeps_everything_else_in_order_and_precision() {
        let old = r#"{"zeta":1,"auths":{"ghcr.io":{"auth":"eA=="}},"big":123456789012345678901234567890,"f":1.50,"credHelpers":{"a.io":"gcloud"},"alpha":[true,null]}"#;
        let (text, _) = edit(old, &hosts(&["public.ecr.aws"]), false).unwrap();
        let keys: Vec<&str> = ["zeta", "auths", "big", "f", "credHelpers", "alpha"].to_vec();
        let mut last = 0;
        for k in keys {
            let at = text.find(&format!("\"{k}\"")).unwrap();
            assert!(at >= last, "{k} out of order in {text}");
            last = at;
        }
        assert!(text.contains("123456789012345678901234567890"));
        assert!(text.contains("1.50"));
        assert!(text.contains("\"a.io\": \"gcloud\""));
    }

    #[test]
    fn replaces_other_helpers_and_removes_only_ours() {
        let old = r#"{"credHelpers":{"h1":"ecr-login","h2":"ecr-edge","h3":"other"}}"#;
        let (text, changes) = edit(old, &hosts(&["h1"]), false).unwrap();
        assert_eq!(
            changes,
            vec![Change::Replaced {
                host: "h1".into(),
                was: "ecr-login".into()
            }]
        );
        let (text, changes) = edit(&text, &hosts(&["h1", "h2", "h3", "h4"]), true).unwrap();
        assert_eq!(
            changes,
            vec![Change::Removed("h1".into()), Change::Removed("h2".into())]
        );
        assert!(text.contains("\"h3\": \"other\""));
        let (text, _) = edit(r#"{"credHelpers":{"h":"ecr-edge"}}"#, &hosts(&["h"]), true).unwrap();
        assert_eq!(text, "{}\n");
    }

    #[test]
    fn refuses_non_objects() {
        for bad in ["[]", "3", "{", "{\"a\":1,}", "null", "\"x\""] {
            assert!(
                matches!(
                    edit(bad, &hosts(&["h"]), false),
                    Err(EditError::NotObject(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            edit(r#"{"credHelpers":[]}"#, &hosts(&["h"]), false),
            Err(EditError::NotAnObject("credHelpers"))
        );
    }
}
