//! The freshness cases of the conformance suite: every `FreshnessStore`
//! keeps, per object, the newest version recorded, in exactly the order of
//! `Version`'s `Ord` (created time as a number, then event ids byte-wise),
//! atomically, and forgets it when its retention ends.
//!
//! Each case gets `open`, which makes a fresh store keeping records for the
//! retention it is given.

use std::sync::Arc;
use std::time::Duration;

use clink_webhooks::events::{ObjectKey, Version};
use clink_webhooks::store::{
    FreshnessStore, StoreErrorKind, DEFAULT_FRESHNESS_RETENTION, MAX_KEY_LEN,
};
use clink_webhooks::Timestamp;
use tokio::time::Instant;

use super::{CLOCK_SLACK, PATIENCE, SHORT};
use crate::support::stores::Keys;

fn v(created: i64, event_id: &str) -> Version {
    Version::new(Timestamp::from_millis(created), event_id)
}

fn order(keys: &Keys, name: &str) -> ObjectKey {
    ObjectKey::new("order", keys.key(name))
}

#[track_caller]
fn newest_of(answer: Result<Option<Version>, impl std::fmt::Debug>) -> Option<Version> {
    answer.unwrap_or_else(|err| panic!("newest failed: {err:?}"))
}

/// Records `versions` about `object` one after the other and returns the
/// newest version the store then holds.
async fn record_all(
    store: &dyn FreshnessStore, object: &ObjectKey, versions: &[&Version],
) -> Option<Version> {
    for version in versions {
        if let Err(err) = store.record(object, version).await {
            panic!("recording {version} about {object} failed: {err}");
        }
    }
    newest_of(store.newest(object).await)
}

/// A record holds the newest version per object; another family with the
/// same id, or another id, is another object.
pub(crate) async fn records_keep_the_newest_per_object(
    open: impl AsyncFn(Duration) -> Arc<dyn FreshnessStore>, keys: Keys,
) {
    let store = open(DEFAULT_FRESHNESS_RETENTION).await;
    let object = order(&keys, "ord");
    assert_eq!(newest_of(store.newest(&object).await), None);

    let first = v(1_736_942_400_000, "evt_1");
    let second = v(1_736_942_401_000, "evt_2");
    assert_eq!(
        record_all(&*store, &object, &[&first]).await,
        Some(first.clone())
    );
    assert_eq!(
        record_all(&*store, &object, &[&second]).await,
        Some(second.clone())
    );

    let refund = ObjectKey::new("refund", keys.key("ord"));
    let sibling = order(&keys, "ord2");
    assert_eq!(newest_of(store.newest(&refund).await), None);
    assert_eq!(newest_of(store.newest(&sibling).await), None);
    assert_eq!(
        record_all(&*store, &refund, &[&first]).await,
        Some(first.clone())
    );
    assert_eq!(newest_of(store.newest(&object).await), Some(second));

    // Ids are opaque text: separators, quotes and non-ASCII come back intact,
    // and so do ids at the length limit.
    let odd = order(&keys, "a:b|c ' \" ; -- é ✓");
    let odd_version = v(-1, "evt|1:2 ' é ✓");
    assert_eq!(
        record_all(&*store, &odd, &[&odd_version]).await,
        Some(odd_version)
    );
    let base = keys.key("");
    let longest = ObjectKey::new(
        "order",
        format!("{base}{}", "x".repeat(MAX_KEY_LEN - base.len())),
    );
    let longest_version = v(0, &"e".repeat(MAX_KEY_LEN));
    assert_eq!(
        record_all(&*store, &longest, &[&longest_version]).await,
        Some(longest_version)
    );
}

/// Whichever arrives first, the newer of two versions stays: created times
/// compare as numbers (negative ones too, and beyond the 2^53 where doubles
/// lose exactness), then ids.
pub(crate) async fn an_older_version_never_replaces_a_newer(
    open: impl AsyncFn(Duration) -> Arc<dyn FreshnessStore>, keys: Keys,
) {
    let store = open(DEFAULT_FRESHNESS_RETENTION).await;
    let exact = 1 << 53;
    let pairs = [
        // (newer, older)
        (v(10, "evt_a"), v(9, "evt_z")),
        (v(100, "evt_a"), v(99, "evt_a")),
        (v(10, "evt_b"), v(10, "evt_a")),
        (v(1, "evt_a"), v(-1, "evt_z")),
        (v(-9, "evt_a"), v(-10, "evt_z")),
        (v(0, "evt_a"), v(i64::MIN, "evt_z")),
        (v(exact + 1, "evt_a"), v(exact, "evt_b")),
        (v(i64::MAX, "evt_a"), v(i64::MAX - 1, "evt_z")),
    ];
    for (i, (newer, older)) in pairs.iter().enumerate() {
        assert!(newer > older, "the pair {i} is in order");
        let first_newer = order(&keys, &format!("{i} newer first"));
        let first_older = order(&keys, &format!("{i} older first"));
        for (object, arrivals) in [
            (&first_newer, [newer, older]),
            (&first_older, [older, newer]),
        ] {
            assert_eq!(
                record_all(&*store, object, &arrivals).await,
                Some(newer.clone()),
                "{older} then {newer}, or the other way round"
            );
        }
        // Recording the held version again changes nothing.
        assert_eq!(
            record_all(&*store, &first_newer, &[newer]).await,
            Some(newer.clone())
        );
    }
}

