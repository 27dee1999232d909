//! What a run did, as its clients saw it: live counters, the progress line, the summary.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::city::City;
use crate::{ops::percentile, shutdown::Shutdown};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub samples: usize,
}

impl Percentiles {
    pub(super) fn of(sorted: &[f64]) -> Percentiles {
        Percentiles {
            p50: percentile(sorted, 0.50),
            p90: percentile(sorted, 0.90),
            p99: percentile(sorted, 0.99),
            samples: sorted.len(),
        }
    }
}

/// The pickups of accepted offers: how far, and how long, drivers had to go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pickups {
    pub mean_m: Option<f64>,
    pub p90_m: Option<f64>,
    pub mean_eta_s: Option<f64>,
    pub samples: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mean {
    pub mean: Option<f64>,
    pub samples: u64,
}

/// What a run did, as its clients saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub drivers: u32,
    /// Most driver sockets open at once.
    pub drivers_connected: u64,
    pub pings_sent: u64,
    /// Over the measured window: from the fleet being online to the end.
    pub pings_per_s: f64,
    /// Requests the server acknowledged (201).
    pub trips_requested: u64,
    pub trips_completed: u64,
    pub trips_expired: u64,
    pub trips_cancelled: u64,
    /// Acknowledged trips not yet finished when the run ended.
    pub trips_unfinished: u64,
    pub offers_received: u64,
    pub offers_accepted: u64,
    pub offers_declined: u64,
    pub offers_ignored: u64,
    /// From sending a request to its first offer arriving on a driver's socket.
    pub offer_latency_ms: Percentiles,
    /// The same, for requests made while a free driver was within 10 km (they could be
    /// offered at once)...
    pub offer_latency_free_ms: Percentiles,
    /// ...and for those that had to wait for a driver to become free (rush hour).
    pub offer_latency_waited_ms: Percentiles,
    /// Over every offer received.
    pub pickup_distance_m: Mean,
    /// Over accepted offers: the pickups that were driven.
    pub pickups: Pickups,
    /// Completed over requested.
    pub completed_share: Option<f64>,
    pub connect_errors: u64,
    /// Drivers the server would not onboard.
    pub onboarding_failures: u64,
    pub http_errors: u64,
    pub socket_drops: u64,
    pub elapsed_s: f64,
}

/// When a trip's request was sent (and whether a free driver was in range then), and
/// when its first offer arrived.
type RequestTiming = (Option<(Instant, bool)>, Option<Instant>);

