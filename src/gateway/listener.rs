//! The HTTP server loop: hyper's HTTP/1 with a header-read timeout and a cap on plain
//! connections (issue 10's slowloris). `axum::serve` sets no timer, and without one
//! hyper's header-read timeout never fires: 200 connections that sent half a request
//! stayed open for good.
//!
//! A connection counts against the cap until it is upgraded to a WebSocket; sockets have
//! their own budgets per role (`socket`). Each connection knows its peer's address
//! (`ConnectInfo`), for limits per client address.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::Service;

use crate::shutdown::Shutdown;

/// How long shutdown waits for requests in flight before it stops waiting.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until shutdown, then lets requests in flight finish
/// (bounded by [`DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    header_read_timeout: Duration,
    mut shutdown: Shutdown,
) {
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the cap: closed at once, before reading anything.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().call(request)
            },
        );
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.wait() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    // Every connection gives its permit back when it is done.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, connections.acquire_many(all)).await;
}

/// The client's address, as the connection gave it.
pub fn peer(request_parts: &axum::http::request::Parts) -> Option<SocketAddr> {
    request_parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| *address)
}
