//! Feeds arbitrary bytes, content types and paths to the admission handler, which must answer
//! every input without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rudder_webhook::admission::{Endpoint, handle};
use rudder_webhook::inject::InjectionContext;

fuzz_target!(|data: &[u8]| {
    // First byte picks the endpoint and content type; the rest is the body.
    let Some((&selector, body)) = data.split_first() else { return };
    let endpoint = match selector % 3 {
        0 => Endpoint::Inject { cluster_id: None, network: None },
        1 => Endpoint::Inject { cluster_id: Some("c1".into()), network: Some("n1".into()) },
        _ => Endpoint::Validate,
    };
    let content_type = if selector & 0x80 == 0 { Some("application/json") } else { Some("text/plain") };
    let reply = handle(&endpoint, content_type, body, &InjectionContext::default());
    assert!(matches!(reply.status, 200 | 400 | 413 | 415 | 500));
});
