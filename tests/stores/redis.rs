//! What only `RedisStore` has: its errors, timeout and the values it reads.

use std::time::Duration;

use clink_webhooks::idempotency::{
    Claim, IdempotencyStore, RedisStore, StoreErrorKind, DEFAULT_LEASE,
};

use crate::support::{in_flight, redis_store, server_url, Keys};

async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(server_url("REDIS_URL"))
        .expect("REDIS_URL parses")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection to REDIS_URL")
}

#[tokio::test]
async fn unreachable_server_is_unavailable_and_the_password_stays_secret() {
    // Nothing listens on port 1 of the loopback interface.
    let err = RedisStore::connect("redis://:hunter2-secret@127.0.0.1:1/")
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");

    let err = RedisStore::connect("redis://:hunter2-secret@[::1")
        .await
        .expect_err("not a URL");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test]
async fn a_stalled_server_times_out() {
    let keys = Keys::new("redis_timeout");
    let key = keys.key("stalled");
    let store = redis_store()
        .await
        .with_timeout(Duration::from_millis(100))
        .expect("valid timeout");
    // Load the script first so that the stalled call is the claim itself.
    store
        .claim(&keys.key("warm up"), DEFAULT_LEASE)
        .await
        .expect("claim");

    let mut raw = raw_connection().await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(400)
        .arg("WRITE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT PAUSE");
    let err = store.claim(&key, DEFAULT_LEASE).await.expect_err("stalled");
    assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");
    let () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT UNPAUSE");

    // The call reached the server before the client gave up, so the key is
    // claimed by a token nobody holds: it waits for its lease to end.
    in_flight(store.claim(&key, DEFAULT_LEASE).await);
}

#[tokio::test]
async fn values_the_store_did_not_write_are_protocol_errors() {
    let keys = Keys::new("redis_foreign");
    let mut raw = raw_connection().await;
    let foreign = keys.key("foreign");
    let endless = keys.key("claimed forever");
    let () = redis::cmd("SET")
        .arg(&foreign)
        .arg("something else")
        .arg("EX")
        .arg(60)
        .query_async(&mut raw)
        .await
        .expect("SET");
    let () = redis::cmd("SET")
        .arg(&endless)
        .arg("claimed:0123")
        .query_async(&mut raw)
        .await
        .expect("SET");

    let store = redis_store().await;
    for key in [&foreign, &endless] {
        let err = store
            .claim(key, DEFAULT_LEASE)
            .await
            .expect_err("foreign value");
        assert_eq!(err.kind(), StoreErrorKind::Protocol, "{err}");
    }
    let () = redis::cmd("DEL")
        .arg(&endless)
        .query_async(&mut raw)
        .await
        .expect("DEL");
    assert!(matches!(
        store.claim(&endless, DEFAULT_LEASE).await,
        Ok(Claim::Claimed(_))
    ));
}

#[tokio::test]
async fn a_zero_timeout_is_refused() {
    let err = redis_store()
        .await
        .with_timeout(Duration::ZERO)
        .expect_err("zero");
    assert!(err.to_string().contains("timeout"), "{err}");
}
