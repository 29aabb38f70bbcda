//! Local storage: private, atomic, symlink-refusing file access; the per-user token cache; and
//! the Docker/containers auth-file editor shared by `configure` and the daemon's sinks.

pub mod authfile;
pub mod cache;
pub mod files;
pub mod floor;
