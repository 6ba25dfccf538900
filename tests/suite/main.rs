//! The crate's integration tests, in one test binary so that they link once.
//!
//! Each module was a test binary of its own; `support` holds what several of
//! them share. Signed deliveries come from the crate's test kit
//! (`clink_webhooks::testing`, feature `test-util`), so the modules that send
//! them need that feature. Tests that need Redis or PostgreSQL read
//! `REDIS_URL` and `DATABASE_URL` (`scripts/with-services cargo test
//! --all-features` starts private servers and exports them) and hold
//! `support::servers` while they use them, since some tests crash the
//! servers on purpose.

mod support;

#[cfg(all(feature = "api", feature = "test-util", feature = "metrics"))]
mod api;
#[cfg(all(feature = "axum", feature = "test-util"))]
mod axum;
#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "cli")]
mod cli_api;
#[cfg(feature = "cli")]
mod cli_output;
#[cfg(all(feature = "console", feature = "test-util"))]
mod console;
#[cfg(all(unix, feature = "console", feature = "cli", feature = "sqlite"))]
mod console_browser;
#[cfg(feature = "test-util")]
mod construct;
#[cfg(feature = "test-util")]
mod counters;
mod decoding;
mod events;
#[cfg(feature = "test-util")]
mod example;
#[cfg(all(unix, feature = "gateway"))]
mod gateway;
#[cfg(all(unix, feature = "test-util", feature = "metrics"))]
mod hostile;
#[cfg(feature = "test-util")]
mod http;
#[cfg(feature = "test-util")]
mod inbox;
#[cfg(all(feature = "test-util", any(feature = "redis", feature = "postgres")))]
mod instances;
#[cfg(feature = "test-util")]
mod logs;
mod memory;
#[cfg(feature = "test-util")]
mod multi_tenant;
#[cfg(all(feature = "test-util", feature = "metrics"))]
mod observability;
#[cfg(feature = "test-util")]
mod ordering;
#[cfg(all(feature = "test-util", feature = "sqlite"))]
mod recovery;
#[cfg(all(feature = "test-util", feature = "metrics"))]
mod rotation;
#[cfg(feature = "test-util")]
mod routed;
mod signature;
mod stores;
mod survivors;
#[cfg(feature = "test-util")]
mod testkit;
