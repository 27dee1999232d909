//! Several store addresses (DESIGN §1 "A site burns"): a PostgreSQL URL may name several
//! hosts, libpq's way — `postgres://user@host1:5432,host2:5433/hail` — one primary and
//! its standbys, possibly in another site. hail writes to the one host that is not in
//! recovery, and when it loses it, looks again until one is (a standby promoted by the
//! operator's tooling), answering 503 `unavailable` meanwhile. PostgreSQL's own streaming
//! replication keeps the copies; hail replicates nothing itself.
//!
//! Two hosts claiming to be writable at once is a split brain in the database tier (an
//! old primary back after its standby was promoted). hail then writes to *neither*: it
//! stays unavailable until exactly one remains writable, because either choice could
//! acknowledge changes the other copy will never have.

use std::time::Duration;

use sqlx::{AnyConnection, Connection};

use super::{Store, pool_options};

/// How often a store with several hosts checks that it still writes to a primary.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Every this many checks it also asks every other host whether it accepts writes too
/// (a connection to each: not every half second).
const SPLIT_BRAIN_EVERY: u32 = 10;

/// The URL's hosts, each as a single-host URL with the rest of the URL unchanged; a
/// single-host URL gives itself.
pub fn split(url: &str) -> anyhow::Result<Vec<String>> {
    let scheme_end = url
        .find("://")
        .map(|i| i + 3)
        .ok_or_else(|| anyhow::anyhow!("HAIL_DATABASE_URL has no scheme"))?;
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let (user, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    anyhow::ensure!(
        hosts.iter().all(|host| !host.is_empty()),
        "HAIL_DATABASE_URL names an empty host"
    );
    Ok(hosts
        .into_iter()
        .map(|host| {
            format!(
                "{}{user}{host}{}",
                &url[..scheme_end],
                &url[authority_end..]
            )
        })
        .collect())
}

/// Whether the host at `url` accepts writes (is not in recovery); `None` if unreachable.
async fn is_writable(url: &str, within: Duration) -> Option<bool> {
    let check = async {
        let mut connection = AnyConnection::connect(url).await.ok()?;
        let recovering: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut connection)
            .await
            .ok()?;
        let _ = connection.close().await;
        Some(!recovering)
    };
    tokio::time::timeout(within, check).await.ok().flatten()
}

/// The one writable host among `hosts`, or why there is none to write to.
pub async fn writable(hosts: &[String], within: Duration) -> Result<String, String> {
    let checks = hosts.iter().map(|host| is_writable(host, within));
    let answers = futures_util::future::join_all(checks).await;
    let writable: Vec<&String> = hosts
        .iter()
        .zip(&answers)
        .filter(|(_, answer)| **answer == Some(true))
        .map(|(host, _)| host)
        .collect();
    match writable.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(
            "no host of HAIL_DATABASE_URL accepts writes (none reachable and out of recovery)"
                .into(),
        ),
        _ => Err(format!(
            "{} hosts of HAIL_DATABASE_URL accept writes at once: refusing to write to any \
             until one is left (split brain)",
            writable.len()
        )),
    }
}

impl Store {
    /// For a URL with several hosts: every [`CHECK_EVERY`], checks that the host written
    /// to is still a reachable primary, and if not, stops writing (503) and looks for the
    /// one writable host, then writes there. Returns at shutdown.
    pub async fn follow_primary(self, mut shutdown: crate::shutdown::Shutdown) {
        let shared = &self.shared;
        if shared.hosts.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut split_brain_reported = false;
        let mut round: u32 = 0;
        loop {
            round = round.wrapping_add(1);
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            let lost = shared.lost.load(std::sync::atomic::Ordering::Relaxed);
            if !lost {
                let current = shared
                    .pool
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let check =
                    sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(&current);
                let primary = matches!(
                    tokio::time::timeout(shared.acquire_timeout, check).await,
                    Ok(Ok(false))
                );
                // Two primaries: the one written to may be an old primary back from the
                // dead beside the promoted one. Check the others too, now and then cheaply
                // (one connection each).
                let others_writable = primary && round.is_multiple_of(SPLIT_BRAIN_EVERY) && {
                    match writable(&shared.hosts, shared.acquire_timeout).await {
                        Err(reason) if reason.contains("split brain") => {
                            if !split_brain_reported {
                                tracing::error!(%reason, "the store stops accepting writes");
                                split_brain_reported = true;
                            }
                            true
                        }
                        _ => false,
                    }
                };
                if primary && !others_writable {
                    split_brain_reported = false;
                    continue;
                }
                tracing::warn!(
                    "lost the writable database; answering 503 until a primary is found"
                );
                shared
                    .lost
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            match writable(&shared.hosts, shared.acquire_timeout).await {
                Ok(url) => {
                    let options =
                        pool_options(self.backend, shared.max_connections, shared.acquire_timeout);
                    match options.connect(&url).await {
                        Ok(pool) => {
                            let old = std::mem::replace(
                                &mut *shared.pool.write().unwrap_or_else(|p| p.into_inner()),
                                pool,
                            );
                            shared
                                .lost
                                .store(false, std::sync::atomic::Ordering::Relaxed);
                            split_brain_reported = false;
                            tracing::warn!(host = %redacted_host(&url), "writing to a new primary");
                            tokio::spawn(async move { old.close().await });
                        }
                        Err(error) => tracing::warn!(%error, "could not open the new primary"),
                    }
                }
                Err(reason) => {
                    if reason.contains("split brain") && !split_brain_reported {
                        tracing::error!(%reason, "the store stays unavailable");
                        split_brain_reported = true;
                    } else {
                        tracing::debug!(%reason, "still no primary");
                    }
                }
            }
        }
    }
}

/// The host:port part of a URL, for logs (never the password).
fn redacted_host(url: &str) -> &str {
    let start = url
        .rfind('@')
        .map_or_else(|| url.find("://").map_or(0, |i| i + 3), |at| at + 1);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    &url[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_one_per_host() {
        assert_eq!(
            split("postgres://u:p@a:5432,b:5433/hail?sslmode=disable").unwrap(),
            [
                "postgres://u:p@a:5432/hail?sslmode=disable",
                "postgres://u:p@b:5433/hail?sslmode=disable"
            ]
        );
        assert_eq!(split("postgres://h/db").unwrap(), ["postgres://h/db"]);
        assert_eq!(
            split("postgresql://a,b").unwrap(),
            ["postgresql://a", "postgresql://b"]
        );
        assert!(split("postgres://u@a,,b/db").is_err());
        assert_eq!(
            redacted_host("postgres://u:secret@db-a:5432/hail"),
            "db-a:5432"
        );
    }
}
