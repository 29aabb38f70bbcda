//! Protocol front-ends: how clients ask for a token, and how each one is answered.
//!
//! Each front-end reads its client's request, asks [`crate::resolve`] for a token, and turns
//! every outcome into its client's output in one place. They share resolution, never each
//! other's code. (The third front-end, the daemon's socket, lives with the daemon.)

pub mod helper;
pub mod kubelet;
