//! ecr-edge against the incumbent `docker-credential-ecr-login` (Debian's
//! amazon-ecr-credential-helper), in one run, on one machine, against the same local fake ECR
//! (tests/support: real TLS through an HTTPS proxy, SigV4 verified). Prints a table.
//!
//! `cargo bench --bench compare` (release build). `ECR_EDGE_BENCH_RUNS` sets the cached-get run
//! count (default 200). Then each figure beside its floor (issue 30): the cached `get` against
//! benches/floor/floor.c, a static program doing only that job, in interleaved runs. Peak memory
//! is read exactly by benches/floor/probe.c (the page tables' resident memory as the child exits,
//! under ptrace: nothing of the probe counted), whose floor, a static program that exits at once, is printed beside it.
//! scripts/bench builds both (`ECR_EDGE_FLOOR_DIR`, default target/floor).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Sandbox;

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const INCUMBENT: &str = "/usr/bin/docker-credential-ecr-login";

/// One helper under test: its path and how to clear its cache.
struct Subject {
    name: &'static str,
    program: PathBuf,
    cache: PathBuf,
}

fn main() {
    for tool in [floor_tool("probe"), floor_tool("floor")] {
        if !tool.exists() {
            eprintln!(
                "{} is missing: scripts/bench builds it from benches/floor/",
                tool.display()
            );
            std::process::exit(1);
        }
    }
    if !Path::new(INCUMBENT).exists() {
        eprintln!("{INCUMBENT} is missing: run scripts/install-deps bench");
        std::process::exit(1);
    }
    let runs: usize = std::env::var("ECR_EDGE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut sb = Sandbox::new();
    // The incumbent caches under $HOME/.ecr; ecr-edge under ECR_EDGE_CACHE_DIR.
    let home = sb.dir.path().join("home");
    sb.set("AWS_REGION", Some("us-west-2"));
    let incumbent_link = sb.dir.path().join("docker-credential-ecr-login");
    std::os::unix::fs::symlink(INCUMBENT, &incumbent_link).unwrap();
    let subjects = [
        Subject {
            name: "ecr-edge",
            program: sb.helper.clone(),
            cache: sb.cache_dir(),
        },
        Subject {
            name: "ecr-login (incumbent)",
            program: incumbent_link,
            cache: home.join(".ecr"),
        },
    ];

    println!("benchmark: cached/cold get against the local fake ECR, {runs} cached runs each");
    println!(
        "machine: {} cores; ecr-edge {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        support::binary().display()
    );
    let mut rows = Vec::new();
    for s in &subjects {
        // Sanity: both helpers must really work against the fake before being timed.
        let _ = std::fs::remove_dir_all(&s.cache);
        let out = run(&sb, &s.program);
        assert!(out.0, "{} failed against the fake: {}", s.name, out.1);

        let cached = time_runs(runs, || {
            run(&sb, &s.program);
        });
        let cold = time_runs(20, || {
            let _ = std::fs::remove_dir_all(&s.cache);
            run(&sb, &s.program);
        });
        let rss_cached = rss(&sb, &s.program);
        let _ = std::fs::remove_dir_all(&s.cache);
        let rss_cold = rss(&sb, &s.program);

        let _ = std::fs::remove_dir_all(&s.cache);
        let before = sb.fake.calls().len();
        sb.fake
            .set_mode(support::Mode::Slow(Duration::from_millis(200)));
        let start = Instant::now();
        let children: Vec<_> = (0..32).map(|_| spawn(&sb, &s.program)).collect();
        let ok = children
            .into_iter()
            .filter_map(|c| c.wait_with_output().ok())
            .filter(|o| o.status.success())
            .count();
        let burst = start.elapsed();
        sb.fake.set_mode(support::Mode::Ok);
        let burst_calls = sb.fake.calls().len() - before;
        rows.push(Row {
            name: s.name,
            cached,
            cold,
            rss_cached,
            rss_cold,
            burst,
            burst_calls,
            ok,
        });
    }

    println!(
        "\n{:<22} {:>11} {:>11} {:>11} {:>13} {:>11} {:>16} {:>10}",
        "helper",
        "cached p50",
        "cached p99",
        "cold p50",
        "RSS cached",
        "RSS cold",
        "32 cold: wall",
        "upstream"
    );
    for r in &rows {
        println!(
            "{:<22} {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>10} KiB {:>7} KiB {:>14.0}ms {:>5} calls ({}/32 ok)",
            r.name, ms(r.cached.0), ms(r.cached.1), ms(r.cold.0), r.rss_cached.peak, r.rss_cold.peak, ms(r.burst), r.burst_calls, r.ok
        );
    }
    let (e, i) = (&rows[0], &rows[1]);
    println!("\nratios (incumbent / ecr-edge): cached get p50 {:.1}x faster, p99 {:.1}x; cold get {:.1}x; peak RSS (cached get) {:.1}x smaller ({:.2} of incumbent)",
        ms(i.cached.0) / ms(e.cached.0), ms(i.cached.1) / ms(e.cached.1), ms(i.cold.0) / ms(e.cold.0),
        i.rss_cached.peak as f64 / e.rss_cached.peak as f64, e.rss_cached.peak as f64 / i.rss_cached.peak as f64);
    println!(
        "upstream calls for 32 concurrent cold gets: ecr-edge {}, incumbent {}",
        e.burst_calls, i.burst_calls
    );
    floor_section(&sb, runs);
    daemon_section(&mut sb, runs);
    println!("\nbinary sizes (goal for aarch64: <= {SIZE_GOAL} bytes; CI budget 4,000,000):");
    for t in [
        "aarch64-unknown-linux-musl",
        "armv7-unknown-linux-musleabihf",
        "x86_64-unknown-linux-musl",
    ] {
        let p = format!("target/{t}/release/ecr-edge");
        match std::fs::metadata(&p) {
            Ok(m) if t.starts_with("aarch64") => println!(
                "  ecr-edge {t:<32} {:>9} bytes ({:.2} of the goal)",
                m.len(),
                m.len() as f64 / SIZE_GOAL as f64
            ),
            Ok(m) => println!("  ecr-edge {t:<32} {:>9} bytes", m.len()),
            Err(_) => println!("  ecr-edge {t:<32} (not built: scripts/cross-build {t})"),
        }
    }
    if let Ok(m) = std::fs::metadata(INCUMBENT) {
        println!("  incumbent {INCUMBENT} (Debian, amd64) {} bytes", m.len());
    }
}

/// One helper's measurements.
struct Row {
    name: &'static str,
    cached: (Duration, Duration),
    cold: (Duration, Duration),
    rss_cached: Peak,
    rss_cold: Peak,
    burst: Duration,
    burst_calls: usize,
    ok: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and 99th percentile wall time of `runs` calls of `f`.
fn time_runs(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    t.sort();
    let p99 = ((runs as f64 * 0.99).ceil() as usize).clamp(1, runs) - 1;
    (t[runs / 2], t[p99])
}

fn helper_cmd(sb: &Sandbox, program: &Path) -> Command {
    sb.command_for(program, "get")
}

fn spawn(sb: &Sandbox, program: &Path) -> std::process::Child {
    let mut child = helper_cmd(sb, program).spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(HOST.as_bytes())
        .unwrap();
    child
}

fn run(sb: &Sandbox, program: &Path) -> (bool, String) {
    let out = support::run_with_input(helper_cmd(sb, program), HOST.as_bytes());
    (
        out.status.success(),
        support::text(&out.stdout) + &support::text(&out.stderr),
    )
}

/// A program of benches/floor/, as scripts/bench builds it: `probe` (exact peak memory) or
/// `floor` (the cached `get`'s floor).
fn floor_tool(name: &str) -> PathBuf {
    std::env::var_os("ECR_EDGE_FLOOR_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/floor"))
        .join(name)
}

/// Peak memory of one process as benches/floor/probe.c reads it as the process exits, KiB: the
/// peak (the resident memory then, or the high-water mark if larger), and of it the anonymous
/// and the file-backed memory.
#[derive(Clone, Copy)]
struct Peak {
    peak: i64,
    anon: i64,
    file: i64,
}

/// Runs `args` (program first) under the probe, with `env` and `input` on stdin.
fn probe(args: &[&std::ffi::OsStr], env: &[(String, String)], input: &[u8]) -> Peak {
    let mut c = Command::new(floor_tool("probe"));
    c.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = support::run_with_input(c, input);
    let text = support::text(&out.stdout);
    let mut n = text.split_whitespace().map(|v| v.parse().unwrap_or(-1));
    let mut next = || n.next().unwrap_or(-1);
    Peak {
        peak: next(),
        anon: next(),
        file: next(),
    }
}

/// Peak memory of one `get` by `program`.
fn rss(sb: &Sandbox, program: &Path) -> Peak {
    probe(
        &[program.as_os_str(), "get".as_ref()],
        &sb.vars,
        HOST.as_bytes(),
    )
}

/// The aarch64 binary's size goal (issue 30), every feature included.
const SIZE_GOAL: u64 = 3_500_000;

/// The cached `get` beside its floor: benches/floor/floor.c reads stdin, reads the same cache
/// entry and writes the same JSON line, built static against musl like the shipping binary.
/// Both are spawned the same way (stdin from a file, output to /dev/null) in interleaved runs,
/// so load on the machine falls on both alike.
fn floor_section(sb: &Sandbox, runs: usize) {
    let _ = std::fs::remove_dir_all(sb.cache_dir());
    assert!(run(sb, &sb.helper).0, "the helper failed against the fake");
    let entry = std::fs::read_dir(sb.cache_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("the cached get left no cache entry");
    let input = sb.dir.path().join("floor-input");
    std::fs::write(&input, format!("{HOST}\n")).unwrap();
    let floor = floor_tool("floor");
    let stdin = || std::fs::File::open(&input).unwrap();
    let helper = || {
        let mut c = helper_cmd(sb, &sb.helper);
        c.stdin(stdin());
        c
    };
    let job = || {
        let mut c = Command::new(&floor);
        c.arg(&entry)
            .env_clear()
            .stdin(stdin())
            .stdout(Stdio::piped());
        c
    };
    // The floor does the same job: the same line out.
    let (a, b) = (job().output().unwrap(), helper().output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "floor or helper failed"
    );
    assert_eq!(
        support::text(&a.stdout).trim(),
        support::text(&b.stdout).trim()
    );
    let time = |mut c: Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        let start = Instant::now();
        let ok = c.status().is_ok_and(|s| s.success());
        assert!(ok, "a timed run failed");
        start.elapsed()
    };
    let (mut floor_t, mut helper_t) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        floor_t.push(time(job()));
        helper_t.push(time(helper()));
    }
    floor_t.sort();
    helper_t.sort();
    let (f, h) = (floor_t[runs / 2], helper_t[runs / 2]);
    println!(
        "\nagainst the floor (benches/floor: static musl, the same job; {runs} interleaved runs):"
    );
    println!(
        "  cached get p50: floor {:.3} ms, ecr-edge {:.3} ms: {:.2}x the floor (goal <= 2x)",
        ms(f),
        ms(h),
        ms(h) / ms(f)
    );
    let nothing = probe(&[floor.as_os_str()], &[], b"");
    let job_peak = probe(
        &[floor.as_os_str(), entry.as_os_str()],
        &[],
        HOST.as_bytes(),
    );
    let get = rss(sb, &sb.helper);
    println!(
        "  peak memory (resident at exit, exact): a static program that exits at once {} KiB, \
         the floor's job {} KiB, ecr-edge cached get {} KiB (anonymous {}, file-backed {}): \
         {:.1}x the floor; goal <= 1280 KiB ({:.2} of it)",
        nothing.peak,
        job_peak.peak,
        get.peak,
        get.anon,
        get.file,
        get.peak as f64 / job_peak.peak as f64,
        get.peak as f64 / 1280.0
    );
}