/// With equal created times the ids decide, byte by byte as Rust compares
/// `str`, never by a locale's collation (which would put `evt_a` before
/// `evt_B`, or skip the underscores).
pub(crate) async fn equal_created_times_compare_ids_byte_wise(
    open: impl AsyncFn(Duration) -> Arc<dyn FreshnessStore>, keys: Keys,
) {
    let store = open(DEFAULT_FRESHNESS_RETENTION).await;
    assert!("evt_B" < "evt_a" && "evt_Z" < "evt__" && "evt__" < "evt_a");
    let ids = [
        "evt_B", "evt_a", "evt_b", "evt__", "evt_Z", "evt_", "evt_ab", "evt-b", "EVT_b", "evt_1",
        "evt_é", "evt_z",
    ];
    let created = 1_736_942_400_000;
    for (i, first) in ids.iter().enumerate() {
        for (j, second) in ids.iter().enumerate().filter(|&(j, _)| j != i) {
            let object = order(&keys, &format!("{i} then {j}"));
            let (first, second) = (v(created, first), v(created, second));
            let expected = (&first).max(&second).clone();
            assert_eq!(
                record_all(&*store, &object, &[&first, &second]).await,
                Some(expected),
                "{first} then {second}"
            );
        }
    }
}

/// 50 different versions of one object recorded at once leave the newest.
pub(crate) async fn concurrent_records_keep_the_newest(
    open: impl AsyncFn(Duration) -> Arc<dyn FreshnessStore>, keys: Keys,
) {
    const RECORDS: usize = 50;
    let store = open(DEFAULT_FRESHNESS_RETENTION).await;
    let object = Arc::new(ObjectKey::new("subscription", keys.key("sub")));
    // Ten created times, so that ids break many ties; 13 is prime to 50, so
    // every id differs.
    let versions: Vec<Version> = (0..RECORDS)
        .map(|i| {
            let created = 1_736_942_400_000 + i64::try_from(i * 7 % 10).expect("small");
            v(created, &format!("evt_{:02}", i * 13 % RECORDS))
        })
        .collect();
    let newest = versions.iter().max().expect("versions").clone();

    let start = Arc::new(tokio::sync::Barrier::new(RECORDS));
    let tasks: Vec<_> = versions
        .into_iter()
        .map(|version| {
            let (store, object, start) =
                (Arc::clone(&store), Arc::clone(&object), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                store.record(&object, &version).await
            })
        })
        .collect();
    for task in tasks {
        if let Err(err) = task.await.expect("record task") {
            panic!("a concurrent record failed: {err}");
        }
    }
    assert_eq!(newest_of(store.newest(&object).await), Some(newest));
}

/// A record is forgotten when its retention ends, not before; then even an
/// older version is recorded.
pub(crate) async fn records_expire_after_their_retention(
    open: impl AsyncFn(Duration) -> Arc<dyn FreshnessStore>, keys: Keys,
) {
    let store = open(SHORT).await;
    let object = order(&keys, "ord");
    let newer = v(1_736_942_405_000, "evt_5");
    let older = v(1_736_942_401_000, "evt_1");
    let start = Instant::now();
    store.record(&object, &newer).await.expect("record");

    loop {
        let answer = newest_of(store.newest(&object).await);
        let at = start.elapsed();
        assert!(at < PATIENCE, "the record never expired");
        match answer {
            Some(held) => {
                assert_eq!(held, newer);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None => {
                assert!(at + CLOCK_SLACK >= SHORT, "forgotten after {at:?}");
                break;
            }
        }
    }
    assert_eq!(record_all(&*store, &object, &[&older]).await, Some(older));
}

/// Families, object ids and event ids longer than `MAX_KEY_LEN` bytes or
/// with a NUL character are refused alike, and nothing is recorded.
pub(crate) async fn out_of_range_input_is_refused(
    open: impl AsyncFn(Duration) -> Arc<dyn FreshnessStore>, keys: Keys,
) {
    let store = open(DEFAULT_FRESHNESS_RETENTION).await;
    let too_long = "x".repeat(MAX_KEY_LEN + 1);
    let fine = v(1, "evt_1");
    for object in [
        ObjectKey::new("order", too_long.clone()),
        ObjectKey::new(too_long.clone(), keys.key("ord")),
        order(&keys, "nul\0byte"),
        ObjectKey::new("or\0der", keys.key("ord")),
    ] {
        let read = store.newest(&object).await.expect_err("bad object");
        assert_eq!(read.kind(), StoreErrorKind::InvalidInput, "{read}");
        let write = store.record(&object, &fine).await.expect_err("bad object");
        assert_eq!(write.kind(), StoreErrorKind::InvalidInput, "{write}");
    }

    let object = order(&keys, "ord");
    for version in [v(1, &too_long), v(1, "evt\0")] {
        let err = store.record(&object, &version).await.expect_err("bad id");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    }
    assert_eq!(newest_of(store.newest(&object).await), None);
}
