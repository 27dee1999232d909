//! A model-based test of the trip, offer and driver rules. proptest generates sequences of
//! operations — requests, offers answered or ignored, cancels by either side, ride steps,
//! drivers going on and offline, time passing, and crashes with recovery from the store —
//! and runs each against hail's real parts (store, fleet, dispatcher, hub, ride
//! operations) and against a small reference model of DESIGN §2–§5. After every step the
//! store must agree with the model, every offer must be one the rules allow, and no
//! waiting trip may lack an offer while some driver could take it.
//!
//! Time is driven by hand (every entry point takes `now`; wall-clock stamps derive from
//! it), so the deadlines are exact — also across crashes.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use common::{Backend, fresh_database};
use hail::{
    auth::Principal,
    bus::Bus,
    config::{Matching, ServerConfig},
    dispatch::DispatchLoop,
    error::ErrorCode,
    fleet::{DriverKey, DriverStatus},
    geometry::LatLng,
    hub::DriverOutbound,
    metrics::Metrics,
    protocol::ServerMessage,
    rides::Rides,
    server,
    store::Store,
    trip::{Change, Role, Timestamp, TripState},
};
use proptest::prelude::*;
use tokio::{sync::mpsc, time::Instant};

const DRIVERS: usize = 3;
const PASSENGERS: usize = 3;
const OFFER_TIMEOUT_MS: u64 = 3_000;
const DEADLINE_MS: u64 = 20_000;
const STALE_MS: u64 = 30_000;
/// Batched matching's window, in the batched run (a pass is made after every operation).
const BATCH_WINDOW_MS: u64 = 10;

#[derive(Debug, Clone)]
enum Op {
    Request(usize),
    Step(u64),
    Accept(usize),
    AcceptOld(usize),
    Decline(usize),
    Cancel(usize),
    DriverCancel(usize),
    Progress(usize),
    Offline(usize),
    Online(usize),
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..PASSENGERS).prop_map(Op::Request),
        4 => prop::sample::select(vec![100u64, 1_000, 3_000, 20_000, 40_000]).prop_map(Op::Step),
        3 => (0..DRIVERS).prop_map(Op::Accept),
        1 => (0..DRIVERS).prop_map(Op::AcceptOld),
        2 => (0..DRIVERS).prop_map(Op::Decline),
        1 => (0..PASSENGERS).prop_map(Op::Cancel),
        1 => (0..DRIVERS).prop_map(Op::DriverCancel),
        3 => (0..DRIVERS).prop_map(Op::Progress),
        1 => (0..DRIVERS).prop_map(Op::Offline),
        1 => (0..DRIVERS).prop_map(Op::Online),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Clone)]
struct ModelTrip {
    id: String,
    passenger: usize,
    state: TripState,
    seq: i64,
    driver: Option<usize>,
    excluded: HashSet<usize>,
    deadline: u64,
}

#[derive(Debug, Clone)]
struct ModelOffer {
    id: String,
    trip: usize,
    expires: u64,
}

/// The reference model: what DESIGN says must be true, kept by hand.
#[derive(Debug, Default)]
struct Model {
    t: u64,
    trips: Vec<ModelTrip>,
    offers: HashMap<usize, ModelOffer>,
    old_offers: HashMap<usize, String>,
    available: [bool; DRIVERS],
    last_ping: [u64; DRIVERS],
}

impl Model {
    fn active_trip_of_driver(&self, d: usize) -> Option<usize> {
        self.trips
            .iter()
            .position(|t| t.driver == Some(d) && t.state.has_driver())
    }

    fn open_trip_of_passenger(&self, p: usize) -> Option<usize> {
        self.trips
            .iter()
            .position(|t| t.passenger == p && !t.state.is_terminal())
    }

    /// Whether the rules let driver `d` be offered trip `trip` now.
    fn may_offer(&self, d: usize, trip: usize) -> bool {
        self.available[d]
            && self.t.saturating_sub(self.last_ping[d]) <= STALE_MS
            && self.active_trip_of_driver(d).is_none()
            && !self.offers.contains_key(&d)
            && !self.trips[trip].excluded.contains(&d)
            && self.trips[trip].state == TripState::Requested
            && !self.offers.values().any(|o| o.trip == trip)
    }

