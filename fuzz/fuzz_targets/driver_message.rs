#![no_main]
//! The driver socket's messages: whatever text a driver's socket could carry — a location,
//! a status, or anything at all — is applied, or answered with a client error that says
//! what is wrong; the server never panics and its fleet stays queryable.

use hail_fuzz::harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A text frame is UTF-8: the WebSocket layer refuses anything else before hail.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let harness = harness();
    let app = harness.app();
    let _runtime = harness.runtime.enter();
    let now = tokio::time::Instant::now();
    let driver = harness.driver_key.as_ref().expect("connected on start");
    if let Err(error) = hail::gateway::driver_socket::handle(app, driver, text, now) {
        assert!(error.status().is_client_error(), "{error:?}");
        assert!(!error.message.is_empty());
    }
    // Whatever position it took, the index answers a search around it.
    let _ = app.rides.fleet.stats(now);
});
