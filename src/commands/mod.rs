//! The operator's commands: `doctor` (and the ELF reader it uses to check helpers), `configure`
//! (credHelpers entries), installing the kubelet provider, `status`, `refresh` (a top-up now),
//! `credentials`, and `iot`
//! (`keygen` and `csr`: the device key made where it lives, and its certificate request). Each
//! exposes `run(…, out, err) -> Exit`; the command line only parses and dispatches.

pub mod configure;
pub mod credentials;
pub mod doctor;
pub mod elf;
pub mod iot;
pub mod provider_setup;
pub mod refresh;
pub mod status;
