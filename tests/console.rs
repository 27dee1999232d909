//! The operator console in a real browser: Debian's headless Chromium, driven through
//! chromedriver (WebDriver), against the real server with real driver and passenger
//! clients. Screenshots of the map and of a trip's timeline land in target/screenshots/.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages `chromium` and
//! `chromium-driver`). `scripts/test` installs them and sets `HAIL_TEST_BROWSER`; without
//! it the test is listed as ignored with the reason, never passed off as run.

mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hail::{
    fleet::DriverStatus,
    geometry::LatLng,
    protocol::DriverMessage,
    trip::{Trip, TripState},
};
use serde_json::{Value, json};
use tokio::{process::Child, time::Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Starting a browser on a busy 2-core machine takes a while; a bound, not a delay.
const BROWSER_START_PATIENCE: Duration = Duration::from_secs(120);
/// How often a condition on the page is checked while waiting for it.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// The error messages the page is showing, for a failure report.
const SHOWN_ERRORS: &str = "return [...document.querySelectorAll('.error, #banner')]
    .filter((e) => !e.hidden && e.textContent).map((e) => e.textContent);";

/// A headless Chromium session. Closing the session ends Chromium — the test does so even
/// when the journey fails — and chromedriver is killed when this value is dropped.
struct Browser {
    client: Client,
    _chromedriver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing (Debian package `{package}`): the console test drives a real \
                 browser. Install both with `apt-get update && apt-get install -y chromium \
                 chromium-driver`"
            );
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromedriver.log");
        let chromedriver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + BROWSER_START_PATIENCE;
        let http = reqwest::Client::new();
        let mut tick = tokio::time::interval(POLL_EVERY);
        loop {
            tick.tick().await;
            let ready = http.get(format!("{webdriver}/status")).send().await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port} within {BROWSER_START_PATIENCE:?}; \
                 its log:\n{}",
                log_tail(&log)
            );
        }

        let arguments = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1440,1000".into(),
            format!(
                "--user-data-dir={}",
                profile.path().join("chromium").display()
            ),
        ];
        let mut capabilities = fantoccini::wd::Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": arguments}),
        );
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(capabilities);
        let client = match tokio::time::timeout(BROWSER_START_PATIENCE, builder.connect(&webdriver))
            .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => panic!(
                "chromedriver could not start Chromium: {error}; its log:\n{}",
                log_tail(&log)
            ),
            Err(_) => panic!(
                "Chromium did not start within {BROWSER_START_PATIENCE:?}; chromedriver's log:\n{}",
                log_tail(&log)
            ),
        };
        Browser {
            client,
            _chromedriver: chromedriver,
            _profile: profile,
        }
    }

    /// Runs `script` (a function body) in the page until `accept` approves its value, and
    /// returns that value. Fails with `what` and the last value after the patience bound.
    async fn eventually(&self, what: &str, script: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut tick = tokio::time::interval(POLL_EVERY);
        loop {
            tick.tick().await;
            let value = self
                .client
                .execute(script, vec![])
                .await
                .unwrap_or_else(|error| panic!("{what}: the page script failed: {error}"));
            if accept(&value) {
                return value;
            }
            if Instant::now() >= deadline {
                let shown = self
                    .client
                    .execute(SHOWN_ERRORS, vec![])
                    .await
                    .unwrap_or_default();
                panic!(
                    "{what}: not seen within {PATIENCE:?}; the page says {value}; \
                     errors it shows: {shown}"
                );
            }
        }
    }

    /// Waits until the element `css` is displayed, then clicks it as a user would.
    async fn click(&self, css: &str) {
        self.eventually(
            &format!("{css} is shown"),
            &format!(
                "const e = document.querySelector({}); return !!e && e.offsetParent !== null && !e.disabled;",
                json!(css)
            ),
            |shown| shown == &json!(true),
        )
        .await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("{css}: {error}"))
            .click()
            .await
            .unwrap_or_else(|error| panic!("clicking {css}: {error}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("{css}: {error}"));
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// The text of the element with id `id`, waiting until it satisfies `accept`.
    async fn text_of(&self, id: &str, accept: impl Fn(&str) -> bool) -> String {
        let script = format!(
            "const e = document.getElementById({}); return e && !e.hidden ? e.textContent : null;",
            json!(id)
        );
        let value = self
            .eventually(&format!("#{id}"), &script, |value| {
                value.as_str().is_some_and(&accept)
            })
            .await;
        value.as_str().unwrap_or_default().to_string()
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot taken");
        // CARGO_TARGET_TMPDIR is <target>/tmp: the screenshots go beside it.
        let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target directory")
            .join("screenshots");
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// The end of chromedriver's log, for a failure message.
fn log_tail(path: &std::path::Path) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|error| format!("(unreadable: {error})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn at(lat: f64, lng: f64) -> LatLng {
    LatLng::new(lat, lng).unwrap()
}

/// The whole operator journey: a wrong token is refused, the right one signs in; drivers
/// and a request appear live; the trip's timeline opens; the operator cancels it; and
/// when the server goes away and comes back the page says so and recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hail_test_browser),
    ignore = "browser not tested: run scripts/test, which installs Chromium and sets HAIL_TEST_BROWSER"
)]
async fn operator_console_in_a_browser() {
    let mut server = TestServer::start(Backend::Sqlite).await;
    let browser = Browser::start().await;
    // Whatever happens in the journey, end the browser session before reporting it.
    let journey = std::panic::AssertUnwindSafe(journey(&mut server, &browser))
        .catch_unwind()
        .await;
    let _ = browser.client.clone().close().await;
    if let Err(panic) = journey {
        std::panic::resume_unwind(panic);
    }
}

async fn journey(server: &mut TestServer, browser: &Browser) {
    let page = &browser.client;
    page.goto(&format!("{}/", server.base)).await.unwrap();

    // A wrong token: a clear message, and no console behind it.
    browser
        .type_into("#signin-token", "not-the-operator-token")
        .await;
    browser.click("#signin-submit").await;
    let refused = browser
        .text_of("signin-error", |text| !text.is_empty())
        .await;
    assert!(refused.contains("not accepted"), "{refused}");
    let app_hidden = page
        .execute("return document.getElementById('app').hidden;", vec![])
        .await
        .unwrap();
    assert_eq!(app_hidden, json!(true));

    // The right token: the console opens and its stream goes live.
    browser.type_into("#signin-token", OPERATOR_TOKEN).await;
    browser.click("#signin-submit").await;
    browser
        .eventually(
            "the live stream",
            "return hailConsole.connection();",
            |state| state == "live",
        )
        .await;

    // The cluster panel: one node, leading dispatch.
    let node = server.app().node.id.clone();
    browser
        .eventually(
            "the cluster panel",
            &format!(
                "const row = document.querySelector('#cluster-body tr[data-node=\"' + {} + '\"]');
                 return !!row && !!row.querySelector('.badge.leader')
                   && document.getElementById('cluster-summary').textContent.includes('leader');",
                json!(node)
            ),
            |shown| shown == &json!(true),
        )
        .await;

    // A fleet across Seoul, over real driver sockets; one says it is not taking rides.
    let places = [
        at(37.4985, 127.0276), // Gangnam station
        at(37.5133, 127.1001), // Jamsil
        at(37.5219, 126.9245), // Yeouido
        at(37.5563, 126.9236), // Hongdae
        at(37.5704, 126.9920), // Jongno
        at(37.5547, 126.9707), // Seoul station
        at(37.5345, 126.9946), // Itaewon
        at(37.5826, 127.0019), // Hyehwa
        at(37.4837, 126.9016), // Guro
        at(37.5407, 127.0703), // Konkuk University
    ];
    let mut fleet = Vec::new();
    for place in &places {
        fleet.push(server.online_driver(*place).await);
    }
    let (_, resting) = &mut fleet[7];
    resting
        .send(&DriverMessage::Status {
            status: DriverStatus::Offline,
        })
        .await;
    browser
        .text_of("stat-online", |text| text == places.len().to_string())
        .await;
    browser.click("#zoom-fit").await;
    browser
        .eventually(
            "every driver drawn on the map",
            "return hailConsole.driversDrawn();",
            |drawn| drawn == &json!(places.len()),
        )
        .await;

    // One ride under way (its driver accepted), one passenger still waiting.
    let rider = server.passenger().await;
    let riding = server
        .request_trip(&rider, at(37.5560, 126.9240), at(37.5663, 126.9779))
        .await;
    let (hongdae, hongdae_ws) = &mut fleet[3];
    let offer = hongdae_ws.offer().await;
    assert_eq!(offer.trip_id, riding.id);
    server.answer(hongdae, &offer, "accept").await.ok::<Trip>();

    let waiting = server.passenger().await;
    let trip = server
        .request_trip(&waiting, at(37.4979, 127.0290), at(37.5663, 126.9779))
        .await;
    let trip_id = trip.id.as_str();
    browser.text_of("stat-requests", |text| text == "1").await;
    browser.text_of("stat-active", |text| text == "1").await;
    browser
        .eventually(
            "the request drawn on the map, its offer in the dispatch log",
            &format!(
                "return hailConsole.requestsDrawn() === 1 && hailConsole.tripState({}) === 'requested'
                   && !!document.querySelector('#offers-body tr[data-outcome=made] button[title*=trip]');",
                json!(trip_id)
            ),
            |ready| ready == &json!(true),
        )
        .await;
    // The figures (sent every 2 s) count both requests.
    browser.text_of("fig-requested", |text| text == "2").await;
    let map = browser.screenshot("console-map.png").await;

    // The trip's timeline, opened from the list of open trips.
    browser
        .click(&format!("#trips button[data-trip-id='{trip_id}']"))
        .await;
    browser
        .text_of("inspector-title", |text| text.contains(trip_id))
        .await;
    let first_event = browser
        .eventually(
            "the timeline",
            "const e = document.querySelector('#timeline li[data-seq]'); return e ? e.textContent : null;",
            |text| text.is_string(),
        )
        .await;
    assert!(
        first_event.as_str().unwrap().starts_with("requested"),
        "{first_event}"
    );
    let timeline = browser.screenshot("console-timeline.png").await;

    // Cancel it from the page; the store agrees.
    browser.click("#cancel-trip").await;
    browser
        .type_into("#cancel-reason", "passenger phoned to cancel")
        .await;
    browser.click("#cancel-confirm-button").await;
    browser
        .text_of("inspector-notice", |text| text.contains("cancelled"))
        .await;
    let stored = server.trip(trip_id, OPERATOR_TOKEN).await;
    assert_eq!(stored.state, TripState::Cancelled, "{stored:?}");
    let cancelled = server.events(trip_id, OPERATOR_TOKEN, 1).await;
    assert_eq!(
        cancelled[0].reason.as_deref(),
        Some("passenger phoned to cancel"),
        "the reason the operator typed is kept in the event"
    );
    browser
        .eventually(
            "the cancellation in the timeline and the figures",
            "return !!document.querySelector('#timeline li[data-event=cancelled]')
               && document.getElementById('fig-cancelled').textContent === '1';",
            |shown| shown == &json!(true),
        )
        .await;

    // The server goes away: the page says so instead of showing a frozen map as live.
    let address = server.base.clone();
    server.stop().await;
    browser
        .eventually(
            "the disconnection shown",
            "return hailConsole.connection() === 'disconnected'
               && document.getElementById('banner').textContent.includes('reconnecting');",
            |shown| shown == &json!(true),
        )
        .await;
    // It comes back at the same address: the console reconnects and says when.
    server.restart_in_place().await;
    assert_eq!(server.base, address);
    let back = browser
        .text_of("connection", |text| text.contains("back since"))
        .await;
    assert!(back.starts_with("live"), "{back}");

    eprintln!(
        "console screenshots: {} and {}",
        map.display(),
        timeline.display()
    );
}
