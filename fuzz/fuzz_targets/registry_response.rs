//! What `doctor --image` reads from a registry: manifests (index or image), error bodies, tag
//! lists and platform names. Any bytes: no panic, and every platform read prints back as
//! itself.
#![no_main]
use ecr_edge::internal::images::{parse_error, parse_manifest, parse_tags, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_error(data);
    let _ = parse_tags(data);
    if let Some(ecr_edge::internal::images::Manifest::Index(entries)) = parse_manifest(data) {
        for (_, platform) in entries {
            if let Some(p) = Platform::parse(&platform.to_string()) {
                assert_eq!(p, platform);
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(p) = Platform::parse(s) {
            assert_eq!(p.to_string(), s);
        }
    }
});
