//! The Redis and PostgreSQL servers the tests share.
//!
//! Some tests crash a server and start it again (see `instances`); they hold
//! the servers [`exclusive`]ly. Every other test that uses a server holds
//! them [`shared`] (or [`shared_blocking`] outside async code) for as long as
//! it uses them, so that no test meets a server that a crash test took down.
//!
//! A test takes one guard at most: the lock is fair, so a second shared
//! guard asked for while an exclusive one waits would never come.
//!
//! The durable servers (`REDIS_DURABLE_URL`, `DATABASE_DURABLE_URL`) serve
//! the crash tests alone; those tests take turns on each with
//! [`durable_redis`] and [`durable_postgres`], and leave the other servers
//! to the rest of the suite.

// Only the modules that need the test kit crash servers or keep connections
// across tests; without it, only `shared` is used.
#![cfg_attr(not(feature = "test-util"), allow(dead_code))]

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

static SERVERS: RwLock<()> = RwLock::const_new(());

#[cfg(feature = "redis")]
static DURABLE_REDIS: Mutex<()> = Mutex::const_new(());

#[cfg(feature = "postgres")]
static DURABLE_POSTGRES: Mutex<()> = Mutex::const_new(());

/// How many times a test has held the servers exclusively.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The servers, up and shared with other tests, until dropped.
pub(crate) async fn shared() -> RwLockReadGuard<'static, ()> {
    SERVERS.read().await
}

/// [`shared`], for a test that is not async.
pub(crate) fn shared_blocking() -> RwLockReadGuard<'static, ()> {
    SERVERS.blocking_read()
}

/// The servers for this test alone, until dropped: it may crash and
/// restart them.
pub(crate) async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    let guard = SERVERS.write().await;
    GENERATION.fetch_add(1, Ordering::SeqCst);
    guard
}

/// The durable redis-server for this test alone, until dropped: it may
/// crash and restart it.
#[cfg(feature = "redis")]
pub(crate) async fn durable_redis() -> MutexGuard<'static, ()> {
    DURABLE_REDIS.lock().await
}

/// The durable PostgreSQL cluster for this test alone, until dropped: it
/// may crash and restart it.
#[cfg(feature = "postgres")]
pub(crate) async fn durable_postgres() -> MutexGuard<'static, ()> {
    DURABLE_POSTGRES.lock().await
}

/// Changes whenever a test has held the servers exclusively, so a
/// connection kept from an earlier generation may have lost its server.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}
