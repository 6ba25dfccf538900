//! [`MemoryStore`]: an in-process store (a placeholder until the full one lands).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{BoxFuture, Claim, IdempotencyStore, LeaseToken, Settle, StoreError};

#[derive(Debug)]
enum Entry {
    Claimed { token: LeaseToken, until: Instant },
    Completed { until: Instant },
}

/// An in-process idempotency store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, Entry>>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl IdempotencyStore for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut map = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(key) {
                Some(Entry::Completed { until }) if *until > now => return Ok(Claim::Completed),
                Some(Entry::Claimed { until, .. }) if *until > now => {
                    return Ok(Claim::InFlight {
                        retry_after: *until - now,
                    })
                }
                _ => {}
            }
            let token = LeaseToken::generate();
            map.insert(
                key.to_owned(),
                Entry::Claimed {
                    token: token.clone(),
                    until: now + lease,
                },
            );
            Ok(Claim::Claimed(token))
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a LeaseToken,
        retention: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(async move {
            let mut map = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(key) {
                Some(Entry::Claimed { token: held, .. }) if held == token => {
                    map.insert(
                        key.to_owned(),
                        Entry::Completed {
                            until: Instant::now() + retention,
                        },
                    );
                    Ok(Settle::Applied)
                }
                _ => Ok(Settle::LeaseLost),
            }
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(async move {
            let mut map = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(key) {
                Some(Entry::Claimed { token: held, .. }) if held == token => {
                    map.remove(key);
                    Ok(Settle::Applied)
                }
                _ => Ok(Settle::LeaseLost),
            }
        })
    }
}
