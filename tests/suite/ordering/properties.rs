//! The ordering property, for any [`FreshnessStore`], and the stores to
//! check it with.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use clink_webhooks::events::Freshness;
use clink_webhooks::store::FreshnessStore;
use clink_webhooks::testing::SignedRequest;
use clink_webhooks::MemoryStore;
use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

const SECRET: &str = "whsec_ordering";

#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    SkipStale,
    FlagOnly,
}

/// A subscription id no other case uses, so one store serves every case.
fn fresh_object_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "sub_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn request(body: &str) -> http::Request<Full<Bytes>> {
    SignedRequest::new(SECRET, body.to_owned()).build()
}

/// When each of the six events is created, in seconds after a fixed
/// instant. Events 1 and 2, and 3 and 4, share a `created` time: between
/// them the event id decides (byte-wise, `evt_..._1` before `evt_..._2`), so
/// the events' versions still run in the order of their numbers.
const CREATED_SECONDS: [u64; 6] = [0, 1, 1, 2, 2, 3];

/// Event `n` about `object`, created [`CREATED_SECONDS`]`[n]` after a fixed
/// instant; its version is the `n`-th of the six.
fn event_body(object: &str, n: usize) -> String {
    format!(
        r#"{{"id":"evt_{object}_{n}","type":"subscription.updated.renewed","created":{},"data":{{"subscriptionId":"{object}","elapsedCycles":{n}}}}}"#,
        1_736_942_400_000u64 + CREATED_SECONDS[n] * 1000
    )
}

/// The runtime every check runs on. It outlives the tests, so the networked
/// stores connected on it keep their connections' tasks across cases.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    });
    &RUNTIME
}

/// A fresh in-memory store.
pub(crate) fn memory() -> Arc<dyn FreshnessStore> {
    Arc::new(MemoryStore::new())
}

/// The store `connect` makes on the shared runtime, connected once and shared
/// by every case (each case uses objects of its own), until a test that held
/// the servers exclusively may have restarted its server. Without its server
/// URL every call fails and says what to set.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn shared<S: FreshnessStore, F: std::future::Future<Output = S>>(
    cache: &'static Mutex<Option<(u64, Arc<dyn FreshnessStore>)>>, connect: impl FnOnce() -> F,
) -> Arc<dyn FreshnessStore> {
    let generation = crate::support::servers::generation();
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match &*cache {
        Some((connected_in, store)) if *connected_in == generation => Arc::clone(store),
        _ => {
            let store: Arc<dyn FreshnessStore> = Arc::new(runtime().block_on(connect()));
            *cache = Some((generation, Arc::clone(&store)));
            store
        }
    }
}

/// The `RedisStore` on `REDIS_URL`.
#[cfg(feature = "redis")]
pub(crate) fn redis() -> Arc<dyn FreshnessStore> {
    static STORE: Mutex<Option<(u64, Arc<dyn FreshnessStore>)>> = Mutex::new(None);
    shared(&STORE, crate::support::stores::redis_store)
}

/// The `PostgresStore` on `DATABASE_URL`.
#[cfg(feature = "postgres")]
pub(crate) fn postgres() -> Arc<dyn FreshnessStore> {
    static STORE: Mutex<Option<(u64, Arc<dyn FreshnessStore>)>> = Mutex::new(None);
    shared(&STORE, crate::support::stores::postgres_store)
}

/// Delivers events `0..order.len()` about one object in the arrival `order`
/// and checks what the handler saw: event `n` is stale exactly when an event
/// with a higher number (a newer `created` time, or the same one and a
/// greater id) arrived before it.
pub(crate) fn check_arrival_order(store: Arc<dyn FreshnessStore>, order: &[usize], mode: Mode) {
    let object = fresh_object_id();
    // (event number, was it flagged stale) per handler run, and the state applied.
    let runs = Arc::new(Mutex::new(Vec::<(usize, bool)>::new()));
    let state = Arc::new(Mutex::new(None::<usize>));
    let (runs_in, state_in) = (Arc::clone(&runs), Arc::clone(&state));
    let mut router = EventRouter::new()
        .ordering(store)
        .on::<events::SubscriptionRenewed, _>(move |event| {
            let n = usize::try_from(event.data.elapsed_cycles.unwrap()).unwrap();
            let stale = event.freshness().is_stale();
            assert_ne!(*event.freshness(), Freshness::Untracked);
            runs_in.lock().unwrap().push((n, stale));
            if !stale {
                *state_in.lock().unwrap() = Some(n);
            }
            async { Ok::<_, std::io::Error>(()) }
        });
    if matches!(mode, Mode::SkipStale) {
        router = router.skip_stale();
    }
    let service = ClinkLayer::new(Verifier::new(SECRET).unwrap()).layer(router);

    runtime().block_on(async {
        for &n in order {
            let response = service
                .clone()
                .oneshot(request(&event_body(&object, n)))
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "event {n}");
        }
    });

    let newest = order.len() - 1;
    let runs = runs.lock().unwrap().clone();
    // Event n is stale exactly when a newer one arrived before it.
    let expected_stale = |position: usize| {
        order[..position]
            .iter()
            .any(|&earlier| earlier > order[position])
    };
    match mode {
        Mode::SkipStale => {
            assert_eq!(
                *state.lock().unwrap(),
                Some(newest),
                "arrival order {order:?}"
            );
            let expected: Vec<_> = (0..order.len())
                .filter(|&p| !expected_stale(p))
                .map(|p| (order[p], false))
                .collect();
            assert_eq!(
                runs, expected,
                "only fresh events run, arrival order {order:?}"
            );
        }
        Mode::FlagOnly => {
            let expected: Vec<_> = (0..order.len())
                .map(|p| (order[p], expected_stale(p)))
                .collect();
            assert_eq!(
                runs, expected,
                "every event once, stale ones flagged, arrival order {order:?}"
            );
        }
    }
}

/// A handler that fails leaves no trace: the older event after it is still fresh.
pub(crate) fn check_failed_handler_not_recorded(store: Arc<dyn FreshnessStore>) {
    let object = fresh_object_id();
    let attempts = Arc::new(AtomicUsize::new(0));
    let flags = Arc::new(Mutex::new(Vec::new()));
    let (attempts_in, flags_in) = (Arc::clone(&attempts), Arc::clone(&flags));
    let router = EventRouter::new()
        .ordering(store)
        .on::<events::SubscriptionRenewed, _>(move |event| {
            let first = attempts_in.fetch_add(1, Ordering::SeqCst) == 0;
            flags_in
                .lock()
                .unwrap()
                .push((event.id.clone(), event.freshness().clone()));
            async move {
                if first {
                    Err("fails once")
                } else {
                    Ok(())
                }
            }
        });
    let service = ClinkLayer::new(Verifier::new(SECRET).unwrap()).layer(router);
    runtime().block_on(async {
        let newer = event_body(&object, 5);
        let older = event_body(&object, 1);
        assert_eq!(
            service
                .clone()
                .oneshot(request(&newer))
                .await
                .unwrap()
                .status(),
            500
        );
        assert_eq!(
            service
                .clone()
                .oneshot(request(&older))
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            service
                .clone()
                .oneshot(request(&newer))
                .await
                .unwrap()
                .status(),
            200
        );
    });
    let flags = flags.lock().unwrap();
    assert_eq!(flags.len(), 3);
    assert!(
        flags.iter().all(|(_, f)| *f == Freshness::Fresh),
        "{flags:?}"
    );
}
