//! The kubelet's CredentialProviderRequest.
#![no_main]
use ecr_edge::kubelet::{parse_request, response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((version, registry)) = parse_request(data) {
        // Whatever was accepted answers with valid JSON naming the same registry.
        let out = response(
            &version,
            registry.host(),
            "pw",
            2_000_000_000,
            1_999_990_000,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).expect("response is JSON");
        assert_eq!(v["apiVersion"], version.as_str());
        assert_eq!(v["auth"][registry.host()]["password"], "pw");
    }
});
