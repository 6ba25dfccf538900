//! `MemoryStore`'s documented memory per key, measured: the growth of this
//! process's resident memory (`VmRSS` in `/proc/self/status`) while it
//! stores one million completed keys shaped like the layer's.
//!
//! The measurement needs the process to itself, so the test is ignored in
//! the ordinary run; `scripts/test` runs it on its own:
//!
//! ```sh
//! cargo test --all-features --test suite -- --ignored memory_per_key
//! ```

use std::time::{Duration, Instant};

use clink_webhooks::store::{Claim, IdempotencyStore, MemoryStore, Settle, DEFAULT_RETENTION};

/// The figure in `MemoryStore`'s docs (and the README's), in bytes.
const DOCUMENTED_BYTES_PER_KEY: u64 = 40;

/// How far above the documented figure a measurement may land: allocators
/// and page rounding differ a little between machines.
const MARGIN_PERCENT: u64 = 15;

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("an unreadable VmRSS line: {line}"));
    kib * 1024
}

#[test]
#[ignore = "measures the whole process's memory: run it alone, as scripts/test does"]
fn memory_per_key_stays_within_the_documented_figure() {
    const KEYS: u64 = 1_000_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = MemoryStore::new();
        let lease = Duration::from_secs(60);
        let started = Instant::now();
        let before = resident_bytes();
        for i in 0..KEYS {
            // 39 bytes, like `clink:live:evt_` and a 24-character id.
            let key = format!("clink:live:evt_{i:024}");
            let Ok(Claim::Claimed(token)) = store.claim(&key, lease).await else {
                panic!("{key} was not claimed");
            };
            let settled = store.complete(&key, &token, DEFAULT_RETENTION).await;
            assert_eq!(settled.ok(), Some(Settle::Applied), "{key}");
        }
        let grown = resident_bytes().saturating_sub(before);
        assert_eq!(store.len(), usize::try_from(KEYS).unwrap());
        let per_key = grown / KEYS;
        let limit = DOCUMENTED_BYTES_PER_KEY * (100 + MARGIN_PERCENT) / 100;
        eprintln!(
            "MemoryStore: {per_key} bytes per key measured ({KEYS} completed keys grew resident \
             memory by {} MiB in {:.1?}); documented {DOCUMENTED_BYTES_PER_KEY}, limit {limit}",
            grown / (1024 * 1024),
            started.elapsed()
        );
        assert!(
            per_key <= limit,
            "{per_key} bytes per key, over the documented {DOCUMENTED_BYTES_PER_KEY} + \
             {MARGIN_PERCENT}%"
        );
        // Kept until measured: dropping it first would measure nothing.
        drop(store);
    });
}