#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub connected_max: AtomicU64,
    pub pings: AtomicU64,
    pub requested: AtomicU64,
    pub completed: AtomicU64,
    pub expired: AtomicU64,
    pub cancelled: AtomicU64,
    pub matched: AtomicU64,
    pub offers: AtomicU64,
    pub accepted: AtomicU64,
    pub declined: AtomicU64,
    pub ignored: AtomicU64,
    pub connect_errors: AtomicU64,
    pub onboarding_failures: AtomicU64,
    pub http_errors: AtomicU64,
    pub socket_drops: AtomicU64,
    pub pickup_m_sum: Mutex<(f64, u64)>,
    /// Accepted offers' pickup distance (m) and ETA (s).
    pub pickups: Mutex<Vec<(f64, f64)>>,
    /// Request → first offer, for requests with (`.0`) and without (`.1`) a free driver in
    /// range when made.
    latencies_ms: Mutex<(Vec<f64>, Vec<f64>)>,
    /// Per trip: when its request was sent and when its first offer arrived; whichever
    /// is learnt second completes a latency sample.
    timing: Mutex<HashMap<String, RequestTiming>>,
    /// The same moments on the wall clock, for `--timings`.
    wall_clock: Mutex<Vec<(String, &'static str, u128)>>,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// `sent`: when the request was sent and whether a free driver was in range then.
    pub fn timing(&self, trip_id: &str, sent: Option<(Instant, bool)>, offered: Option<Instant>) {
        let (kind, moment) = match (sent, offered) {
            (Some((sent, _)), _) => ("request", sent),
            (None, Some(offered)) => ("offer", offered),
            (None, None) => return,
        };
        let unix_ms = (SystemTime::now() - moment.elapsed())
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        self.wall_clock
            .lock()
            .unwrap()
            .push((trip_id.to_string(), kind, unix_ms));
        let mut timing = self.timing.lock().unwrap();
        let entry = timing.entry(trip_id.to_string()).or_default();
        if entry.0.is_none() {
            entry.0 = sent;
        }
        let first_offer = entry.1.is_none() && offered.is_some();
        if first_offer {
            entry.1 = offered;
        }
        if let (Some((sent_at, free)), Some(offered_at)) = *entry
            && (first_offer || sent.is_some())
        {
            let latency = offered_at.saturating_duration_since(sent_at);
            let mut latencies = self.latencies_ms.lock().unwrap();
            let split = if free {
                &mut latencies.0
            } else {
                &mut latencies.1
            };
            split.push(latency.as_secs_f64() * 1_000.0);
        }
    }

    pub fn write_timings(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (trip_id, kind, unix_ms) in self.wall_clock.lock().unwrap().iter() {
            writeln!(file, "{trip_id},{kind},{unix_ms}")?;
        }
        file.flush()
    }

    /// Every request → first offer latency, sorted.
    fn latencies(&self) -> Vec<f64> {
        let (free, waited) = self.latencies_split();
        let mut values = [free, waited].concat();
        values.sort_by(f64::total_cmp);
        values
    }

    /// Sorted latencies of requests with and without a free driver in range.
    fn latencies_split(&self) -> (Vec<f64>, Vec<f64>) {
        let (mut free, mut waited) = self.latencies_ms.lock().unwrap().clone();
        free.sort_by(f64::total_cmp);
        waited.sort_by(f64::total_cmp);
        (free, waited)
    }

    fn pickups(&self) -> Pickups {
        let pickups = self.pickups.lock().unwrap();
        let n = pickups.len();
        let mut distances: Vec<f64> = pickups.iter().map(|(m, _)| *m).collect();
        distances.sort_by(f64::total_cmp);
        let mean =
            |values: &mut dyn Iterator<Item = f64>| (n > 0).then(|| values.sum::<f64>() / n as f64);
        Pickups {
            mean_m: mean(&mut distances.iter().copied()),
            p90_m: percentile(&distances, 0.90),
            mean_eta_s: mean(&mut pickups.iter().map(|(_, s)| *s)),
            samples: n,
        }
    }
}

/// Shows how the run goes: one refreshed line on a terminal, log lines on stderr
/// otherwise.
pub async fn progress(city: Arc<City>, mut stop: Shutdown) {
    let terminal = std::io::stdout().is_terminal();
    let every = if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    let mut last_pings = 0;
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait() => {
                if terminal {
                    println!();
                }
                return;
            }
        }
        let c = &city.counters;
        let pings = Counters::get(&c.pings);
        let rate = (pings - last_pings) as f64 / last_at.elapsed().as_secs_f64();
        (last_pings, last_at) = (pings, Instant::now());
        let latencies = c.latencies();
        let ms = |q| percentile(&latencies, q).map_or("-".to_string(), |v| format!("{v:.0}"));
        let finished =
            Counters::get(&c.completed) + Counters::get(&c.expired) + Counters::get(&c.cancelled);
        let line = format!(
            "drivers {} | pings/s {:.0} | open {} | matched {} | completed {} | expired {} | cancelled {} | request→offer p50 {} ms p99 {} ms",
            Counters::get(&c.connected),
            rate,
            Counters::get(&c.requested).saturating_sub(finished),
            Counters::get(&c.matched),
            Counters::get(&c.completed),
            Counters::get(&c.expired),
            Counters::get(&c.cancelled),
            ms(0.50),
            ms(0.99),
        );
        if terminal {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else {
            eprintln!("{line}");
        }
    }
}

