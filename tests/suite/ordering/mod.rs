//! Out-of-order delivery: for any arrival order, `skip_stale` leaves the newest
//! state applied, and without it every event runs once with stale ones flagged.
//!
//! The same properties hold with every freshness store: in memory for every
//! one of the 720 arrival orders of six events (two pairs of which share a
//! `created` time, so that the event id breaks the tie), and with their
//! features `RedisStore` (needs `REDIS_URL`) and `PostgresStore` (needs
//! `DATABASE_URL`) on real servers for a sample of them. A test whose server
//! URL is missing fails; it never passes without its server. Tests on a
//! server hold it [shared](crate::support::servers::shared_blocking).

mod outages;
mod properties;

use properties::{check_arrival_order, check_failed_handler_not_recorded, Mode};
#[cfg(any(feature = "redis", feature = "postgres"))]
use proptest::prelude::*;

/// Arrival orders of six events about one object, drawn at random.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn arrival_orders() -> impl Strategy<Value = Vec<usize>> {
    Just((0..6usize).collect::<Vec<_>>()).prop_shuffle()
}

/// Instantiates the properties for a store on a server; `$open` gives the
/// store, `$cases` is how many arrival orders each property tries, and
/// `$servers` is `servers`: the tests hold the servers shared.
#[cfg(any(feature = "redis", feature = "postgres"))]
macro_rules! properties {
    ($store:ident, $open:path, $cases:expr, $servers:ident) => {
        mod $store {
            use super::*;

            /// A sample of arrival orders, drawn from the run's seed.
            mod seeded {
                use super::*;

                proptest! {
                    #![proptest_config(crate::support::seed::config_with_cases($cases))]

                    #[test]
                    fn skip_stale_applies_the_newest_state(order in arrival_orders()) {
                        properties!(@run $servers, check_arrival_order($open(), &order, Mode::SkipStale));
                    }

                    #[test]
                    fn without_skip_every_event_runs_once_and_stale_ones_are_flagged(order in arrival_orders()) {
                        properties!(@run $servers, check_arrival_order($open(), &order, Mode::FlagOnly));
                    }
                }
            }

            #[test]
            fn a_failed_handler_does_not_record_its_version() {
                properties!(@run $servers, check_failed_handler_not_recorded($open()));
            }
        }
    };
    (@run servers, $check:expr) => {
        let _servers = crate::support::servers::shared_blocking();
        $check
    };
}

/// Every arrival order of six events, each once.
fn every_arrival_order() -> Vec<Vec<usize>> {
    fn extend(prefix: &mut Vec<usize>, orders: &mut Vec<Vec<usize>>) {
        if prefix.len() == 6 {
            orders.push(prefix.clone());
            return;
        }
        for n in 0..6 {
            if !prefix.contains(&n) {
                prefix.push(n);
                extend(prefix, orders);
                prefix.pop();
            }
        }
    }
    let mut orders = Vec::new();
    extend(&mut Vec::new(), &mut orders);
    assert_eq!(orders.len(), 720);
    orders
}

/// In memory, where a case is cheap, every arrival order rather than a sample.
mod memory {
    use super::*;

    #[test]
    fn skip_stale_applies_the_newest_state_in_every_arrival_order() {
        for order in every_arrival_order() {
            check_arrival_order(properties::memory(), &order, Mode::SkipStale);
        }
    }

    #[test]
    fn without_skip_every_event_runs_once_and_stale_ones_are_flagged_in_every_arrival_order() {
        for order in every_arrival_order() {
            check_arrival_order(properties::memory(), &order, Mode::FlagOnly);
        }
    }

    #[test]
    fn a_failed_handler_does_not_record_its_version() {
        check_failed_handler_not_recorded(properties::memory());
    }
}

#[cfg(feature = "redis")]
properties!(redis, properties::redis, 24, servers);

#[cfg(feature = "postgres")]
properties!(postgres, properties::postgres, 24, servers);

/// An object id no store can hold is handled untracked, not refused: a retry
/// would fail the same way forever.
#[tokio::test]
async fn an_untrackable_object_id_is_handled_untracked() {
    use clink_webhooks::events::Freshness;
    use clink_webhooks::testing::SignedRequest;
    use clink_webhooks::MemoryStore;
    use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};
    use std::sync::{Arc, Mutex};
    use tower::{Layer, ServiceExt};

    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let router = EventRouter::new()
        .ordering(MemoryStore::new())
        .skip_stale()
        .on::<events::OrderCreated, _>(move |event| {
            sink.lock().unwrap().push(event.freshness().clone());
            async { Ok::<_, std::io::Error>(()) }
        });
    let service = ClinkLayer::new(Verifier::new("whsec_o").unwrap()).layer(router);
    let long_id = "o".repeat(2000);
    for (n, id) in [long_id.as_str(), "ord_\\u0000"].into_iter().enumerate() {
        let body = format!(
            r#"{{"id":"evt_untracked_{n}","type":"order.created","created":1736942400000,"data":{{"orderId":"{id}"}}}}"#
        );
        let request =
            SignedRequest::new("whsec_o", body).build::<http_body_util::Full<bytes::Bytes>>();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [Freshness::Untracked, Freshness::Untracked]
    );
}

