//! Shared test fixtures: a test CA, a fake ECR behind a real HTTPS proxy, and a command builder
//! that runs the real binary with a sealed environment.
//!
//! The fake is reached the way a device behind a corporate proxy reaches AWS: the helper gets
//! `HTTPS_PROXY=http://127.0.0.1:<port>` and sends `CONNECT api.ecr.<region>.amazonaws.com:443`.
//! The fake records that host (so tests see which endpoint the helper chose for each registry
//! form), answers the tunnel with TLS under a certificate for that very name from the test CA
//! (trusted through `SSL_CERT_FILE`), and then checks what ECR checks: the SigV4 signature over
//! the signed headers and body, the access key, the session token, the clock, the target.
//! Nothing leaves loopback.

#![allow(dead_code)]

pub mod iot;
pub mod tpm;

mod ca;
mod ecr;
mod sandbox;

pub use ca::*;
pub use ecr::*;
pub use sandbox::*;

/// Credentials the fake accepts.
pub const ACCESS_KEY_ID: &str = "ASIATESTKEYID0000001";
/// The secret the fake verifies signatures with. Tests assert it never appears in output.
pub const SECRET_ACCESS_KEY: &str = "tEsTsEcReT/0123456789abcdefghijklmnopqrstu";
/// The session token the fake requires.
pub const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN/xyz==";

/// Credentials the fake STS hands out for `AssumeRole`; the fake ECR accepts them too.
pub const ROLE_ACCESS_KEY_ID: &str = "ASIAASSUMEDROLE00001";
/// Secret of the assumed-role credentials.
pub const ROLE_SECRET_ACCESS_KEY: &str = "r0leSeCrEt/abcdefghijklmnopqrstuvwxyz0123";
/// Session token of the assumed-role credentials.
pub const ROLE_SESSION_TOKEN: &str = "FwoGZXIvYXdzROLESESSIONTOKEN/abc==";

/// Whether the tests run as root (which ignores file modes unless its capabilities are cut).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