    /// Ends the open offer of `trip`, if any.
    fn withdraw_offer_for(&mut self, trip: usize) {
        if let Some(d) = self
            .offers
            .iter()
            .find(|(_, o)| o.trip == trip)
            .map(|(d, _)| *d)
        {
            self.withdraw(d);
        }
    }

    fn withdraw(&mut self, d: usize) {
        if let Some(offer) = self.offers.remove(&d) {
            self.old_offers.insert(d, offer.id);
        }
    }
}

struct System {
    url: String,
    rides: Arc<Rides>,
    dispatch: DispatchLoop,
    inboxes: Vec<mpsc::Receiver<DriverOutbound>>,
    drivers: Vec<Principal>,
    /// Each driver's key from its last connect, as its socket holds it.
    keys: Vec<Option<DriverKey>>,
    passengers: Vec<Principal>,
    base: Instant,
}

fn config(url: &str, matching: Matching) -> ServerConfig {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), url);
    config.dispatch.matching = matching;
    config.dispatch.batch_window_ms = BATCH_WINDOW_MS;
    config.dispatch.offer_timeout_ms = OFFER_TIMEOUT_MS;
    config.dispatch.dispatch_deadline_ms = DEADLINE_MS;
    config.dispatch.stale_after_ms = STALE_MS;
    // Search on every pass, so "no offer" always means "no legal candidate".
    config.dispatch.dispatch_retry_ms = 1;
    config
}

fn pickup() -> LatLng {
    LatLng::new(37.5, 127.0).unwrap()
}

fn driver_position(d: usize) -> LatLng {
    pickup().destination(0.0, 100.0 + 400.0 * d as f64)
}

impl System {
    /// A node's parts around the store at `url`, as `server::start` builds them but with
    /// no task running: the test drives the dispatch loop itself.
    async fn open(url: &str, matching: Matching) -> (Arc<Rides>, DispatchLoop) {
        let store = Store::connect(url, 4, Duration::from_secs(10))
            .await
            .expect("store opens");
        let metrics = Arc::new(Metrics::new());
        let bus = Bus::none("model", metrics.clone());
        server::assemble(&config(url, matching), store, bus, metrics)
    }

    /// Takes the dispatch lease (a new epoch, as a restarted single node does) and adopts
    /// what the store holds.
    async fn lead(&mut self, t: u64) {
        let now = Timestamp::now();
        let fence = self
            .rides
            .store
            .acquire_lease("model", now, now.plus_ms(3_600_000), true)
            .await
            .unwrap()
            .expect("forced");
        self.dispatch.lead(fence, self.now(t)).await.unwrap();
    }

    fn now(&self, t: u64) -> Instant {
        self.base + Duration::from_millis(t)
    }

    /// A driver's socket opening: connect, ping, say its status (as the gateway does).
    async fn connect_driver(&mut self, d: usize, available: bool, t: u64) {
        let id = self.drivers[d].id.clone();
        let now = self.now(t);
        self.inboxes[d] = self.rides.hub.register_driver(&id).1;
        let trip = self.rides.driver_trip(&id).await.unwrap();
        let key = self.rides.driver_connected(&id, trip, now);
        let position = driver_position(d);
        self.rides
            .location(&key, position.lat(), position.lng(), None, now)
            .unwrap();
        self.keys[d] = Some(key);
        let status = if available {
            DriverStatus::Available
        } else {
            DriverStatus::Offline
        };
        self.rides.status(&id, status, now);
    }
}

