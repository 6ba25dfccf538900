//! Exactly-once effects with PostgreSQL: the business write and the
//! "event handled" mark commit in one transaction, or neither does.
//!
//! ```text
//! DATABASE_URL=postgres://user@localhost/db cargo run --example postgres_transaction --features postgres
//! ```
//!
//! The handler below records a payment for an `order.succeeded` event. It
//! claims the event id inside its own transaction, writes the payment, marks
//! the event completed, and commits only if that mark was written. A crash
//! or error anywhere before the commit rolls back both, so Clink's retry
//! runs the handler again; a retry after the commit finds the event
//! completed and writes nothing. A write that outlasts the claim's lease is
//! rolled back too (the mark is not written once the lease ended), and a
//! second delivery of the event while the first is still in its
//! transaction waits for the row at most the store's timeout, then is
//! answered `503` so that Clink retries it later.
//!
//! A second event about the same order, under an event id of its own,
//! finds the order's payment recorded: when it says the same amount,
//! nothing is written, and the event is marked handled and acknowledged
//! rather than failing on the table's key at every retry; when it says
//! another, it is refused (`500`), for a person to look at.
//!
//! Built with `postgres-tls`, it reaches PostgreSQL over TLS, the server's
//! certificate verified, when `DATABASE_URL` has `sslmode=require` (libpq's
//! `verify-full` and `verify-ca` are read the same) or
//! `CLINK_DATABASE_CA_FILE` names the CA that signed it; without the
//! feature, a URL that asks for TLS is refused rather than sent plain. A
//! plain connection to another machine is made with a warning on stderr:
//!
//! ```text
//! DATABASE_URL='postgres://user@db.example/db?sslmode=require' cargo run --example postgres_transaction --features postgres-tls
//! ```
//!
//! In a receiver, call `record_payment` from the typed handler
//! (`EventRouter::on::<events::OrderSucceeded, _>`) with the event's
//! account and id, and return an error for every outcome but `Recorded`,
//! `OrderAlreadyPaid` and `AlreadyHandled`: the delivery is answered `500`,
//! and Clink retries it. Another event about an order already paid is
//! `OrderAlreadyPaid` only when it says the same amount; another amount is
//! an error, for a person to look at.
//! The key is the handler's own (`payments:` here), never the layer's claim
//! key: the layer's claim is live while its handler runs, so claiming that
//! key in here would always find it in flight.

use std::error::Error;
use std::time::{Duration, SystemTime};

use clink_webhooks::store::{
    Claim, PostgresStore, Settle, StoreErrorKind, DEFAULT_LEASE, DEFAULT_RETENTION,
};
use deadpool_postgres::{Manager, Pool, Runtime, Transaction};

/// What became of one delivery, and the HTTP status a receiver would answer.
enum Outcome {
    /// The payment was written and the event marked completed: 200.
    Recorded,
    /// The order's payment was already recorded, for the same amount, by
    /// another event about it: nothing written, the event marked completed:
    /// 200.
    OrderAlreadyPaid,
    /// An earlier delivery already recorded it: 200, nothing written.
    AlreadyHandled,
    /// A claim of this key made outside such a transaction is still live
    /// (one made inside is never committed unfinished): 409, retry after
    /// this long.
    InFlight(Duration),
    /// Another delivery's transaction holds the event's row, and the store's
    /// timeout passed: 503, nothing written; Clink retries later.
    Busy,
    /// The write took longer than the claim's lease, so the completed mark
    /// was not written: rolled back, 503; Clink's retry runs it again.
    TooSlow,
}

