//! What a driver's socket means: coming online, pings, status, going away. The socket
//! itself (frames, budgets, queues) is the gateway's; this is what the messages do.

use std::time::Duration;

use tokio::time::Instant;

use super::Rides;
use crate::{
    error::{ApiError, ErrorCode},
    fleet::{DriverKey, DriverStatus},
    geometry::LatLng,
    protocol::OfferMessage,
    store::StoreError,
};

impl Rides {
    /// The trip a driver is on, as the store knows it (also after a restart): asked
    /// before its socket opens, so a store outage refuses the socket rather than letting
    /// a busy driver look free.
    pub async fn driver_trip(&self, driver_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .active_trip_of_driver(driver_id)
            .await?
            .map(|trip| trip.id))
    }

    /// A socket of this driver opened here. Returns the key its pings use.
    pub fn driver_connected(
        &self,
        driver_id: &str,
        trip_id: Option<String>,
        now: Instant,
    ) -> DriverKey {
        let key = self.fleet.connect(driver_id, trip_id, now);
        self.dispatcher.driver_available();
        key
    }

    /// The open offer a driver holds, to send again on a new socket: it may have been
    /// lost with the previous socket, or with the node that held it.
    pub async fn open_offer(&self, driver_id: &str) -> Result<Option<OfferMessage>, StoreError> {
        let offer = self.store.open_offer_of_driver(driver_id).await?;
        Ok(offer.map(|(offer, trip)| offer.message(&trip)))
    }

    pub fn driver_disconnected(&self, driver_id: &str) {
        self.fleet.disconnect(driver_id);
    }

    /// A location ping. Bad coordinates are refused before anything sees them.
    pub fn location(
        &self,
        driver: &DriverKey,
        lat: f64,
        lng: f64,
        heading_deg: Option<f64>,
        now: Instant,
    ) -> Result<(), ApiError> {
        let position = LatLng::new(lat, lng)
            .map_err(|e| ApiError::new(ErrorCode::InvalidCoordinates, e.to_string()))?;
        let Some(outcome) = self.fleet.ping(driver, position, heading_deg, now) else {
            return Ok(());
        };
        self.metrics.location_pings.inc();
        if outcome.became_dispatchable {
            self.dispatcher.driver_available();
        }
        if let Some(trip_id) = outcome.trip_id {
            self.hub.publish_driver_location(&trip_id, position, now);
        }
        Ok(())
    }

    /// The driver says whether it takes rides. Going offline withdraws its open offer.
    pub fn status(&self, driver_id: &str, status: DriverStatus, now: Instant) {
        let availability = self.fleet.set_status(driver_id, status, now);
        if availability.gained {
            self.dispatcher.driver_available();
        }
        if status == DriverStatus::Offline {
            self.dispatcher.driver_unavailable(driver_id);
        }
    }

    /// Drivers whose socket dropped and who stayed silent past the grace period go
    /// offline; their offers are withdrawn.
    pub fn sweep_offline_drivers(&self, now: Instant) {
        let offline_after = Duration::from_millis(self.config.offline_after_ms);
        for driver_id in self.fleet.sweep_offline(now, offline_after) {
            self.dispatcher.driver_unavailable(&driver_id);
            tracing::debug!(%driver_id, "driver offline after grace period");
        }
        self.metrics.drivers_online.set(self.fleet.len() as i64);
    }
}
