//! A fleet of devices running the daemon's real scheduling code (`ecr_edge::internal::schedule`) in
//! virtual time: the request rate each fleet puts on ECR and on the IoT credentials provider,
//! in steady state and when every device's uplink comes back at once after an outage.
//!
//! `cargo run --release --example fleet -- [DEVICES] [SVG]` (default 100000, fleet.svg).
//!
//! Model, per device: boots at a uniformly random moment in the first hour; each refresh
//! attempt first exchanges the IoT certificate if the role credentials (1 hour, the role
//! alias default) are within 5 minutes of expiry, then calls GetAuthorizationToken; a success
//! yields a 12-hour token, refreshed at `schedule::refresh_delay`; a failure waits
//! `Backoff::next` (cap 300 s). ECR answers at most 500 calls per second (its
//! GetAuthorizationToken quota per account and region) and throttles the rest, which the
//! devices treat as the daemon does. From hour 24 to hour 38 every uplink is down (attempts
//! fail without reaching AWS and back off to the cap; every 12-hour token expires); at hour 38
//! the links return together.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use ecr_edge::internal::schedule::{self, Backoff, Failure, Jitter, SeededJitter};

const HOUR_MS: u64 = 3_600_000;
const ECR_LIMIT_PER_S: u32 = 500;
const TOKEN_LIFE: Duration = Duration::from_secs(12 * 3600);
const CREDS_LIFE_MS: u64 = HOUR_MS;
const OUTAGE: (u64, u64) = (24 * HOUR_MS, 38 * HOUR_MS);
const END_MS: u64 = 54 * HOUR_MS;

struct Device {
    backoff: Backoff,
    creds_expire_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let svg_path = args.next().unwrap_or_else(|| "fleet.svg".into());
    let seconds = (END_MS / 1000) as usize;
    let mut ecr = vec![0u32; seconds];
    let mut throttled = vec![0u32; seconds];
    let mut iot = vec![0u32; seconds];
    let mut jitter = SeededJitter::new(2026);
    let mut devices: Vec<Device> = (0..n)
        .map(|_| Device {
            backoff: Backoff::new(schedule::DEFAULT_BACKOFF_CAP),
            creds_expire_ms: 0,
        })
        .collect();
    let mut events: BinaryHeap<Reverse<(u64, u32)>> = (0..n)
        .map(|i| {
            Reverse((
                ms(Duration::from_secs(3600).mul_f64(jitter.unit())),
                i as u32,
            ))
        })
        .collect();
    let mut back_at: Vec<Option<u64>> = vec![None; n];
    let mut expired_at_reconnect = 0usize;
    let mut counted_expired = false;
    let mut token_expires = vec![0u64; n];

    while let Some(Reverse((t, i))) = events.pop() {
        if t >= END_MS {
            break;
        }
        if !counted_expired && t >= OUTAGE.1 {
            counted_expired = true;
            expired_at_reconnect = token_expires.iter().filter(|e| **e <= OUTAGE.1).count();
        }
        let sec = (t / 1000) as usize;
        let d = &mut devices[i as usize];
        let outcome = if t >= OUTAGE.0 && t < OUTAGE.1 {
            Err(Failure::Transient) // the request never leaves the device
        } else {
            if d.creds_expire_ms <= t + ms(schedule::CREDENTIALS_MARGIN) {
                iot[sec] += 1;
                d.creds_expire_ms = t + CREDS_LIFE_MS;
            }
            if ecr[sec] >= ECR_LIMIT_PER_S {
                throttled[sec] += 1;
                Err(Failure::Throttled)
            } else {
                ecr[sec] += 1;
                Ok(())
            }
        };
        let next = match outcome {
            Ok(()) => {
                d.backoff.reset();
                token_expires[i as usize] = t + ms(TOKEN_LIFE);
                if t >= OUTAGE.1 && back_at[i as usize].is_none() {
                    back_at[i as usize] = Some(t - OUTAGE.1);
                }
                t + ms(schedule::refresh_delay(TOKEN_LIFE, &mut jitter))
            }
            Err(kind) => t + ms(d.backoff.next(kind, &mut jitter)).max(1),
        };
        events.push(Reverse((next, i)));
    }

