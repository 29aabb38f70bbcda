//! Talking to AWS: the ECR token call, the IoT certificate exchange and device shadow, naming
//! the credential source, and the network underneath them all (one TLS trust policy, name
//! resolution bounded by the caller's deadline, one HTTP client for the SDK and the rest,
//! every byte counted).

pub mod cert;
pub mod credentials;
pub mod dns;
pub mod ecr;
pub mod https;
pub mod images;
pub mod iot;
mod outcome;
pub mod shadow;
pub mod traffic;
pub mod trust;

pub use outcome::{Failure, Outcome};
