//! Dispatch (DESIGN §4): matching requested trips to available drivers.
//!
//! - [`book`]: the pure core — which trips wait, which offers are open, who is reserved,
//!   and what to do next ([`book::Book::step`] returns [`book::Effect`]s);
//! - [`rank`]: ranking candidates by radius tier and pickup ETA;
//! - this module: the handle the rest of hail talks to ([`Dispatcher`], lock-free: an
//!   inbox and a wake-up) and the loop that owns the book and performs its effects against
//!   the store ([`DispatchLoop`]).
//!
//! Only the node holding the dispatch lease runs the book (DESIGN §1): every write it
//! makes — an offer, a lapse, a withdrawal, an expiry — carries the lease's [`Fence`], so
//! a paused or partitioned ex-leader can never commit one. What the writes mean for
//! everyone else (the offer reaching the driver's socket, the operators' log, a trip's
//! watchers) is announced through the [`Announce`] port, which `rides` implements with
//! its one commit path. Accepts and declines do not come through here at all: they are
//! store transactions on whichever node the driver's request lands, and the book hears
//! of them like everyone else.

pub mod book;
mod lost;
pub mod rank;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc, watch},
    time::Instant,
};

use book::{Book, Effect, Policy, Refusal};
use rank::StraightLineEta;

use crate::{
    config::DispatchConfig,
    fleet::Fleet,
    metrics::Metrics,
    protocol::{OfferMessage, WithdrawReason},
    shutdown::Shutdown,
    store::{Cause, ClosedOffer, Fence, NewOffer, OfferState, Store, StoreError, Transition},
    trip::{Actor, Change, Timestamp, Trip},
};

/// Inputs queued for the loop before it drops them and reloads from the store instead.
const INBOX_CAPACITY: usize = 65_536;

/// Passes of the book in one step, at most: the first lapses and expires, the next offer
/// what that freed.
const MAX_PASSES: usize = 4;

/// How often the leader re-reads waiting trips and open offers from the store, whatever
/// it heard: the safety net under a lost bus message (DESIGN §1 "Events cross nodes").
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// What the dispatch loop tells the rest of hail after its writes commit.
pub trait Announce: Send + Sync + 'static {
    /// An offer was committed: deliver `message` to the driver, wherever its socket is.
    fn offer_made(&self, offer: &NewOffer, message: &OfferMessage);
    /// An offer was closed by the dispatcher (lapsed, withdrawn).
    fn offer_closed(&self, closed: &ClosedOffer, at: Timestamp);
    /// A trip changed (expired).
    fn trip_changed(&self, transition: &Transition);
}

/// Something the book must hear of.
#[derive(Debug, Clone)]
pub enum Input {
    /// A trip became `requested` (new, or handed back by its driver).
    Requested(Box<Trip>),
    /// A trip left `requested`.
    Closed(String),
    /// An offer was answered or closed.
    OfferClosed(ClosedOffer),
    /// A driver went offline: withdraw its offer.
    DriverUnavailable(String),
}

/// The dispatcher as the rest of hail sees it: put news in, wake it up. Never blocks and
/// holds no lock another module could take.
pub struct Dispatcher {
    inbox: mpsc::Sender<Input>,
    wake: Notify,
    /// A driver became dispatchable since the last step.
    fleet_changed: AtomicBool,
    /// The inbox overflowed: reload from the store at the next step.
    missed: AtomicBool,
    /// Trips the book is dispatching, as of the last step (for operators' figures).
    pending: AtomicUsize,
    leading: AtomicBool,
}

