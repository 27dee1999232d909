#![no_main]
//! Query strings: `after=`, `token=`, `ticket=` and anything else, on the routes that read
//! a query — the events page, the snapshot, and the trip and operator WebSocket handshakes
//! (authenticated from the query, as browsers must). Nothing may answer 500 or outside the
//! error format.

use axum::{body::Body, http::Request};
use hail_fuzz::{OPERATOR, harness};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, query)) = data.split_first() else {
        return;
    };
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let harness = harness();
    let trip = &harness.trip;
    let passenger = harness.passenger.token.as_str();
    let (path, token, upgrade) = match pick % 5 {
        0 => (format!("/v1/trips/{trip}/events"), Some(passenger), false),
        1 => (format!("/v1/trips/{trip}/events"), Some(OPERATOR), false),
        2 => ("/v1/ops/snapshot".to_string(), Some(OPERATOR), false),
        3 => (format!("/v1/trips/{trip}/ws"), None, true),
        _ => ("/v1/ops/ws".to_string(), None, true),
    };
    let mut request = Request::get(format!("{path}?{query}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if upgrade {
        request = request
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    // A query hyper would refuse before hail (not a valid URI) is not sent.
    let Ok(request) = request.body(Body::empty()) else {
        return;
    };
    harness.send(request);
});
