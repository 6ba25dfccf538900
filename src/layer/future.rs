//! The future behind [`ClinkService`](super::ClinkService).

use std::future::Future;
use std::pin::Pin;

/// The future returned by [`ClinkService`](super::ClinkService). Boxed: the
/// delivery awaits the body, the store and the inner service in turn, and a
/// hand-written state machine for that would buy nothing measurable (see
/// `BENCHMARKS.md`).
pub type ResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;
