//! What several test modules share.

#[cfg(any(feature = "test-util", feature = "redis"))]
pub(crate) mod capture;
#[cfg(feature = "api")]
pub(crate) mod fake_api;
pub(crate) mod inbox_delegate;
#[cfg(feature = "test-util")]
pub(crate) mod loopback;
#[cfg(feature = "test-util")]
pub(crate) mod process;
pub(crate) mod secrets;
#[path = "../../../src/test_seed.rs"]
pub(crate) mod seed;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) mod servers;
pub(crate) mod stores;