async fn run_model(
    backend: Backend,
    matching: Matching,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, &dir).await;
    let (rides, dispatch) = System::open(&url, matching).await;
    let mut drivers = Vec::new();
    for d in 0..DRIVERS {
        let account = rides
            .store
            .create_account(Role::Driver, &format!("d{d}"), Some("12가3456"))
            .await
            .unwrap();
        drivers.push(Principal {
            id: account.id,
            role: Role::Driver,
        });
    }
    let mut passengers = Vec::new();
    for p in 0..PASSENGERS {
        let account = rides
            .store
            .create_account(Role::Passenger, &format!("p{p}"), None)
            .await
            .unwrap();
        passengers.push(Principal {
            id: account.id,
            role: Role::Passenger,
        });
    }
    let mut system = System {
        url,
        rides,
        dispatch,
        inboxes: (0..DRIVERS).map(|_| mpsc::channel(1).1).collect(),
        drivers,
        keys: vec![None; DRIVERS],
        passengers,
        base: Instant::now(),
    };
    let mut model = Model {
        available: [true; DRIVERS],
        ..Model::default()
    };
    system.lead(0).await;
    for d in 0..DRIVERS {
        system.connect_driver(d, true, 0).await;
    }

    for (step, op) in ops.iter().enumerate() {
        let context = format!("step {step}: {op:?}");
        let now = system.now(model.t);
        let rides = system.rides.clone();
        match *op {
            Op::Request(p) => {
                let result = rides
                    .request(
                        &system.passengers[p],
                        pickup(),
                        pickup().destination(90.0, 3_000.0),
                        None,
                        now,
                    )
                    .await;
                match model.open_trip_of_passenger(p) {
                    Some(_) => {
                        let error = result.expect_err(&context);
                        prop_assert_eq!(error.code, ErrorCode::ActiveTripExists, "{}", context);
                    }
                    None => {
                        let trip =
                            result.map_err(|e| TestCaseError::fail(format!("{context}: {e}")))?;
                        model.trips.push(ModelTrip {
                            id: trip.id,
                            passenger: p,
                            state: TripState::Requested,
                            seq: 1,
                            driver: None,
                            excluded: HashSet::new(),
                            deadline: model.t + DEADLINE_MS,
                        });
                    }
                }
            }
            Op::Step(ms) => advance(&mut system, &mut model, ms).await,
            Op::Accept(d) | Op::AcceptOld(d) => {
                let (offer_id, predicted) = match (op, model.offers.get(&d)) {
                    (Op::Accept(_), Some(offer)) => (offer.id.clone(), offer.expires > model.t),
                    _ => (
                        model
                            .old_offers
                            .get(&d)
                            .cloned()
                            .unwrap_or_else(|| "ofr_unknown".into()),
                        false,
                    ),
                };
                let result = rides.accept(&system.drivers[d], &offer_id, now).await;
                prop_assert_eq!(
                    result.is_ok(),
                    predicted,
                    "{}: {:?}",
                    context,
                    result.as_ref().err()
                );
                match result {
                    Ok(trip_after) => {
                        let trip = model.offers[&d].trip;
                        model.withdraw(d);
                        let t = &mut model.trips[trip];
                        (t.state, t.driver, t.seq) = (TripState::Accepted, Some(d), t.seq + 1);
                        prop_assert_eq!(trip_after.id.as_str(), t.id.as_str());
                    }
                    Err(error) => prop_assert!(
                        matches!(error.status().as_u16(), 404 | 409),
                        "{}: {}",
                        context,
                        error
                    ),
                }
            }
            Op::Decline(d) => {
                let Some(offer) = model.offers.get(&d).cloned() else {
                    continue;
                };
                let result = rides.decline(&system.drivers[d], &offer.id, now).await;
                prop_assert_eq!(
                    result.is_ok(),
                    offer.expires > model.t,
                    "{}: {:?}",
                    context,
                    result
                );
                if result.is_ok() {
                    model.trips[offer.trip].excluded.insert(d);
                    model.withdraw(d);
                }
            }
            Op::Cancel(p) => {
                let Some(trip) = model.trips.iter().rposition(|t| t.passenger == p) else {
                    continue;
                };
                let result = rides
                    .cancel(
                        &system.passengers[p],
                        &model.trips[trip].id.clone(),
                        None,
                        now,
                    )
                    .await;
                let allowed = matches!(
                    model.trips[trip].state,
                    TripState::Requested | TripState::Accepted | TripState::Arrived
                );
                prop_assert_eq!(
                    result.is_ok(),
                    allowed,
                    "{}: {:?}",
                    context,
                    result.as_ref().err()
                );
                if allowed {
                    model.withdraw_offer_for(trip);
                    let t = &mut model.trips[trip];
                    (t.state, t.seq) = (TripState::Cancelled, t.seq + 1);
                }
            }
            Op::DriverCancel(d) => {
                let Some(trip) = model.active_trip_of_driver(d) else {
                    continue;
                };
                let result = rides
                    .cancel(&system.drivers[d], &model.trips[trip].id.clone(), None, now)
                    .await;
                let t = &mut model.trips[trip];
                let allowed = matches!(t.state, TripState::Accepted | TripState::Arrived);
                prop_assert_eq!(
                    result.is_ok(),
                    allowed,
                    "{}: {:?}",
                    context,
                    result.as_ref().err()
                );
                if allowed {
                    (t.state, t.driver, t.seq) = (TripState::Requested, None, t.seq + 1);
                    t.excluded.insert(d);
                    t.deadline = model.t + DEADLINE_MS;
                }
            }
            Op::Progress(d) => {
                let Some(trip) = model.active_trip_of_driver(d) else {
                    continue;
                };
                let id = model.trips[trip].id.clone();
                let driver = &system.drivers[d];
                let (result, next) = match model.trips[trip].state {
                    TripState::Accepted => (
                        rides.driver_step(driver, &id, Change::Arrive, now).await,
                        TripState::Arrived,
                    ),
                    TripState::Arrived => (
                        rides.driver_step(driver, &id, Change::Start, now).await,
                        TripState::InProgress,
                    ),
                    _ => (
                        rides.complete(driver, &id, None, now).await,
                        TripState::Completed,
                    ),
                };
                let after = result.map_err(|e| TestCaseError::fail(format!("{context}: {e}")))?;
                prop_assert_eq!(after.state, next);
                let t = &mut model.trips[trip];
                (t.state, t.seq) = (next, t.seq + 1);
            }
            Op::Offline(d) => {
                rides.status(&system.drivers[d].id, DriverStatus::Offline, now);
                model.available[d] = false;
                model.withdraw(d);
            }
            Op::Online(d) => {
                rides.status(&system.drivers[d].id, DriverStatus::Available, now);
                let position = driver_position(d);
                let key = system.keys[d]
                    .as_ref()
                    .expect("every driver connected first");
                rides
                    .location(key, position.lat(), position.lng(), None, now)
                    .unwrap();
                model.available[d] = true;
                model.last_ping[d] = model.t;
            }
            Op::Crash => {
                // Everything in memory is lost; the store is what remains. Open offers
                // are rows: the restarted node adopts them, deadlines and all, and every
                // deadline counts in the time the test drives.
                let url = system.url.clone();
                system.rides.store.close().await;
                (system.rides, system.dispatch) = System::open(&url, matching).await;
                for d in 0..DRIVERS {
                    system.connect_driver(d, model.available[d], model.t).await;
                    model.last_ping[d] = model.t;
                }
                system.lead(model.t).await;
            }
        }
        // Offers only run in dispatch passes; make one (without moving time) after every
        // operation, as the dispatch loop would when woken.
        if !matches!(op, Op::Step(_)) {
            system.dispatch.step(system.now(model.t)).await;
        }
        // Batched, waiting trips are weighed when their window closes: let one pass.
        if matching == Matching::Batch {
            advance(&mut system, &mut model, BATCH_WINDOW_MS).await;
        }
        check(&mut system, &mut model, &context).await?;
    }
    Ok(())
}

