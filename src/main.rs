//! The `ecr-edge` binary; also `docker-credential-ecr-edge` through a symlink. All logic lives in
//! the library: this only hands over the arguments and exits with the status it returns.

/// Doug Lea's allocator for Rust's allocations (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(ecr_edge::cli::main(std::env::args_os().collect()))
}