    let window = |v: &[u32], from_h: u64, to_h: u64| -> (f64, u32) {
        let s = &v[(from_h * 3600) as usize..(to_h * 3600) as usize];
        let sum: u64 = s.iter().map(|x| u64::from(*x)).sum();
        (
            sum as f64 / s.len() as f64,
            s.iter().copied().max().unwrap_or(0),
        )
    };
    let (ecr_mean, ecr_steady_peak) = window(&ecr, 12, 24);
    let (iot_mean, iot_steady_peak) = window(&iot, 12, 24);
    let (_, ecr_after) = window(&ecr, 38, 40);
    let (_, iot_after) = window(&iot, 38, 40);
    let (_, thr_after) = window(&throttled, 38, 40);
    let (_, ecr_boot) = window(&ecr, 0, 2);
    let mut back: Vec<u64> = back_at.iter().map(|b| b.unwrap_or(u64::MAX)).collect();
    back.sort_unstable();
    let pct = |p: f64| back[((back.len() as f64 * p) as usize).min(back.len() - 1)] / 1000;
    println!("fleet: {n} devices, 54 h virtual time, outage of every uplink from 24 h to 38 h");
    println!(
        "steady state (12-24 h): ECR {ecr_mean:.1} calls/s mean, {ecr_steady_peak}/s peak; \
         IoT {iot_mean:.1}/s mean, {iot_steady_peak}/s peak"
    );
    println!("staggered boot (first hour): ECR peak {ecr_boot}/s");
    println!(
        "after reconnect (38-40 h): ECR peak {ecr_after}/s (limit {ECR_LIMIT_PER_S}), \
         throttled {thr_after}/s peak; IoT peak {iot_after}/s"
    );
    println!(
        "tokens expired during the outage: {expired_at_reconnect} of {n}; devices with a token \
         again after the links returned: half in {} s, 99% in {} s, all in {} s",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!("ECR calls/s per 10 minutes around the reconnect (mean / peak second):");
    for m in 37 * 6 + 3..40 * 6 {
        let s = &ecr[m * 600..(m + 1) * 600];
        let sum: u32 = s.iter().sum();
        println!(
            "  {:>2}h{:02}  {:>7.1} / {:>4}",
            m / 6,
            (m % 6) * 10,
            f64::from(sum) / 600.0,
            s.iter().max().unwrap_or(&0)
        );
    }
    match std::fs::write(&svg_path, svg(&ecr, &iot, n)) {
        Ok(()) => println!("chart: {svg_path}"),
        Err(e) => eprintln!("cannot write {svg_path}: {e}"),
    }
}

/// Per-minute peak-second rates as a line chart, with the ECR limit.
fn svg(ecr: &[u32], iot: &[u32], n: usize) -> String {
    let (w, h, pad) = (960.0, 360.0, 48.0);
    let minutes = ecr.len() / 60;
    let peak = |v: &[u32], m: usize| v[m * 60..(m + 1) * 60].iter().copied().max().unwrap_or(0);
    let y_max = 600.0_f64;
    let x = |m: usize| pad + (w - 2.0 * pad) * m as f64 / minutes as f64;
    let y = |r: f64| h - pad - (h - 2.0 * pad) * (r.min(y_max) / y_max);
    let line = |v: &[u32]| {
        (0..minutes)
            .map(|m| format!("{:.1},{:.1}", x(m), y(f64::from(peak(v, m)))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"20\">{n} devices: peak calls per second, each minute (all uplinks down 24-38 h)</text>\n"
    );
    for r in [0, 100, 200, 300, 400, 500, 600] {
        s += &format!(
            "<line x1=\"{pad}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"8\" y=\"{:.1}\">{r}</text>\n",
            w - pad,
            y(f64::from(r)),
            y(f64::from(r)),
            y(f64::from(r)) + 4.0
        );
    }
    for hr in (0..=54).step_by(6) {
        let xm = x(hr * 60);
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{hr}h</text>\n",
            xm,
            h - pad + 16.0
        );
    }
    s += &format!(
        "<rect x=\"{:.1}\" y=\"{pad}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f3f3f3\"/>\n",
        x(24 * 60),
        x(38 * 60) - x(24 * 60),
        h - 2.0 * pad
    );
    s += &format!(
        "<line x1=\"{pad}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"red\" stroke-dasharray=\"4\"/>\
         <text x=\"{}\" y=\"{:.1}\" fill=\"red\" text-anchor=\"end\">ECR limit 500/s</text>\n",
        w - pad,
        y(500.0),
        y(500.0),
        w - pad,
        y(500.0) - 4.0
    );
    s += &format!(
        "<polyline fill=\"none\" stroke=\"#1f77b4\" points=\"{}\"/>\n",
        line(ecr)
    );
    s += &format!(
        "<polyline fill=\"none\" stroke=\"#ff7f0e\" points=\"{}\"/>\n",
        line(iot)
    );
    s += &format!(
        "<text x=\"{}\" y=\"40\" fill=\"#1f77b4\" text-anchor=\"end\">ECR GetAuthorizationToken</text>\
         <text x=\"{}\" y=\"56\" fill=\"#ff7f0e\" text-anchor=\"end\">IoT credentials exchange</text>\n</svg>\n",
        w - pad,
        w - pad
    );
    s
}
