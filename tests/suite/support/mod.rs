//! What several test modules share.

pub(crate) mod loopback;
pub(crate) mod process;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) mod servers;
pub(crate) mod stores;
