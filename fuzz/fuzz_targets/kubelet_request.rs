//! The kubelet's CredentialProviderRequest.
#![no_main]
use ecr_edge::internal::input::{echoed_run, named_host, REFUSAL_WORDS};
use ecr_edge::internal::kubelet::{parse_request, response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok((version, registry)) => {
            // Whatever was accepted answers with valid JSON naming the same registry.
            let out = response(
                &version,
                registry.host(),
                &ecr_edge::internal::token::Secret::new("pw"),
                2_000_000_000,
                1_999_990_000,
            );
            let v: serde_json::Value = serde_json::from_slice(&out).expect("response is JSON");
            assert_eq!(v["apiVersion"], version.as_str());
            assert_eq!(v["auth"][registry.host()]["password"], "pw");
        }
        Err(e) => {
            // The request may carry a service account token: no run of it reaches the
            // kubelet's log, except the image's registry host.
            let msg = e.to_string();
            let host = named_host(data);
            assert_eq!(echoed_run(data, &msg, &[&host, REFUSAL_WORDS]), None, "{msg}");
        }
    }
});
