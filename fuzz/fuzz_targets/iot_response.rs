//! AWS IoT's answers (any status, any body): the credentials provider's, and the Device Shadow
//! service's to an update.
#![no_main]
use ecr_edge::internal::iot::parse_response;
use ecr_edge::internal::shadow::parse_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data.split_first_chunk::<2>() {
        Some((s, rest)) => (u16::from_be_bytes(*s) % 600, rest),
        None => return,
    };
    match parse_response(status, body) {
        Ok(c) => {
            assert_eq!(status, 200);
            assert!(!c.access_key_id.is_empty() && !c.session_token.is_empty());
        }
        // Error text is bounded and free of control characters (it reaches logs).
        Err(e) => {
            let s = e.to_string();
            assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
        }
    }
    match parse_answer(status, body, "a1b2c3-ats.iot.eu-west-1.amazonaws.com", "pi-7") {
        Ok(_) => assert_eq!(status, 200),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
            assert!(s.len() < 1024, "{s:?}");
        }
    }
});
