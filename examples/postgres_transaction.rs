//! Exactly-once effects with PostgreSQL: the business write and the
//! "event handled" mark commit in one transaction, or neither does.
//!
//! ```text
//! DATABASE_URL=postgres://user@localhost/db cargo run --example postgres_transaction --features postgres
//! ```
//!
//! The handler below records a payment for an `order.succeeded` event. It
//! claims the event id inside its own transaction, writes the payment, marks
//! the event completed, and commits. A crash or error anywhere before the
//! commit rolls back both, so Clink's retry runs the handler again; a retry
//! after the commit finds the event completed and writes nothing.

use std::error::Error;
use std::time::{Duration, SystemTime};

use clink_webhooks::store::{Claim, PostgresStore, DEFAULT_LEASE, DEFAULT_RETENTION};
use deadpool_postgres::{Manager, Pool, Runtime};
use tokio_postgres::NoTls;

/// What became of one delivery, and the HTTP status a receiver would answer.
enum Outcome {
    /// The payment was written and the event marked completed: 200.
    Recorded,
    /// An earlier delivery already recorded it: 200, nothing written.
    AlreadyHandled,
    /// Another delivery is recording it right now: 409, retry after this long.
    InFlight(Duration),
}

impl Outcome {
    /// The answer a webhook receiver would give Clink.
    fn answer(&self) -> String {
        match self {
            Self::Recorded => "200, payment recorded".to_owned(),
            Self::AlreadyHandled => "200, already handled: nothing written".to_owned(),
            Self::InFlight(retry_after) => format!("409, retry after {retry_after:?}"),
        }
    }
}

/// Why a delivery failed, for people: the database's own message when there is one.
fn reason(err: &(dyn Error + 'static)) -> String {
    match err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|err| err.as_db_error())
    {
        Some(db) => db.message().to_owned(),
        None => err.to_string(),
    }
}

/// Handles one `order.succeeded` delivery.
async fn record_payment(
    pool: &Pool, store: &PostgresStore, event_id: &str, order_id: &str, amount_cents: i64,
) -> Result<Outcome, Box<dyn Error>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let key = format!("example:live:{event_id}");

    let token = match store.claim_in(&tx, &key, DEFAULT_LEASE).await? {
        Claim::Claimed(token) => token,
        // Dropping `tx` rolls it back: nothing was written.
        Claim::Completed => return Ok(Outcome::AlreadyHandled),
        Claim::InFlight { retry_after } => return Ok(Outcome::InFlight(retry_after)),
    };

    // The business write. If it fails, `?` drops `tx`, which rolls back the
    // claim with it, and the next retry starts afresh.
    tx.execute(
        "INSERT INTO example_payments (order_id, amount_cents) VALUES ($1, $2)",
        &[&order_id, &amount_cents],
    )
    .await?;

    store
        .complete_in(&tx, &key, &token, DEFAULT_RETENTION)
        .await?;
    tx.commit().await?;
    Ok(Outcome::Recorded)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "DATABASE_URL is not set. Point it at a PostgreSQL database, or run \
             `scripts/with-services cargo run --example postgres_transaction --features postgres`."
        );
        std::process::exit(2);
    };
    let manager = Manager::new(url.parse::<tokio_postgres::Config>()?, NoTls);
    let pool = Pool::builder(manager)
        .max_size(4)
        .runtime(Runtime::Tokio1)
        .build()?;

    let store = PostgresStore::new(pool.clone());
    store.migrate().await?;
    pool.get()
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS example_payments (
                order_id     text   PRIMARY KEY,
                amount_cents bigint NOT NULL CHECK (amount_cents > 0)
            )",
        )
        .await?;

    // Fresh ids per run, so that every run shows the first delivery too.
    let run = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_micros();
    let event = format!("evt_{run}");
    let order = format!("ord_{run}");

    let first = record_payment(&pool, &store, &event, &order, 4200).await?;
    println!("first delivery:  {}", first.answer());
    let retry = record_payment(&pool, &store, &event, &order, 4200).await?;
    println!("Clink's retry:   {}", retry.answer());

    // A handler that fails after claiming (the CHECK constraint refuses the
    // amount): the whole transaction rolls back, claim included...
    let broken = format!("evt_{run}_broken");
    let broken_order = format!("ord_{run}_broken");
    let failed = record_payment(&pool, &store, &broken, &broken_order, -1).await;
    let failed = failed.map_or_else(|err| format!("500, {}", reason(&*err)), |o| o.answer());
    println!("failing handler: {failed}");
    // ...so the retry, with the bug fixed, runs it again.
    let fixed = record_payment(&pool, &store, &broken, &broken_order, 1999).await?;
    println!("fixed retry:     {}", fixed.answer());

    let payments: i64 = pool
        .get()
        .await?
        .query_one(
            "SELECT count(*) FROM example_payments WHERE order_id = ANY($1)",
            &[&vec![order, broken_order]],
        )
        .await?
        .get(0);
    println!("payments written: {payments} (one per order)");
    Ok(())
}
