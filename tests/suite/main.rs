//! The crate's integration tests, in one test binary so that they link once.
//!
//! Each module was a test binary of its own; `support` holds what several of
//! them share. Tests that need Redis or PostgreSQL read `REDIS_URL` and
//! `DATABASE_URL` (`scripts/with-services cargo test --all-features` starts
//! private servers and exports them) and hold [`support::servers`] while they
//! use them, since some tests crash the servers on purpose.

mod support;

#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "cli")]
mod cli;
mod events;
mod example;
mod http;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod instances;
mod ordering;
mod signature;
mod stores;
#[cfg(feature = "test-util")]
mod testkit;
