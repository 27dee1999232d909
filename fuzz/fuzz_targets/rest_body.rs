#![no_main]
//! Every REST body: the first byte picks an operation of the contract (and how the body is
//! labelled), the rest is the body, sent through hail's real router and store. Nothing may
//! answer 500 or outside the error format; valid bodies change state as they would for a
//! client, so the trip moves through its states as the fuzzer finds them.

use axum::{body::Body, http::Request};
use hail_fuzz::{OPERATOR, harness};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let harness = harness();
    let (passenger, driver, trip) = (
        harness.passenger.token.as_str(),
        harness.driver.token.as_str(),
        harness.trip.as_str(),
    );
    let (path, token) = match pick % 12 {
        0 => ("/v1/passengers".to_string(), None),
        1 => ("/v1/drivers".to_string(), Some(OPERATOR)),
        2 => ("/v1/trips".to_string(), Some(passenger)),
        3 => (format!("/v1/trips/{trip}/cancel"), Some(passenger)),
        4 => (format!("/v1/trips/{trip}/cancel"), Some(driver)),
        5 => (format!("/v1/trips/{trip}/assign"), Some(OPERATOR)),
        6 => (format!("/v1/trips/{trip}/complete"), Some(driver)),
        7 => ("/v1/offers/ofr_fuzz/accept".to_string(), Some(driver)),
        8 => ("/v1/ops/tickets".to_string(), Some(OPERATOR)),
        9 => (format!("/v1/trips/{trip}/arrive"), Some(driver)),
        10 => (format!("/v1/trips/{trip}/start"), Some(driver)),
        _ => (format!("/v1/trips/{trip}/cancel"), Some(OPERATOR)),
    };
    // Ids are random: a body may name the harness's driver as `$driver` (an assignment).
    let body = match std::str::from_utf8(body) {
        Ok(text) if text.contains("$driver") => {
            text.replace("$driver", &harness.driver.id).into_bytes()
        }
        _ => body.to_vec(),
    };
    let mut request = Request::post(path);
    match pick / 12 % 3 {
        0 => request = request.header("content-type", "application/json"),
        1 => request = request.header("content-type", "text/plain"),
        _ => {}
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    // Trip requests may carry an Idempotency-Key: taken from the body's first bytes.
    if pick >= 128 {
        request = request.header("idempotency-key", &body[..body.len().min(24)]);
    }
    // What hyper would refuse before hail (an invalid header value) is not sent.
    let Ok(request) = request.body(Body::from(body)) else {
        return;
    };
    harness.send(request);
});
