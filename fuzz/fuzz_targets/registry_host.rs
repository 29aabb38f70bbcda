//! Registry host parsing: anything Docker may hand the helper as a server URL.
#![no_main]
use ecr_edge::internal::registry::{host_of, ImageRef, Registry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let host = host_of(s);
    if let Some(r) = Registry::parse(s) {
        // An ECR registry is named by exactly the host a URL parser sees, lower-cased, and
        // parsing that host again gives the same registry.
        assert_eq!(Some(r.host()), host.as_deref());
        assert!(!r.host().bytes().any(|b| b.is_ascii_uppercase()));
        assert_eq!(Registry::parse(r.host()).as_ref(), Some(&r));
        assert!(r.endpoint().starts_with("https://"));
    }
    // An image reference parses to one that prints back and parses the same.
    if let Ok(image) = ImageRef::parse(s) {
        assert_eq!(ImageRef::parse(&image.to_string()), Ok(image));
    }
});