/// Time passes: a dispatch pass at the new time, and what the rules say it does —
/// offers lapse (their driver never offered that trip again), trips expire.
async fn advance(system: &mut System, model: &mut Model, ms: u64) {
    model.t += ms;
    system.dispatch.step(system.now(model.t)).await;
    let lapsed: Vec<usize> = model
        .offers
        .iter()
        .filter(|(_, o)| o.expires <= model.t)
        .map(|(d, _)| *d)
        .collect();
    for d in lapsed {
        let trip = model.offers[&d].trip;
        model.trips[trip].excluded.insert(d);
        model.withdraw(d);
    }
    // Requested trips past their deadline expire (and lose any offer).
    for trip in 0..model.trips.len() {
        if model.trips[trip].state == TripState::Requested && model.trips[trip].deadline <= model.t
        {
            model.trips[trip].state = TripState::Expired;
            model.trips[trip].seq += 1;
            model.withdraw_offer_for(trip);
        }
    }
}

/// Reads what the system told the drivers and compares the store with the model.
async fn check(system: &mut System, model: &mut Model, context: &str) -> Result<(), TestCaseError> {
    for d in 0..DRIVERS {
        while let Ok(DriverOutbound::Send(message)) = system.inboxes[d].try_recv() {
            match *message {
                ServerMessage::Offer(offer) => {
                    let trip = model.trips.iter().position(|t| t.id == offer.trip_id);
                    let trip = trip.ok_or_else(|| {
                        TestCaseError::fail(format!("{context}: offer for unknown trip"))
                    })?;
                    prop_assert!(
                        model.may_offer(d, trip),
                        "{}: illegal offer of trip {} to driver {}: {:?}",
                        context,
                        trip,
                        d,
                        model
                    );
                    model.offers.insert(
                        d,
                        ModelOffer {
                            id: offer.offer_id,
                            trip,
                            expires: model.t + OFFER_TIMEOUT_MS,
                        },
                    );
                }
                ServerMessage::OfferWithdrawn { offer_id, .. } => {
                    prop_assert!(
                        model.offers.get(&d).is_none_or(|o| o.id != offer_id),
                        "{}: withdrawal the model did not expect",
                        context
                    );
                }
                _ => {}
            }
        }
    }
    let store = &system.rides.store;
    // The store agrees with the model, trip by trip.
    for t in &model.trips {
        let stored = store.trip(&t.id).await.unwrap().expect("trip stored");
        let driver = t.driver.map(|d| system.drivers[d].id.clone());
        prop_assert_eq!(stored.state, t.state, "{}: trip {}", context, t.id);
        prop_assert_eq!(stored.seq, t.seq, "{}: trip {}", context, t.id);
        if t.state.has_driver() {
            prop_assert_eq!(stored.driver_id, driver, "{}: trip {}", context, t.id);
        }
        let seqs: Vec<i64> = store
            .events_after(&t.id, 0)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        prop_assert_eq!(
            seqs,
            (1..=t.seq).collect::<Vec<_>>(),
            "{}: trip {}",
            context,
            t.id
        );
    }
    // The offers the store holds open are the model's.
    let mut open: Vec<String> = store
        .open_offers()
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.offer.id)
        .collect();
    let mut expected: Vec<String> = model.offers.values().map(|o| o.id.clone()).collect();
    open.sort();
    expected.sort();
    prop_assert_eq!(open, expected, "{}: open offers", context);
    // Liveness: a waiting trip without an offer has no driver that could take it.
    for (trip, t) in model.trips.iter().enumerate() {
        if t.state == TripState::Requested && !model.offers.values().any(|o| o.trip == trip) {
            let idle: Vec<usize> = (0..DRIVERS).filter(|d| model.may_offer(*d, trip)).collect();
            prop_assert!(
                idle.is_empty(),
                "{}: trip {} waits while drivers {:?} could take it",
                context,
                trip,
                idle
            );
        }
    }
    // Invariant 1, as the fleet sees it.
    for d in 0..DRIVERS {
        let view = system
            .rides
            .fleet
            .view(&system.drivers[d].id, system.now(model.t))
            .unwrap();
        prop_assert_eq!(
            view.offer_id.as_deref(),
            model.offers.get(&d).map(|o| o.id.as_str()),
            "{}: driver {}",
            context,
            d
        );
        let busy = model
            .active_trip_of_driver(d)
            .map(|trip| model.trips[trip].id.clone());
        prop_assert_eq!(view.trip_id, busy, "{}: driver {}", context, d);
    }
    Ok(())
}

fn run(backend: Backend, matching: Matching, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run_model(backend, matching, ops))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, max_shrink_iters: 400, ..ProptestConfig::default() })]

    #[test]
    fn trip_offer_and_driver_rules_hold_on_sqlite(ops in prop::collection::vec(op(), 1..60)) {
        run(Backend::Sqlite, Matching::Greedy, ops)?;
    }

    /// The same rules with batched matching: offers come only when a window closes, and
    /// then every waiting trip a driver could take has one.
    #[test]
    fn batched_matching_keeps_the_rules_on_sqlite(ops in prop::collection::vec(op(), 1..60)) {
        run(Backend::Sqlite, Matching::Batch, ops)?;
    }

    #[test]
    #[cfg_attr(not(hail_test_postgres), ignore = "PostgreSQL not tested: set HAIL_TEST_POSTGRES_URL")]
    fn trip_offer_and_driver_rules_hold_on_postgres(ops in prop::collection::vec(op(), 1..60)) {
        run(Backend::Postgres, Matching::Greedy, ops)?;
    }
}
