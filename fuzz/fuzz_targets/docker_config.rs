//! `ecr-edge configure` editing a user's Docker config.json.
#![no_main]
use ecr_edge::internal::configure::edit;
use libfuzzer_sys::fuzz_target;

const HOSTS: &[&str] = &[
    "123456789012.dkr.ecr.us-west-2.amazonaws.com",
    "public.ecr.aws",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(old) = std::str::from_utf8(rest) else {
        return;
    };
    let hosts: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    let remove = flags & 1 == 1;
    if let Ok((new, _)) = edit(old, &hosts, remove) {
        // The result is a JSON object that keeps every other top-level key, and editing it
        // again changes nothing.
        let new_v: serde_json::Value = serde_json::from_str(&new).expect("output is JSON");
        if !old.trim().is_empty() {
            let old_v: serde_json::Value = serde_json::from_str(old).unwrap();
            for (k, v) in old_v.as_object().unwrap() {
                if k != "credHelpers" {
                    assert_eq!(&new_v[k], v, "{k} changed");
                }
            }
        }
        let (_, again) = edit(&new, &hosts, remove).expect("output is editable");
        assert!(again.is_empty(), "not idempotent");
    }
});