/// A memory freshness store that is full refuses a new object's version
/// after its handler ran: the delivery is still answered as handled (a
/// retry would run the handler again for nothing), and later events about
/// that object, with no version known, are not found stale; an object it
/// holds still is.
#[tokio::test]
async fn a_full_memory_freshness_store_answers_handled_and_leaves_new_objects_untold() {
    use clink_webhooks::events::Freshness;
    use clink_webhooks::testing::SignedRequest;
    use clink_webhooks::MemoryStore;
    use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};
    use std::sync::{Arc, Mutex};
    use tower::{Layer, ServiceExt};

    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let router = EventRouter::new()
        .ordering(MemoryStore::new().with_freshness_capacity(1).unwrap())
        .on::<events::OrderCreated, _>(move |event| {
            let stale = matches!(event.freshness(), Freshness::Stale { .. });
            sink.lock().unwrap().push((event.id, stale));
            async { Ok::<_, std::io::Error>(()) }
        });
    let service = ClinkLayer::new(Verifier::new("whsec_o").unwrap()).layer(router);
    for (id, order, created) in [
        ("evt_a_new", "ord_a", 2_000),
        ("evt_b_new", "ord_b", 2_000),
        ("evt_b_old", "ord_b", 1_000),
        ("evt_a_old", "ord_a", 1_000),
    ] {
        let body = format!(
            r#"{{"id":"{id}","type":"order.created","created":{created},"data":{{"orderId":"{order}"}}}}"#
        );
        let request =
            SignedRequest::new("whsec_o", body).build::<http_body_util::Full<bytes::Bytes>>();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200, "{id}");
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("evt_a_new".to_owned(), false),
            ("evt_b_new".to_owned(), false),
            // No version of ord_b was kept: not found stale.
            ("evt_b_old".to_owned(), false),
            ("evt_a_old".to_owned(), true),
        ]
    );
}

/// A freshness store whose `newest` answers at once (nothing recorded) and
/// whose `record` never answers, counting the records begun.
struct NeverRecords(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl clink_webhooks::store::FreshnessStore for NeverRecords {
    fn newest<'a>(
        &'a self, _: &'a clink_webhooks::events::ObjectKey,
    ) -> clink_webhooks::BoxFuture<
        'a,
        Result<Option<clink_webhooks::events::Version>, clink_webhooks::store::StoreError>,
    > {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn record<'a>(
        &'a self, _: &'a clink_webhooks::events::ObjectKey, _: &'a clink_webhooks::events::Version,
    ) -> clink_webhooks::BoxFuture<'a, Result<(), clink_webhooks::store::StoreError>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

/// A router over `store` counting its handler's runs.
fn counted_router(
    store: NeverRecords,
) -> (
    clink_webhooks::EventRouter,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&runs);
    let router = clink_webhooks::EventRouter::new()
        .ordering(store)
        .on::<clink_webhooks::events::OrderCreated, _>(move |_event| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<_, std::io::Error>(()) }
    });
    (router, runs)
}

/// A handled event whose version its freshness store never records is
/// answered as handled, its claim completed, whichever ends first: the
/// bound on the record (a long lease) or the handler's deadline (a short
/// one, reached while recording); through `route` and with the router as
/// the layer's inner service. Before, the deadline turned the handled
/// event into a timeout, and every retry ran its handler again (on the
/// tower path until the router was told the layer's deadline).
#[tokio::test]
async fn a_handled_event_whose_version_never_records_is_answered_handled() {
    use clink_webhooks::{ClinkLayer, Verifier};
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use tower::Layer;

    // 30 s: the record's own bound (1 s) ends first. 1 s: the handler's
    // deadline (a tenth less) ends first, while the record waits.
    for lease in [Duration::from_secs(30), Duration::from_secs(1)] {
        for tower_path in [false, true] {
            let what = format!("lease {lease:?}, tower path {tower_path}");
            let records = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (router, runs) = counted_router(NeverRecords(std::sync::Arc::clone(&records)));
            let layer = ClinkLayer::new(Verifier::new("whsec_o").unwrap())
                .lease(lease)
                .unwrap();
            if tower_path {
                deliver_twice(layer.layer(router), &what).await;
            } else {
                deliver_twice(layer.route(router), &what).await;
            }
            assert_eq!(runs.load(Ordering::SeqCst), 1, "{what}");
            assert_eq!(records.load(Ordering::SeqCst), 1, "{what}");
        }
    }
}

