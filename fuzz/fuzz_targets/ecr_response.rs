//! What ecr-edge takes from a GetAuthorizationToken answer: the base64 `AWS:<password>` token
//! and its expiry, in the response's JSON shape.
#![no_main]
use ecr_edge::internal::ecr::token_from;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        // Not JSON: the raw bytes as the token field.
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = token_from(Some(s), Some(NOW + 43_200), NOW);
        }
        return;
    };
    let item = &v["authorizationData"][0];
    let token = item["authorizationToken"].as_str();
    let expires = item["expiresAt"].as_f64().map(|f| f as i64);
    if let Ok(t) = token_from(token, expires, NOW) {
        // Never an expired or empty token.
        assert!(t.is_usable(NOW));
        assert!(!t.password.expose().is_empty());
    }
});
