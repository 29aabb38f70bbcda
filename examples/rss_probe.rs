//! Peak RSS of one command, for benches/compare.rs: `rss_probe PROGRAM ARGS... < input`.
//!
//! Linux charges a child's pre-exec memory (shared with its parent through vfork) to the child's
//! `maxrss`, so the parent must be small for the figure to be the command's own: this probe
//! links nothing but std and nix. Prints KiB on stdout.

use std::process::{Command, Stdio};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: rss_probe PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let status = Command::new(program)
        .args(rest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if status.is_err() {
        std::process::exit(1);
    }
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) {
        Ok(usage) => println!("{}", usage.max_rss()),
        Err(_) => std::process::exit(1),
    }
}