/// `pings_before`: pings sent while the fleet was still coming online, left out of the
/// rate.
pub fn summarize(city: &City, elapsed: Duration, pings_before: u64) -> Summary {
    let c = &city.counters;
    let latencies = c.latencies();
    let (free, waited) = c.latencies_split();
    let (sum, count) = *c.pickup_m_sum.lock().unwrap();
    let requested = Counters::get(&c.requested);
    let completed = Counters::get(&c.completed);
    let expired = Counters::get(&c.expired);
    let cancelled = Counters::get(&c.cancelled);
    let pings = Counters::get(&c.pings);
    Summary {
        drivers: city.config.drivers,
        drivers_connected: Counters::get(&c.connected_max),
        pings_sent: pings,
        pings_per_s: (pings - pings_before) as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        trips_requested: requested,
        trips_completed: completed,
        trips_expired: expired,
        trips_cancelled: cancelled,
        trips_unfinished: requested.saturating_sub(completed + expired + cancelled),
        offers_received: Counters::get(&c.offers),
        offers_accepted: Counters::get(&c.accepted),
        offers_declined: Counters::get(&c.declined),
        offers_ignored: Counters::get(&c.ignored),
        offer_latency_ms: Percentiles::of(&latencies),
        offer_latency_free_ms: Percentiles::of(&free),
        offer_latency_waited_ms: Percentiles::of(&waited),
        pickup_distance_m: Mean {
            mean: (count > 0).then(|| sum / count as f64),
            samples: count,
        },
        pickups: c.pickups(),
        completed_share: (requested > 0).then(|| completed as f64 / requested as f64),
        connect_errors: Counters::get(&c.connect_errors),
        onboarding_failures: Counters::get(&c.onboarding_failures),
        http_errors: Counters::get(&c.http_errors),
        socket_drops: Counters::get(&c.socket_drops),
        elapsed_s: elapsed.as_secs_f64(),
    }
}

impl Summary {
    /// A table for people.
    pub fn table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
        let rows = [
            (
                "drivers (connected at most)",
                format!("{} ({})", self.drivers, self.drivers_connected),
            ),
            (
                "pings sent",
                format!("{} ({:.0}/s)", self.pings_sent, self.pings_per_s),
            ),
            ("trips requested", self.trips_requested.to_string()),
            ("  completed", self.trips_completed.to_string()),
            ("  expired", self.trips_expired.to_string()),
            ("  cancelled", self.trips_cancelled.to_string()),
            ("  unfinished", self.trips_unfinished.to_string()),
            ("offers received", self.offers_received.to_string()),
            (
                "  accepted / declined / ignored",
                format!(
                    "{} / {} / {}",
                    self.offers_accepted, self.offers_declined, self.offers_ignored
                ),
            ),
            ("request → offer p50", ms(self.offer_latency_ms.p50)),
            ("request → offer p99", ms(self.offer_latency_ms.p99)),
            (
                "  with a free driver in range: p50 / p99",
                format!(
                    "{} / {} ({} requests)",
                    ms(self.offer_latency_free_ms.p50),
                    ms(self.offer_latency_free_ms.p99),
                    self.offer_latency_free_ms.samples
                ),
            ),
            (
                "  waiting for a free driver: p50 / p99",
                format!(
                    "{} / {} ({} requests)",
                    ms(self.offer_latency_waited_ms.p50),
                    ms(self.offer_latency_waited_ms.p99),
                    self.offer_latency_waited_ms.samples
                ),
            ),
            (
                "mean pickup distance (offers)",
                self.pickup_distance_m
                    .mean
                    .map_or("-".into(), |m| format!("{m:.0} m")),
            ),
            (
                "accepted pickups: mean / p90 / mean ETA",
                match (
                    self.pickups.mean_m,
                    self.pickups.p90_m,
                    self.pickups.mean_eta_s,
                ) {
                    (Some(mean), Some(p90), Some(eta)) => {
                        format!("{mean:.0} m / {p90:.0} m / {eta:.0} s")
                    }
                    _ => "-".into(),
                },
            ),
            (
                "completed share",
                self.completed_share
                    .map_or("-".into(), |s| format!("{:.1} %", s * 100.0)),
            ),
            (
                "errors: connect / http / socket drops",
                format!(
                    "{} / {} / {}",
                    self.connect_errors, self.http_errors, self.socket_drops
                ),
            ),
            ("elapsed", format!("{:.1} s", self.elapsed_s)),
        ];
        let mut table = String::new();
        for (name, value) in rows {
            table.push_str(&format!("{name:<40} {value}\n"));
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_latency_counts_the_first_offer_in_either_order() {
        let counters = Counters::default();
        let t0 = Instant::now();
        counters.timing("a", Some((t0, true)), None);
        counters.timing("a", None, Some(t0 + Duration::from_millis(30)));
        counters.timing("a", None, Some(t0 + Duration::from_millis(90))); // a second offer
        counters.timing("b", None, Some(t0 + Duration::from_millis(5))); // offer before answer
        counters.timing("b", Some((t0, false)), None);
        assert_eq!(counters.latencies(), vec![5.0, 30.0]);
        assert_eq!(counters.latencies_split(), (vec![30.0], vec![5.0]));
    }
}
