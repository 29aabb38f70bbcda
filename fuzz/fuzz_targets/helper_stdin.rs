//! The Docker helper's stdin for `store` (JSON) and the server-URL checks every action shares;
//! `get` and `erase` go on to the cache and network, which this target does not reach.
#![no_main]
use ecr_edge::internal::helper::{run, Action};
use ecr_edge::internal::input::{echoed_run, named_host, REFUSAL_WORDS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let code = run(Action::Store, None, &mut &data[..], &mut out, None).code();
    // Exactly one line, success or failure.
    assert!(code == 0 || code == 1);
    if code == 1 {
        assert!(out.ends_with(b"\n") && out.iter().filter(|&&b| b == b'\n').count() == 1);
        // The payload carries a password: no run of it comes back, except the registry host.
        let out = String::from_utf8_lossy(&out);
        let host = named_host(data);
        assert_eq!(echoed_run(data, &out, &[&host, REFUSAL_WORDS]), None, "{out}");
    } else {
        assert!(out.is_empty());
    }
});