/// Delivers one event twice through `service`: handled, then a duplicate.
async fn deliver_twice<S, B>(service: S, what: &str)
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<B>,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    use clink_webhooks::testing::SignedRequest;
    use clink_webhooks::Outcome;
    use tower::ServiceExt;

    let body =
        r#"{"id":"evt_hangs","type":"order.created","created":1000,"data":{"orderId":"ord_h"}}"#;
    for expected in [Outcome::Handled, Outcome::Duplicate] {
        let request =
            SignedRequest::new("whsec_o", body).build::<http_body_util::Full<bytes::Bytes>>();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&expected), "{what}");
        assert_eq!(response.status(), 200, "{what}");
    }
}

/// The same for inbox workers: the event is done after one run, not
/// retried.
#[tokio::test]
async fn an_inbox_event_whose_version_never_records_is_done_after_one_run() {
    use clink_webhooks::inbox::Workers;
    use clink_webhooks::store::{Inbox, InboxStatus, MemoryInbox, NewEvent};
    use clink_webhooks::Timestamp;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    for lease in [Duration::from_secs(30), Duration::from_secs(1)] {
        let records = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (router, runs) = counted_router(NeverRecords(Arc::clone(&records)));
        let inbox = Arc::new(MemoryInbox::new());
        let pool = Workers::new(Arc::clone(&inbox), router)
            .reorder_window(Duration::ZERO)
            .unwrap()
            .lease(lease)
            .unwrap()
            .spawn();
        let body = r#"{"id":"evt_hangs","type":"order.created","created":1000,"data":{"orderId":"ord_h"}}"#;
        let now = Timestamp::now();
        let event = NewEvent::new(
            None,
            "evt_hangs".into(),
            "order.created".into(),
            None,
            None,
            now,
            now,
            body.into(),
        );
        inbox.insert(&event).await.unwrap();
        pool.drained(Duration::from_secs(120)).await.unwrap();
        let kept = inbox
            .list(&Default::default(), 10)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(kept.status, InboxStatus::Done, "{lease:?}");
        assert_eq!(kept.attempts, 1, "{lease:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{lease:?}");
        assert_eq!(records.load(Ordering::SeqCst), 1, "{lease:?}");
        pool.shutdown(Duration::from_secs(1)).await;
    }
}

/// Freshness records are kept per account: the same order id under two
/// accounts is two objects, so a newer event handled under one account
/// leaves an older event under the other fresh (and run, with
/// `skip_stale`), while under the same account it is stale.
#[tokio::test]
async fn freshness_is_kept_apart_by_account() {
    use clink_webhooks::accounts::{AccountFrom, KeyMap};
    use clink_webhooks::events::Freshness;
    use clink_webhooks::testing::SignedRequest;
    use clink_webhooks::MemoryStore;
    use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};
    use std::sync::{Arc, Mutex};
    use tower::{Layer, ServiceExt};

    type Seen = Arc<Mutex<Vec<(String, String, Freshness)>>>;
    let seen: Seen = Arc::default();
    let note = |seen: &Seen| {
        let sink = Arc::clone(seen);
        move |event: clink_webhooks::Event<clink_webhooks::data::Order>| {
            let account = event.account().unwrap_or("").to_owned();
            sink.lock()
                .unwrap()
                .push((account, event.id.clone(), event.freshness().clone()));
            async { Ok::<_, std::io::Error>(()) }
        }
    };
    let router = EventRouter::new()
        .ordering(MemoryStore::new())
        .skip_stale()
        .on::<events::OrderSucceeded, _>(note(&seen))
        .on::<events::OrderCreated, _>(note(&seen));
    let keys = KeyMap::new();
    keys.insert("acct_a", Verifier::new("whsec_a").unwrap())
        .unwrap();
    keys.insert("acct_b", Verifier::new("whsec_b").unwrap())
        .unwrap();
    let service = ClinkLayer::with_key_source(AccountFrom::LastPathSegment, keys).layer(router);
    let deliver = async |account: &str, id: &str, event_type: &str, created: u64| {
        let body = format!(
            r#"{{"id":"{id}","type":"{event_type}","created":{created},"data":{{"orderId":"ord_shared"}}}}"#
        );
        let request = SignedRequest::new(format!("whsec_{}", &account[5..]), body)
            .uri(format!("/webhooks/clink/{account}"))
            .build::<http_body_util::Full<bytes::Bytes>>();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200, "{account} {id}");
    };
    deliver("acct_a", "evt_a_new", "order.succeeded", 1_736_942_460_000).await;
    deliver("acct_b", "evt_b_old", "order.created", 1_736_942_400_000).await;
    deliver("acct_a", "evt_a_old", "order.created", 1_736_942_400_000).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (
                "acct_a".to_owned(),
                "evt_a_new".to_owned(),
                Freshness::Fresh
            ),
            (
                "acct_b".to_owned(),
                "evt_b_old".to_owned(),
                Freshness::Fresh
            ),
        ],
        "the older event under acct_a was skipped as stale, the one under acct_b ran fresh"
    );
}
