//! [`Server`]: serving a webhook endpoint over HTTP/1 with hyper, hardened
//! against clients that are slow, idle or many (feature `server`).
//!
//! A webhook URL is public. Served naively, a client can keep a socket open
//! forever by sending a header byte every few seconds, hold thousands of
//! idle keep-alive connections, make `accept` fail with "too many open
//! files" and stop the server, or keep it from shutting down. `Server`:
//!
//! - closes a connection that has not sent complete request headers within
//!   the [header read timeout](Server::header_read_timeout) (default 10 s),
//!   which also bounds how long an idle keep-alive connection stays open;
//! - serves at most [`max_connections`](Server::max_connections) at once
//!   (default 1,024), leaving the rest in the kernel's backlog;
//! - logs a failed `accept` (out of file descriptors, say) and tries again
//!   after a pause, never stopping;
//! - on shutdown stops accepting, lets deliveries in progress finish for at
//!   most the [shutdown timeout](Server::shutdown_timeout) (default 10 s),
//!   then closes what is left.
//!
//! Bodies are bounded by the layer itself ([`ClinkLayer::body_timeout`],
//! [`ClinkLayer::body_budget`]).
//!
//! [`ClinkLayer::body_timeout`]: crate::ClinkLayer::body_timeout
//! [`ClinkLayer::body_budget`]: crate::ClinkLayer::body_budget
//!
//! ```no_run
//! use clink_webhooks::server::Server;
//! use clink_webhooks::{ClinkLayer, EventRouter, Layer, Verifier};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = ClinkLayer::new(Verifier::new("whsec_...")?).layer(EventRouter::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! Server::new().serve(listener, service, shutdown).await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower_service::Service;

use crate::{BoxError, ConfigError};

/// The default time a connection has to send complete request headers: 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The default number of connections served at once: 1,024.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The default time deliveries in progress get to finish on shutdown: 10 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause after a failed `accept` before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves a tower service on a listener with the protections in the
/// [module docs](self). Built with validated setters, then
/// [`serve`](Self::serve).
#[derive(Clone)]
pub struct Server {
    header_read_timeout: Duration,
    max_connections: usize,
    shutdown_timeout: Duration,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_connections", &self.max_connections)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with the defaults: 10 s header read timeout, 1,024
    /// connections, 10 s shutdown timeout.
    #[must_use]
    pub fn new() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// How long a connection has to send complete request headers, counted
    /// from when it opens or finishes its previous response; an idle
    /// keep-alive connection is closed after it too.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `timeout` is between 1 ms and 1 hour.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "Server::header_read_timeout must be between 1 ms and 1 hour (the default is 10 s)",
            ));
        }
        self.header_read_timeout = timeout;
        Ok(self)
    }

    /// How many connections are served at once; more wait in the kernel's
    /// backlog until one closes.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `connections` is zero.
    pub fn max_connections(mut self, connections: usize) -> Result<Self, ConfigError> {
        if connections == 0 || connections > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "Server::max_connections must be at least 1 (the default is 1,024)",
            ));
        }
        self.max_connections = connections;
        Ok(self)
    }

    /// How long deliveries in progress get to finish once shutdown is
    /// asked for; connections still open then are closed.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `timeout` is over 1 hour.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "Server::shutdown_timeout must be at most 1 hour (the default is 10 s)",
            ));
        }
        self.shutdown_timeout = timeout;
        Ok(self)
    }

    /// Serves `service` on `listener` until `shutdown` resolves, then shuts
    /// down as the [module docs](self) say. Returns once every connection
    /// is closed.
    pub async fn serve<S, B>(
        self,
        listener: TcpListener,
        service: S,
        shutdown: impl Future<Output = ()>,
    ) where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, say: let connections close
                        // rather than spin, and keep serving.
                        tracing::warn!(%error, "accept failed; trying again shortly");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let service = service.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let mut service = service.clone();
                async move {
                    poll_fn(|cx| service.poll_ready(cx)).await?;
                    service.call(request).await
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(self.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            connections.spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection closed with an error");
                }
                drop(slot);
            });
        }
        drop(listener);
        if tokio::time::timeout(self.shutdown_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "connections still open after the shutdown timeout; closing them"
            );
        }
        connections.shutdown().await;
    }
}
