//! The operator's commands: `doctor` (and the ELF reader it uses to check helpers), `configure`
//! (credHelpers entries), installing the kubelet provider, and `status`.

pub mod configure;
pub mod doctor;
pub mod elf;
pub mod provider_setup;
pub mod status;