/// The daemon: `get` served over its socket (latency, helper peak RSS), and the daemon's own
/// idle RSS, natively and (when built) the aarch64 binary under qemu-user.
fn daemon_section(sb: &mut Sandbox, runs: usize) {
    let config = sb.dir.path().join("daemon.toml");
    std::fs::write(&config, format!("[daemon]\nregistries = [\"{HOST}\"]\n")).unwrap();
    sb.set("ECR_EDGE_CONFIG", Some(config.to_str().unwrap()));
    let _ = std::fs::remove_dir_all(sb.cache_dir());
    println!("\ndaemon (x86_64 musl, one registry, token held in memory):");
    let native = start_daemon(sb, None, &support::binary());
    let before = sb.fake.calls().len();
    let served = time_runs(runs, || {
        run(sb, &sb.helper);
    });
    assert_eq!(
        sb.fake.calls().len(),
        before,
        "gets were not served by the daemon"
    );
    let rss_served = rss(sb, &sb.helper).peak;
    std::thread::sleep(Duration::from_secs(3));
    let (rss, hwm) = proc_rss(native.id());
    println!(
        "  get served by the daemon: p50 {:.2} ms, p99 {:.2} ms; helper peak RSS {rss_served} KiB",
        ms(served.0),
        ms(served.1)
    );
    println!(
        "  daemon idle RSS {rss} KiB (peak {hwm} KiB); goal on the ARM guests <= 3072 KiB \
         (tests/lab.rs measures those)"
    );
    stop(native);
    let arm = PathBuf::from("target/aarch64-unknown-linux-musl/release/ecr-edge");
    if arm.exists() && Path::new("/usr/bin/qemu-aarch64-static").exists() {
        let d = start_daemon(sb, Some("/usr/bin/qemu-aarch64-static"), &arm);
        std::thread::sleep(Duration::from_secs(3));
        let (rss, hwm) = proc_rss(d.id());
        println!(
            "  aarch64 daemon under qemu-aarch64-static: RSS {rss} KiB (peak {hwm} KiB), \
             including the emulator's own memory"
        );
        stop(d);
    }
    sb.set("ECR_EDGE_CONFIG", None);
}

/// Starts the daemon and waits until a `get` is served by it.
fn start_daemon(sb: &Sandbox, runner: Option<&str>, program: &Path) -> std::process::Child {
    let mut c = match runner {
        Some(r) => {
            let mut c = Command::new(r);
            c.arg(program);
            c
        }
        None => Command::new(program),
    };
    c.arg("daemon")
        .env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().unwrap();
    let socket = sb.dir.path().join("agent.sock");
    let start = Instant::now();
    while !socket.exists() || !run(sb, &sb.helper).0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// Resident memory (from the page tables) and VmHWM of a process, KiB.
fn proc_rss(pid: u32) -> (i64, i64) {
    let field = |file: &str, name: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    // smaps_rollup walks the page tables; status's counters can lag (benches/floor/probe.c).
    (field("smaps_rollup", "Rss:"), field("status", "VmHWM:"))
}
