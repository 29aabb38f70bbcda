//! The `ecr-edge` binary; also `docker-credential-ecr-edge` through a symlink. All logic lives in
//! the library: this only hands over the arguments and exits with the status it returns.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(ecr_edge::cli::main(std::env::args_os().collect()))
}
