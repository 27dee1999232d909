//! Rate limits per client (issue 10): sign-ups per client address, trip requests and
//! cancels per passenger, every other write per passenger or driver — each a keyed GCRA
//! limiter (`governor`), answered with 429 `rate_limited` and `Retry-After`. Defaults a
//! person never meets and a script meets within seconds; operators are not limited.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
};

use axum::http::HeaderMap;
use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};

use crate::{auth::Principal, config::LimitsConfig, error::ApiError, trip::Role};

pub struct RateLimits {
    signups: DefaultKeyedRateLimiter<IpAddr>,
    trip_requests: DefaultKeyedRateLimiter<String>,
    writes: DefaultKeyedRateLimiter<String>,
    trust_forwarded_for: bool,
    clock: DefaultClock,
}

fn per_minute(count: u32, burst: u32) -> Quota {
    let count = NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(count).allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

impl RateLimits {
    pub fn new(limits: &LimitsConfig) -> RateLimits {
        RateLimits {
            signups: DefaultKeyedRateLimiter::keyed(per_minute(
                limits.signup_limit_per_min,
                limits.signup_limit_per_min,
            )),
            trip_requests: DefaultKeyedRateLimiter::keyed(per_minute(
                limits.trip_request_limit_per_min,
                limits.trip_request_limit_per_min,
            )),
            writes: DefaultKeyedRateLimiter::keyed(per_minute(
                limits.write_limit_per_min,
                (limits.write_limit_per_min / 4).max(1),
            )),
            trust_forwarded_for: limits.trust_forwarded_for,
            clock: DefaultClock::default(),
        }
    }

    /// The client's address: the connection's peer, or behind a trusted proxy the last
    /// address of `X-Forwarded-For`.
    pub fn client_address(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        if self.trust_forwarded_for
            && let Some(forwarded) = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .filter_map(|address| address.trim().parse::<IpAddr>().ok())
                .next_back()
        {
            return Some(forwarded);
        }
        peer.map(|peer| peer.ip())
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        what: &str,
    ) -> Result<(), ApiError> {
        limiter.check_key(key).map_err(|not_until| {
            ApiError::rate_limited(what, not_until.wait_time_from(self.clock.now()))
        })
    }

    /// A passenger signs up from `address` (unknown addresses share one budget).
    pub fn sign_up(&self, address: Option<IpAddr>) -> Result<(), ApiError> {
        let key = address.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.check(&self.signups, &key, "sign-ups from this address")
    }

    /// A passenger requests or cancels a trip.
    pub fn trip_request(&self, principal: &Principal) -> Result<(), ApiError> {
        if principal.role != Role::Passenger {
            return self.write(principal);
        }
        self.check(
            &self.trip_requests,
            &principal.id,
            "trip requests and cancels",
        )
    }

    /// Any other write by a passenger or driver.
    pub fn write(&self, principal: &Principal) -> Result<(), ApiError> {
        if principal.role == Role::Operator {
            return Ok(());
        }
        self.check(&self.writes, &principal.id, "requests")
    }

    /// Forgets clients that have been quiet long enough to have a full budget again.
    pub fn forget_quiet_clients(&self) {
        self.signups.retain_recent();
        self.trip_requests.retain_recent();
        self.writes.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        crate::config::ServerConfig::new("127.0.0.1:0".parse().unwrap(), "sqlite::memory:").limits
    }

    #[test]
    fn a_script_meets_the_limits_a_person_does_not() {
        let limits = RateLimits::new(&limits());
        let passenger = Principal {
            id: "psg_1".into(),
            role: Role::Passenger,
        };
        let allowed = (0..20)
            .filter(|_| limits.trip_request(&passenger).is_ok())
            .count();
        assert_eq!(allowed, 6, "six trip requests a minute");
        let refused = limits.trip_request(&passenger).unwrap_err();
        assert_eq!(refused.code, crate::error::ErrorCode::RateLimited);
        assert!(
            refused.retry_after_s.is_some_and(|s| (1..=10).contains(&s)),
            "{refused:?}"
        );
        let address = Some(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(
            (0..100).filter(|_| limits.sign_up(address).is_ok()).count(),
            30
        );
        assert!(
            limits.sign_up(Some(IpAddr::from([10, 0, 0, 2]))).is_ok(),
            "per address"
        );
        let operator = Principal {
            id: "operator".into(),
            role: Role::Operator,
        };
        assert!((0..1_000).all(|_| limits.write(&operator).is_ok()));
    }

    #[test]
    fn forwarded_for_counts_only_when_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 10.0.0.9".parse().unwrap());
        let peer = Some("127.0.0.1:5000".parse().unwrap());
        let untrusting = RateLimits::new(&limits());
        assert_eq!(
            untrusting.client_address(peer, &headers),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
        let mut config = limits();
        config.trust_forwarded_for = true;
        let trusting = RateLimits::new(&config);
        assert_eq!(
            trusting.client_address(peer, &headers),
            Some(IpAddr::from([10, 0, 0, 9]))
        );
    }
}