impl Dispatcher {
    fn send(&self, input: Input) {
        if !self.leading.load(Ordering::Relaxed) {
            // A standby's book is empty; it reads everything from the store when it leads.
            return;
        }
        if self.inbox.try_send(input).is_err() {
            self.missed.store(true, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    pub fn trip_requested(&self, trip: &Trip) {
        self.send(Input::Requested(Box::new(trip.clone())));
    }

    pub fn trip_closed(&self, trip_id: &str) {
        self.send(Input::Closed(trip_id.to_string()));
    }

    pub fn offer_closed(&self, closed: &ClosedOffer) {
        self.send(Input::OfferClosed(closed.clone()));
    }

    pub fn driver_unavailable(&self, driver_id: &str) {
        self.send(Input::DriverUnavailable(driver_id.to_string()));
    }

    /// A driver became dispatchable: search again for every waiting trip now, instead of
    /// at each trip's next retry.
    pub fn driver_available(&self) {
        self.fleet_changed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Trips waiting for a driver, as of the leader's last step (0 on a standby).
    pub fn pending_trips(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }
}

/// The receiving end of a [`Dispatcher`]'s inbox, for [`DispatchLoop::new`].
pub struct Inbox {
    handle: Arc<Dispatcher>,
    receiver: mpsc::Receiver<Input>,
}

/// The loop that owns the book. Spawned with [`DispatchLoop::run`]; tests drive
/// [`DispatchLoop::step`] with explicit times instead.
pub struct DispatchLoop {
    book: Book,
    handle: Arc<Dispatcher>,
    inbox: mpsc::Receiver<Input>,
    store: Store,
    fleet: Arc<Fleet>,
    announce: Arc<dyn Announce>,
    metrics: Arc<Metrics>,
    /// The lease this node dispatches under; `None` while standing by.
    fence: Option<Fence>,
    /// The epoch a write was fenced off at: never lead under it again.
    fenced_epoch: Option<i64>,
    reloaded_at: Option<Instant>,
    /// `HAIL_DRIVER_LOST_AFTER_MS`.
    lost_after: Duration,
    lost_checked_at: Option<Instant>,
    /// Trips whose driver had no live socket at the last check, and since when.
    missing_drivers: std::collections::HashMap<String, Instant>,
}

impl DispatchLoop {
    /// The dispatcher handle, and the inbox its loop will read. Made apart from the loop
    /// so what the loop announces to (which holds the handle) can exist first.
    pub fn channel() -> (Arc<Dispatcher>, Inbox) {
        let (sender, receiver) = mpsc::channel(INBOX_CAPACITY);
        let handle = Arc::new(Dispatcher {
            inbox: sender,
            wake: Notify::new(),
            fleet_changed: AtomicBool::new(false),
            missed: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            leading: AtomicBool::new(false),
        });
        (handle.clone(), Inbox { handle, receiver })
    }

    pub fn new(
        config: &DispatchConfig,
        inbox: Inbox,
        store: Store,
        fleet: Arc<Fleet>,
        announce: Arc<dyn Announce>,
        metrics: Arc<Metrics>,
    ) -> DispatchLoop {
        let eta = StraightLineEta {
            detour_factor: config.detour_factor,
            speed_mps: config.urban_speed_mps,
        };
        DispatchLoop {
            book: Book::new(Policy::new(config), Box::new(eta)),
            handle: inbox.handle,
            inbox: inbox.receiver,
            store,
            fleet,
            announce,
            metrics,
            fence: None,
            fenced_epoch: None,
            reloaded_at: None,
            lost_after: Duration::from_millis(config.driver_lost_after_ms),
            lost_checked_at: None,
            missing_drivers: Default::default(),
        }
    }

    pub fn handle(&self) -> Arc<Dispatcher> {
        self.handle.clone()
    }

    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// Takes over dispatch under `fence`: adopts every waiting trip and open offer from
    /// the store (offers keep their deadlines). Returns how many trips wait.
    pub async fn lead(&mut self, fence: Fence, now: Instant) -> Result<usize, StoreError> {
        self.fence = Some(fence);
        self.handle.leading.store(true, Ordering::Relaxed);
        self.book.clear();
        self.missing_drivers.clear();
        self.lost_checked_at = None;
        self.reload(now).await
    }

    /// Stops dispatching (the lease was lost): forget everything; the next leader reads
    /// it from the store.
    pub fn stand_down(&mut self) {
        if self.fence.take().is_some() {
            tracing::warn!("dispatch lease lost: standing by");
        }
        self.handle.leading.store(false, Ordering::Relaxed);
        self.book.clear();
        self.handle.pending.store(0, Ordering::Relaxed);
        while self.inbox.try_recv().is_ok() {}
    }

    /// Re-reads waiting trips and open offers and brings the book in line with them.
    async fn reload(&mut self, now: Instant) -> Result<usize, StoreError> {
        // Anything queued before the reload is in what it reads.
        while self.inbox.try_recv().is_ok() {}
        self.handle.missed.store(false, Ordering::Relaxed);
        let waiting = self.store.waiting_trips().await?;
        let offers = self.store.open_offers().await?;
        self.book.sync(&waiting, &offers, now, Timestamp::at(now));
        for offer in &offers {
            self.fleet
                .set_offer(&offer.offer.driver_id, &offer.offer.id, true);
        }
        self.book.out_of_step = false;
        self.reloaded_at = Some(now);
        self.handle.pending.store(waiting.len(), Ordering::Relaxed);
        Ok(waiting.len())
    }

    /// One pass as of `now`: takes in what arrived, then lapses, expires and offers.
    /// Returns when the next pass is due. Time is a parameter so tests can drive deadlines
    /// exactly, without sleeping.
    pub async fn step(&mut self, now: Instant) -> Instant {
        let Some(fence) = self.fence.clone() else {
            while self.inbox.try_recv().is_ok() {}
            return now + Duration::from_secs(60);
        };
        let due = self
            .reloaded_at
            .is_none_or(|at| now.saturating_duration_since(at) >= RELOAD_EVERY);
        if (due || self.book.out_of_step || self.handle.missed.load(Ordering::Relaxed))
            && let Err(error) = self.reload(now).await
        {
            tracing::warn!(%error, "dispatch could not read the store; retrying");
            return now + Duration::from_millis(500);
        }
        let wall = Timestamp::at(now);
        self.take_inputs(now, wall).await;
        if self.handle.fleet_changed.swap(false, Ordering::Relaxed) {
            self.book.driver_available();
        }
        // What a pass frees — a lapsed offer's driver, an expired trip's — is offered again
        // in a further pass at the same `now`, not at the next wake-up (bounded: each pass
        // only closes what was open before it).
        let mut next = now;
        for _ in 0..MAX_PASSES {
            let (effects, due) = self.book.step(&*self.fleet, now, wall);
            next = due;
            let frees = effects
                .iter()
                .any(|effect| !matches!(effect, Effect::Offer { .. }));
            for effect in effects {
                if let Err(StoreError::Fenced) = self.perform(effect, &fence, now).await {
                    self.fenced_epoch = Some(fence.epoch);
                    self.stand_down();
                    return now + Duration::from_secs(60);
                }
            }
            if !frees {
                break;
            }
            self.take_inputs(now, wall).await;
        }
        self.handle
            .pending
            .store(self.book.pending_trips(), Ordering::Relaxed);
        match self.check_lost_drivers(&fence, now).await {
            Ok(()) => {}
            Err(StoreError::Fenced) => {
                self.fenced_epoch = Some(fence.epoch);
                self.stand_down();
                return now + Duration::from_secs(60);
            }
            Err(error) => tracing::warn!(%error, "could not look for lost drivers; will retry"),
        }
        if let Some(at) = self.reloaded_at {
            next = next.min(at + RELOAD_EVERY);
        }
        if let Some(at) = self.lost_checked_at {
            next = next.min(at + lost::check_every(self.lost_after));
        }
        next
    }

    /// Takes in what the rest of hail reported since the last pass.
    async fn take_inputs(&mut self, now: Instant, wall: Timestamp) {
        while let Ok(input) = self.inbox.try_recv() {
            match input {
                Input::Requested(trip) => {
                    // A trip handed back keeps its exclusions (the store has them all).
                    let excluded = if trip.seq > 1 {
                        self.store.exclusions(&trip.id).await.unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    self.book.submit(&trip, excluded, now, wall);
                }
                Input::Closed(trip_id) => self.book.trip_closed(&trip_id),
                Input::OfferClosed(closed) => self.book.offer_closed(&closed, now),
                Input::DriverUnavailable(driver_id) => self.book.driver_unavailable(&driver_id),
            }
        }
    }

    async fn perform(
        &mut self,
        effect: Effect,
        fence: &Fence,
        now: Instant,
    ) -> Result<(), StoreError> {
        let wall = Timestamp::at(now);
        match effect {
            Effect::Offer {
                offer,
                message,
                first_after,
            } => match self.store.make_offer(&offer, fence).await {
                Ok(()) => {
                    if let Some(waited) = first_after {
                        self.metrics.request_to_offer.observe(waited.as_secs_f64());
                    }
                    tracing::debug!(trip_id = %offer.trip_id, offer_id = %offer.id,
                        driver_id = %offer.driver_id, distance_m = offer.pickup_distance_m,
                        radius_m = offer.radius_m, "offer made");
                    self.announce.offer_made(&offer, &message);
                }
                Err(error) => {
                    let refusal = match &error {
                        StoreError::Fenced => return Err(error),
                        StoreError::TripGone => Refusal::TripGone,
                        StoreError::DriverBusy => {
                            // This node missed the news of the driver's trip: learn it
                            // from the store, so the driver is not tried again.
                            if let Ok(Some(trip)) =
                                self.store.active_trip_of_driver(&offer.driver_id).await
                            {
                                self.fleet.set_trip(&offer.driver_id, Some(trip.id));
                            }
                            Refusal::Unavailable
                        }
                        StoreError::DriverHasOffer | StoreError::TripHasOffer => Refusal::Conflict,
                        _ => {
                            tracing::warn!(%error, "could not make an offer; will retry");
                            Refusal::Unavailable
                        }
                    };
                    self.book.offer_refused(&offer.id, refusal, now);
                }
            },
            Effect::Lapse { offer_id } | Effect::Withdraw { offer_id } => {
                let (state, reason) = if self.book_offer_expired(&offer_id, now) {
                    (OfferState::Lapsed, Some(WithdrawReason::Expired))
                } else {
                    (OfferState::Withdrawn, Some(WithdrawReason::Cancelled))
                };
                match self
                    .store
                    .close_offer(&offer_id, state, reason, fence, wall)
                    .await
                {
                    Ok(closed) => {
                        self.book.closed(&offer_id, closed.as_ref(), now);
                        if let Some(closed) = closed {
                            self.announce.offer_closed(&closed, wall);
                        }
                    }
                    Err(StoreError::Fenced) => return Err(StoreError::Fenced),
                    Err(error) => {
                        tracing::warn!(%offer_id, %error, "could not close an offer; will retry");
                        self.book.close_failed(&offer_id);
                    }
                }
            }
            Effect::Expire { trip_id } => {
                let mut cause = Cause::by(Actor::system(), wall);
                cause.fence = Some(fence.clone());
                cause.reason = Some("no driver accepted before the dispatch deadline".into());
                match self
                    .store
                    .transition(&trip_id, &Change::Expire, &cause, |_| Ok(()))
                    .await
                {
                    Ok(transition) => {
                        self.book.expired(&trip_id, true);
                        self.announce.trip_changed(&transition);
                    }
                    Err(StoreError::Fenced) => return Err(StoreError::Fenced),
                    // Accepted or cancelled meanwhile: whoever did that owns it now.
                    Err(StoreError::InvalidTransition(_) | StoreError::NotFound(_)) => {
                        self.book.expired(&trip_id, true)
                    }
                    Err(error) => {
                        tracing::warn!(%trip_id, %error, "could not expire trip; will retry");
                        self.book.expired(&trip_id, false);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the book's offer is past its deadline (a lapse rather than a withdrawal).
    fn book_offer_expired(&self, offer_id: &str, now: Instant) -> bool {
        self.book.offer_expired(offer_id, now)
    }

    /// Dispatches while this node leads; follows `leadership` (the lease task's view) as
    /// it changes. Sleeps until the next deadline, a wake-up, or a change of leader.
    pub async fn run(
        mut self,
        mut leadership: watch::Receiver<Option<Fence>>,
        mut shutdown: Shutdown,
    ) {
        loop {
            let wanted = leadership
                .borrow_and_update()
                .clone()
                .filter(|fence| Some(fence.epoch) != self.fenced_epoch);
            if wanted != self.fence {
                match wanted {
                    Some(fence) => {
                        let epoch = fence.epoch;
                        match self.lead(fence, Instant::now()).await {
                            Ok(waiting) => tracing::info!(epoch, waiting, "leading dispatch"),
                            Err(error) => {
                                tracing::warn!(%error, "could not read the store to lead")
                            }
                        }
                    }
                    None => self.stand_down(),
                }
            }
            let next = self.step(Instant::now()).await;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.handle.wake.notified() => {}
                changed = leadership.changed() => if changed.is_err() { return },
                _ = shutdown.wait() => return,
            }
        }
    }
}
