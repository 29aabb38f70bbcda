//! Sinks: auth files kept current for consumers that cannot run a credential helper (k3s's
//! `registries.yaml` alternatives, CRI-O, scripts). Both formats are `{"auths": {"<host>":
//! {"auth": base64("AWS:<password>")}}}`; every other key and entry in the file is kept, and
//! the file is rewritten through [`crate::store::authfile::update_secret`] (a private lock file,
//! atomic, owner kept, never wider than 0600, symlinks refused).

use std::path::Path;

use serde_json::{Map, Value};

use crate::store::authfile::{self, AuthFileError, EditError};
use crate::token::USERNAME;

/// One registry's entry for a sink: the password while a usable token is held, else `None`
/// (the entry is removed, so no consumer is handed an expired token).
pub type SinkEntry<'a> = (&'a str, Option<&'a crate::token::Secret>);

/// Applies `entries` to the auth file text `old`; returns the new text and the hosts changed.
///
/// # Errors
/// [`EditError`] when `old` is not a JSON object or its `auths` is not an object.
pub fn edit(old: &str, entries: &[SinkEntry<'_>]) -> Result<(String, Vec<String>), EditError> {
    let mut root = authfile::parse_object(old)?;
    let auths = root
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        return Err(EditError::NotAnObject("auths"));
    };
    let mut changed = Vec::new();
    for (host, password) in entries {
        match password {
            Some(pw) => {
                let auth = aws_smithy_types::base64::encode(format!("{USERNAME}:{}", pw.expose()));
                let entry = auths
                    .entry(host.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(fields) = entry {
                    if fields.get("auth").and_then(Value::as_str) != Some(auth.as_str()) {
                        fields.insert("auth".into(), Value::String(auth));
                        changed.push(host.to_string());
                    }
                }
            }
            None => {
                if auths.shift_remove(*host).is_some() {
                    changed.push(host.to_string());
                }
            }
        }
    }
    Ok((authfile::to_text(root)?, changed))
}

/// Brings the auth file at `path` up to date with `entries`; returns the hosts changed.
///
/// # Errors
/// [`AuthFileError`]; the file is unchanged in every error case.
pub fn write(path: &Path, entries: &[SinkEntry<'_>]) -> Result<Vec<String>, AuthFileError> {
    authfile::update_secret(path, |old| edit(old, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_replaces_and_removes_only_its_own_entries() {
        let (pw1, pw2) = (
            crate::token::Secret::new("pw1"),
            crate::token::Secret::new("pw2"),
        );
        let old = r#"{"auths":{"docker.io":{"auth":"dXNlcjpwYXNz"},"1.dkr.ecr.us-east-1.amazonaws.com":{"auth":"old","email":"x"}},"credsStore":"pass","n":1.50}"#;
        let (new, changed) = edit(
            old,
            &[
                ("1.dkr.ecr.us-east-1.amazonaws.com", Some(&pw1)),
                ("2.dkr.ecr.us-east-1.amazonaws.com", Some(&pw2)),
                ("3.dkr.ecr.us-east-1.amazonaws.com", None),
            ],
        )
        .unwrap();
        assert_eq!(
            changed,
            [
                "1.dkr.ecr.us-east-1.amazonaws.com",
                "2.dkr.ecr.us-east-1.amazonaws.com"
            ]
        );
        let v: Value = serde_json::from_str(&new).unwrap();
        assert_eq!(v["auths"]["docker.io"]["auth"], "dXNlcjpwYXNz");
        assert_eq!(v["credsStore"], "pass");
        assert!(new.contains("1.50"), "numbers kept to the digit: {new}");
        let auth = v["auths"]["1.dkr.ecr.us-east-1.amazonaws.com"]["auth"]
            .as_str()
            .unwrap();
        assert_eq!(
            aws_smithy_types::base64::decode(auth).unwrap(),
            b"AWS:pw1".to_vec()
        );
        assert_eq!(
            v["auths"]["1.dkr.ecr.us-east-1.amazonaws.com"]["email"],
            "x"
        );
        // Unchanged input: no changes, so no rewrite.
        let (_, again) = edit(
            &new,
            &[
                ("1.dkr.ecr.us-east-1.amazonaws.com", Some(&pw1)),
                ("2.dkr.ecr.us-east-1.amazonaws.com", Some(&pw2)),
            ],
        )
        .unwrap();
        assert!(again.is_empty());
        // An expired token's entry goes.
        let (gone, changed) = edit(&new, &[("2.dkr.ecr.us-east-1.amazonaws.com", None)]).unwrap();
        assert_eq!(changed, ["2.dkr.ecr.us-east-1.amazonaws.com"]);
        assert!(!gone.contains("2.dkr.ecr"));
        assert!(gone.contains("docker.io"));
    }

    #[test]
    fn refuses_files_it_cannot_edit_safely() {
        assert!(matches!(edit("[1]", &[]), Err(EditError::NotObject(_))));
        assert!(matches!(
            edit(r#"{"auths":[]}"#, &[]),
            Err(EditError::NotAnObject("auths"))
        ));
        assert!(edit(
            "",
            &[("public.ecr.aws", Some(&crate::token::Secret::new("p")))]
        )
        .is_ok());
    }
}
