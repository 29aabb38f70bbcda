//! `ecr-edge credentials`: the device's `[iot]` exchange (and role hop) as `credential_process`
//! JSON, so `credential_process = ecr-edge credentials` in `~/.aws/config` gives any AWS SDK
//! program the device identity.

use std::fmt;
use std::io::Write;
use std::path::Path;

use crate::aws::ecr::FetchError;
use crate::exit::Exit;
use crate::settings::{Settings, SettingsError};

/// Why no credentials were printed.
#[derive(Debug)]
pub enum CredentialsError {
    /// The configuration cannot be used.
    Settings(SettingsError),
    /// The configuration has no `[iot]` section.
    NoIot,
    /// The exchange failed.
    Fetch(FetchError),
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsError::Settings(e) => e.fmt(f),
            CredentialsError::NoIot => {
                f.write_str("no [iot] section in the configuration: nothing to exchange")
            }
            CredentialsError::Fetch(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CredentialsError {}

/// Runs `ecr-edge credentials`: the JSON on `out`, or one line on `err` and
/// [`Exit::Failure`].
pub fn run(config: Option<&Path>, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    match credentials(config) {
        Ok(json) => {
            let _ = writeln!(out, "{json}");
            Exit::Success
        }
        Err(e) => {
            let _ = writeln!(err, "ecr-edge: {e}");
            Exit::Failure
        }
    }
}

/// The exchanged credentials, as `credential_process` JSON (version 1).
fn credentials(config: Option<&Path>) -> Result<String, CredentialsError> {
    let settings = Settings::load(config).map_err(CredentialsError::Settings)?;
    if settings.config.iot.is_none() {
        return Err(CredentialsError::NoIot);
    }
    // The device certificate and AWS's are judged no earlier than the floor this device kept.
    crate::store::floor::raise_to_kept(&settings.cache_dir);
    let source = crate::aws::credentials::Source::select(&settings.config);
    let region = crate::aws::credentials::home_region(&source, None);
    let fetcher = crate::aws::ecr::Fetcher::new(&source, &region, settings.deadline)
        .map_err(CredentialsError::Fetch)?;
    let creds = fetcher.credentials().map_err(CredentialsError::Fetch)?;
    let out = serde_json::json!({
        "Version": 1,
        "AccessKeyId": creds.access_key_id(),
        "SecretAccessKey": creds.secret_access_key(),
        "SessionToken": creds.session_token(),
        "Expiration": crate::aws::ecr::expiration_rfc3339(&creds),
    });
    Ok(out.to_string())
}