impl Outcome {
    /// The answer a webhook receiver would give Clink.
    fn answer(&self) -> String {
        match self {
            Self::Recorded => "200, payment recorded".to_owned(),
            Self::OrderAlreadyPaid => {
                "200, the order's payment was already recorded: nothing written".to_owned()
            }
            Self::AlreadyHandled => "200, already handled: nothing written".to_owned(),
            Self::InFlight(retry_after) => format!("409, retry after {retry_after:?}"),
            Self::Busy => "503, another delivery holds the event: nothing written".to_owned(),
            Self::TooSlow => "503, the write outlasted its lease: rolled back".to_owned(),
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

/// Handles one `order.succeeded` delivery of `account` (`""` for an
/// event of no account), its claim held for `lease`.
async fn record_payment(
    pool: &Pool, store: &PostgresStore, account: &str, event_id: &str, order_id: &str,
    amount_cents: i64, lease: Duration,
) -> Result<Outcome, Box<dyn Error>> {
    // The handler's own key, with the account: the same event id under two
    // accounts is two events.
    let key = format!("payments:{account}:{event_id}");
    let mut inserted = 0;
    let outcome = once(pool, store, &key, lease, async |tx: &Transaction<'_>| {
        // An order is paid once: another event about it (a new event id,
        // so its claim is its own) finds the payment there. A plain INSERT
        // would fail on the key at every retry, and the event would never
        // be acknowledged; this one writes nothing, and the event is
        // completed as handled.
        inserted = tx
            .execute(
                "INSERT INTO example_payments (order_id, amount_cents) VALUES ($1, $2) \
                 ON CONFLICT (order_id) DO NOTHING",
                &[&order_id, &amount_cents],
            )
            .await?;
        if inserted == 0 {
            // ...unless it says another amount: never acknowledged as the
            // same payment. Refused (500, rolled back), it stays for a
            // person to look at, retried and then dead in an inbox.
            let recorded: i64 = tx
                .query_one(
                    "SELECT amount_cents FROM example_payments WHERE order_id = $1 FOR SHARE",
                    &[&order_id],
                )
                .await?
                .get(0);
            if recorded != amount_cents {
                return Err(format!(
                    "order {order_id:?} is recorded as paid {recorded} cents, and this event \
                     says {amount_cents}: not acknowledged"
                )
                .into());
            }
        }
        Ok(())
    })
    .await?;
    Ok(match outcome {
        Outcome::Recorded if inserted == 0 => Outcome::OrderAlreadyPaid,
        outcome => outcome,
    })
}

/// Runs `write` at most once for `key`: in one transaction with the claim
/// of `key` (held for `lease`) and its completed mark, committed only if
/// that mark was written, and rolled back otherwise.
async fn once(
    pool: &Pool, store: &PostgresStore, key: &str, lease: Duration,
    write: impl AsyncFnOnce(&Transaction<'_>) -> Result<(), Box<dyn Error>>,
) -> Result<Outcome, Box<dyn Error>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let token = match store.claim_in(&tx, key, lease).await {
        Ok(Claim::Claimed(token)) => token,
        Ok(Claim::Completed) => {
            tx.rollback().await?;
            return Ok(Outcome::AlreadyHandled);
        }
        Ok(Claim::InFlight { retry_after }) => {
            tx.rollback().await?;
            return Ok(Outcome::InFlight(retry_after));
        }
        Err(err) => {
            // The transaction is aborted. Most timeouts are the server
            // ending the wait for the row, but one the client saw (a
            // stalled connection) may leave the statement running: this
            // connection is closed rather than handed back to the pool.
            drop(tx);
            drop(deadpool_postgres::Object::take(client));
            return if err.kind() == StoreErrorKind::Timeout {
                Ok(Outcome::Busy)
            } else {
                Err(err.into())
            };
        }
    };

    // The business write, then the completed mark: committed only if the
    // mark was written. Once the lease has ended it is not, and a commit
    // would keep the write beside a claim that Clink's retry takes over,
    // making the write a second time.
    let written = async {
        write(&tx).await?;
        let settled = store
            .complete_in(&tx, key, &token, DEFAULT_RETENTION)
            .await?;
        Ok::<_, Box<dyn Error>>(settled)
    }
    .await;
    match written {
        Ok(Settle::Applied) => {
            tx.commit().await?;
            Ok(Outcome::Recorded)
        }
        Ok(Settle::LeaseLost) => {
            tx.rollback().await?;
            Ok(Outcome::TooSlow)
        }
        Err(err) => {
            // Nothing was written, the claim with it: the retry starts
            // afresh. The transaction is rolled back as it is dropped: a
            // rollback that fails (the connection broke) must not replace
            // the reason the write was refused.
            drop(tx);
            Err(err)
        }
    }
}

/// `DATABASE_URL` as `store::postgres_config` reads it: as the PostgreSQL
/// client does, with libpq's
/// `sslmode=verify-full` and `sslmode=verify-ca`, which the client refuses,
/// read as `sslmode=require`: TLS here always verifies the server's
/// certificate and the host it names ([`connect`]). Only a setting of the
/// URL's query, or a whole `key=value` word, is read so: never the same
/// text in a password. The client's own error is not shown: it could quote
/// the password.
fn postgres_config(url: &str) -> Result<tokio_postgres::Config, String> {
    clink_webhooks::store::postgres_config(url).map_err(|_| {
        "DATABASE_URL is not a valid PostgreSQL connection string: \
         postgres://user:password@host:port/database?sslmode=require, or key=value settings"
            .to_owned()
    })
}

/// The pool for `config`, and the store on it, which sends the cancel of a
/// statement that ran out of time the way the pool connects: over TLS, the
/// server's certificate verified, when `DATABASE_URL` says `sslmode=require`
/// or `CLINK_DATABASE_CA_FILE` names a CA (built with `postgres-tls`), plain
/// otherwise (and refused then if TLS was asked for: a connection string
/// that asks for it is not sent in the clear). A plain connection to
/// another machine is made with a warning on stderr.
fn connect(
    #[cfg_attr(not(feature = "postgres-tls"), allow(unused_mut))]
    mut config: tokio_postgres::Config,
) -> Result<(Pool, PostgresStore), Box<dyn Error>> {
    let ca_file = std::env::var_os("CLINK_DATABASE_CA_FILE")
        .filter(|path| !path.is_empty())
        .map(std::path::PathBuf::from);
    let pool = |manager| {
        Pool::builder(manager)
            .max_size(4)
            .runtime(Runtime::Tokio1)
            .build()
    };
    #[cfg(feature = "postgres-tls")]
    if let Some(tls) = clink_webhooks::store::postgres_tls(&mut config, ca_file.as_deref())? {
        let pool = pool(Manager::new(config, tls.clone()))?;
        let store = PostgresStore::new(pool.clone()).cancel_with(tls);
        return Ok((pool, store));
    }
    #[cfg(not(feature = "postgres-tls"))]
    if ca_file.is_some() || config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(
            "TLS to PostgreSQL (sslmode=require, CLINK_DATABASE_CA_FILE) needs \
                    --features postgres-tls"
                .into(),
        );
    }
    if !clink_webhooks::store::postgres_on_this_machine(&config) {
        let how = if cfg!(feature = "postgres-tls") {
            "add sslmode=require to DATABASE_URL (and CLINK_DATABASE_CA_FILE for a private CA)"
        } else {
            "build with --features postgres-tls and add sslmode=require to DATABASE_URL"
        };
        eprintln!(
            "warning: the database in DATABASE_URL is on another machine and is reached \
             without TLS: what is stored there crosses the network unencrypted; {how}"
        );
    }
    let pool = pool(Manager::new(config, tokio_postgres::NoTls))?;
    Ok((pool.clone(), PostgresStore::new(pool)))
}

/// The account of this example's events.
const ACCOUNT: &str = "acct_example";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "DATABASE_URL is not set. Point it at a PostgreSQL database, or run \
             `scripts/with-services cargo run --example postgres_transaction --features postgres`."
        );
        std::process::exit(2);
    };
    let (pool, store) = connect(postgres_config(&url)?)?;
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

    let first = record_payment(&pool, &store, ACCOUNT, &event, &order, 4200, DEFAULT_LEASE).await?;
    println!("first delivery:  {}", first.answer());
    let retry = record_payment(&pool, &store, ACCOUNT, &event, &order, 4200, DEFAULT_LEASE).await?;
    println!("Clink's retry:   {}", retry.answer());
    // Another event about the same order, under an id of its own: the
    // order's payment is there, so nothing is written, and the event is
    // acknowledged rather than refused at every retry.
    let same_order = format!("evt_{run}_same_order");
    let again = record_payment(
        &pool,
        &store,
        ACCOUNT,
        &same_order,
        &order,
        4200,
        DEFAULT_LEASE,
    )
    .await?;
    println!("same order:      {}", again.answer());
    // Another event about it with another amount is not the same payment:
    // refused, nothing written.
    let other_amount = format!("evt_{run}_other_amount");
    let conflicting = record_payment(
        &pool,
        &store,
        ACCOUNT,
        &other_amount,
        &order,
        4300,
        DEFAULT_LEASE,
    )
    .await;
    let conflicting_answer = conflicting
        .as_ref()
        .map_or_else(|err| format!("500, {}", reason(&**err)), Outcome::answer);
    println!("other amount:    {conflicting_answer}");

    // A handler that fails after claiming (the CHECK constraint refuses the
    // amount): the whole transaction rolls back, claim included...
    let broken = format!("evt_{run}_broken");
    let broken_order = format!("ord_{run}_broken");
    let failed = record_payment(
        &pool,
        &store,
        ACCOUNT,
        &broken,
        &broken_order,
        -1,
        DEFAULT_LEASE,
    )
    .await;
    let failed = failed.map_or_else(|err| format!("500, {}", reason(&*err)), |o| o.answer());
    println!("failing handler: {failed}");
    // ...so the retry, with the bug fixed, runs it again.
    let fixed = record_payment(
        &pool,
        &store,
        ACCOUNT,
        &broken,
        &broken_order,
        1999,
        DEFAULT_LEASE,
    )
    .await?;
    println!("fixed retry:     {}", fixed.answer());

    // A write slower than the claim's lease (a lock it waited for, say;
    // here a lease of 100 ms and a write of 200 ms): the completed mark is
    // not written, so nothing is kept...
    let slow = format!("evt_{run}_slow");
    let slow_order = format!("ord_{run}_slow");
    let short_lease = Duration::from_millis(100);
    let slow_key = format!("payments:{ACCOUNT}:{slow}");
    let too_slow = once(
        &pool,
        &store,
        &slow_key,
        short_lease,
        async |tx: &Transaction<'_>| {
            tx.batch_execute("SELECT pg_sleep(0.2)").await?;
            tx.execute(
                "INSERT INTO example_payments (order_id, amount_cents) VALUES ($1, 2500)",
                &[&slow_order],
            )
            .await?;
            Ok(())
        },
    )
    .await?;
    println!("slow handler:    {}", too_slow.answer());
    // ...and the retry, given its time, records it once.
    let retried = record_payment(
        &pool,
        &store,
        ACCOUNT,
        &slow,
        &slow_order,
        2500,
        DEFAULT_LEASE,
    )
    .await?;
    println!("its retry:       {}", retried.answer());

    // A second delivery while the first is still in its transaction: it
    // waits for the event's row at most the store's timeout, then is told
    // to come back; nothing is written twice.
    let busy = format!("evt_{run}_busy");
    let busy_order = format!("ord_{run}_busy");
    let mut holder = pool.get().await?;
    let first_delivery = holder.transaction().await?;
    let Claim::Claimed(_) = store
        .claim_in(
            &first_delivery,
            &format!("payments:{ACCOUNT}:{busy}"),
            DEFAULT_LEASE,
        )
        .await?
    else {
        return Err("a fresh event was not claimed".into());
    };
    let quick = store.clone().with_timeout(Duration::from_millis(300))?;
    let second = record_payment(
        &pool,
        &quick,
        ACCOUNT,
        &busy,
        &busy_order,
        700,
        DEFAULT_LEASE,
    )
    .await?;
    println!("while in flight: {}", second.answer());
    first_delivery.rollback().await?;
    drop(holder);

    let payments: i64 = pool
        .get()
        .await?
        .query_one(
            "SELECT count(*) FROM example_payments WHERE order_id = ANY($1)",
            &[&vec![order, broken_order, slow_order, busy_order]],
        )
        .await?
        .get(0);
    println!("payments written: {payments} (one per order recorded)");
    let expected = (&first, &retry, &again, &fixed, &too_slow, &retried, &second);
    match expected {
        (
            Outcome::Recorded,
            Outcome::AlreadyHandled,
            Outcome::OrderAlreadyPaid,
            Outcome::Recorded,
            Outcome::TooSlow,
            Outcome::Recorded,
            Outcome::Busy,
        ) if payments == 3 && conflicting.is_err() => Ok(()),
        _ => Err("the deliveries did not end as this example says they do".into()),
    }
}
