//! /etc/ecr-edge/config.toml.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = ecr_edge::internal::config::parse(s) {
        // Accepted settings are the validated kind.
        if let Some(d) = &c.daemon {
            assert!(d.socket.is_absolute());
            assert!((1..=86_400).contains(&d.backoff_max));
        }
    }
});
