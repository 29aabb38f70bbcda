//! Black-box tests: the real binary, real processes, real TLS through a real proxy to a fake ECR
//! that verifies SigV4 (see `support`). Set `ECR_EDGE_TEST_BIN` and `ECR_EDGE_TEST_RUNNER` to
//! run them against a cross-built binary under qemu-user.

mod accounts;
mod clock;
mod configure;
mod daemon;
mod dns;
mod doctor;
mod helper;
mod identity;
mod iot;
mod journal;
mod kubelet;
mod link;
mod metrics;
mod realclients;
mod support;
mod tpm;
