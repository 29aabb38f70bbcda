//! Routing-netlink datagrams (the daemon's refresh on link-up): any bytes, no panic, and a
//! datagram that says yes still says yes with more messages after it.
#![no_main]
use ecr_edge::internal::link::says_link_may_be_back;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if says_link_may_be_back(data) {
        let mut more = data.to_vec();
        more.extend_from_slice(&[0; 20]);
        assert!(says_link_may_be_back(&more));
    }
});
