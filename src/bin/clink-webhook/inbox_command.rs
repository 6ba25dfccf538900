//! `inbox`: look into a durable inbox and act on it: list, show, replay,
//! purge, stats.

use std::sync::Arc;

use clap::{Args, Subcommand};
use clink_webhooks::store::{Inbox, InboxEntry, InboxFilter, InboxStatus, Replayed};
use clink_webhooks::Timestamp;
use serde_json::json;

use crate::output::{escaped, Output};
use crate::{CliError, ErrorCode};

pub(crate) const AFTER_HELP: &str = "\
The inbox is the one a receiver keeps with ClinkLayer::inbox: --sqlite FILE for
SqliteInbox (feature sqlite), or --postgres for PostgresInbox in the database
DATABASE_URL names (feature postgres; --table for another table than
clink_webhook_inbox). Event bodies are data: every value from one is printed
escaped, and `show` prints the body as JSON text only with --json.";

#[derive(Debug, Args)]
pub(crate) struct InboxArgs {
    /// The SQLite file of a SqliteInbox.
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "postgres")]
    sqlite: Option<std::path::PathBuf>,
    /// The PostgresInbox in DATABASE_URL's database.
    #[arg(long, global = true)]
    postgres: bool,
    /// The PostgresInbox's table.
    #[arg(long, value_name = "NAME", global = true)]
    table: Option<String>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Events by status: pending, retrying (failed, awaiting a retry), running, done, dead.
    List {
        /// Only events with this status (all by default).
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// At most this many, oldest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One event, with its last error.
    Show {
        /// The event's number in the inbox (the first column of `list`).
        seq: i64,
    },
    /// Make one event (SEQ) or every dead one (--dead) pending again now.
    Replay {
        /// The event's number.
        seq: Option<i64>,
        /// Every dead event.
        #[arg(long, conflicts_with = "seq")]
        dead: bool,
    },
    /// Delete done and dead events older than the retention.
    Purge {
        /// Events that arrived more than this many hours ago.
        #[arg(long, value_name = "HOURS", default_value_t = 72)]
        older_than_hours: u64,
    },
    /// How many events are where, and how long the oldest has waited.
    Stats,
}

async fn open(args: &InboxArgs) -> Result<Arc<dyn Inbox>, CliError> {
    if let Some(path) = &args.sqlite {
        #[cfg(feature = "sqlite")]
        {
            let inbox = clink_webhooks::store::SqliteInbox::open(path)
                .map_err(|e| CliError::new(ErrorCode::Io, e.to_string()))?;
            return Ok(Arc::new(inbox));
        }
        #[cfg(not(feature = "sqlite"))]
        {
            let _ = path;
            return Err(CliError::usage(
                "--sqlite needs a clink-webhook built with the sqlite feature",
            ));
        }
    }
    if args.postgres {
        #[cfg(feature = "postgres")]
        {
            let url = std::env::var("DATABASE_URL")
                .map_err(|_| CliError::usage("--postgres needs DATABASE_URL"))?;
            // The parse error is not shown: it could quote the password.
            let config: tokio_postgres::Config = url.parse().map_err(|_| {
                CliError::usage("DATABASE_URL is not a valid PostgreSQL connection string")
            })?;
            let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
                config,
                tokio_postgres::NoTls,
            ))
            .max_size(2)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| CliError::new(ErrorCode::Io, e.to_string()))?;
            let mut inbox = clink_webhooks::store::PostgresInbox::new(pool)
                .with_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| CliError::usage(e.to_string()))?;
            if let Some(table) = &args.table {
                inbox = inbox
                    .with_table(table)
                    .map_err(|e| CliError::usage(e.to_string()))?;
            }
            return Ok(Arc::new(inbox));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(CliError::usage(
            "--postgres needs a clink-webhook built with the postgres feature",
        ));
    }
    Err(CliError::usage(
        "name the inbox: --sqlite FILE or --postgres",
    ))
}

fn store_error(error: &clink_webhooks::store::StoreError) -> CliError {
    CliError::new(ErrorCode::Io, error.to_string())
}

fn entry_json(entry: &InboxEntry, with_body: bool) -> serde_json::Value {
    let event = &entry.event;
    let mut value = json!({
        "seq": entry.seq,
        "status": entry.status.as_str(),
        "attempts": entry.attempts,
        "account": event.account,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "object": event.object_key,
        "created": event.created.map(|t| t.to_string()),
        "received_at": event.received_at.to_string(),
        "signing_key": event.signing_key,
        "next_attempt_at": entry.next_attempt_at.to_string(),
        "last_error": entry.last_error,
    });
    if with_body {
        value["body"] = json!(String::from_utf8_lossy(&event.body));
    }
    value
}

fn entry_line(entry: &InboxEntry) -> String {
    let event = &entry.event;
    let mut line = format!(
        "{:>6}  {:<8}  {}  {}  attempts {}",
        entry.seq,
        entry.status.as_str(),
        escaped(&event.event_type),
        escaped(&event.event_id),
        entry.attempts
    );
    if let Some(account) = &event.account {
        line.push_str(&format!("  account {}", escaped(account)));
    }
    if let Some(object) = &event.object_key {
        line.push_str(&format!("  {}", escaped(object)));
    }
    if let Some(key) = &event.signing_key {
        line.push_str(&format!("  key {}", escaped(key)));
    }
    if let Some(error) = &entry.last_error {
        line.push_str(&format!("  last error: {}", escaped(error)));
    }
    line
}

pub(crate) async fn run(out: &Output, args: &InboxArgs) -> Result<(), CliError> {
    let inbox = open(args).await?;
    match &args.action {
        Action::List { status, limit } => {
            let status = status
                .as_deref()
                .map(|s| {
                    InboxStatus::parse(s).ok_or_else(|| {
                        CliError::usage(format!(
                            "--status {}: one of pending, retrying, running, done, dead",
                            escaped(s)
                        ))
                    })
                })
                .transpose()?;
            let mut filter = InboxFilter::default();
            if let Some(status) = status {
                filter = filter.status(status);
            }
            let entries = inbox
                .list(&filter, *limit)
                .await
                .map_err(|e| store_error(&e))?;
            for entry in &entries {
                if out.json {
                    out.json_line(&entry_json(entry, false));
                } else {
                    out.line(&entry_line(entry));
                }
            }
        }
        Action::Show { seq } => {
            let entry = inbox.get(*seq).await.map_err(|e| store_error(&e))?;
            let Some(entry) = entry else {
                return Err(CliError::usage(format!("no event {seq} in the inbox")));
            };
            if out.json {
                out.json_line(&entry_json(&entry, true));
            } else {
                out.line(&entry_line(&entry));
                out.line(&format!(
                    "        received {}, next attempt {}, {} body bytes",
                    entry.event.received_at,
                    entry.next_attempt_at,
                    entry.event.body.len()
                ));
            }
        }
        Action::Replay { seq, dead } => {
            let replayed = match (seq, dead) {
                (Some(seq), false) => {
                    match inbox.replay(*seq, false).await.map_err(|e| store_error(&e))? {
                        Replayed::Replayed => 1,
                        Replayed::Handled { at } => {
                            return Err(CliError::new(
                                ErrorCode::Refused,
                                format!(
                                    "event {seq} was handled{}; replaying it would run its handler again",
                                    at.map(|at| format!(" at {at}")).unwrap_or_default()
                                ),
                            ))
                        }
                        Replayed::Running => {
                            return Err(CliError::new(
                                ErrorCode::Refused,
                                format!("event {seq} is running now; replay it once it is settled"),
                            ))
                        }
                        _ => return Err(CliError::usage(format!("no event {seq} in the inbox"))),
                    }
                }
                (None, true) => {
                    let dead = InboxFilter::default().status(InboxStatus::Dead);
                    let seqs = inbox
                        .replay_matching(&dead, false)
                        .await
                        .map_err(|e| store_error(&e))?;
                    seqs.len() as u64
                }
                _ => return Err(CliError::usage("replay SEQ, or replay --dead")),
            };
            if out.json {
                out.json_line(&json!({ "replayed": replayed }));
            } else {
                out.line(&format!("replayed {replayed}"));
            }
        }
        Action::Purge { older_than_hours } => {
            let millis =
                i64::try_from(older_than_hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX);
            let before =
                Timestamp::from_millis(Timestamp::now().as_millis().saturating_sub(millis));
            let purged = inbox.purge(before).await.map_err(|e| store_error(&e))?;
            if out.json {
                out.json_line(&json!({ "purged": purged }));
            } else {
                out.line(&format!("purged {purged}"));
            }
        }
        Action::Stats => {
            let stats = inbox.stats().await.map_err(|e| store_error(&e))?;
            let waited = stats.oldest_unhandled.map(|t| {
                Timestamp::now()
                    .as_millis()
                    .saturating_sub(t.as_millis())
                    .max(0)
                    / 1000
            });
            if out.json {
                out.json_line(&json!({
                    "pending": stats.pending,
                    "retrying": stats.retrying,
                    "running": stats.running,
                    "dead": stats.dead,
                    "oldest_unhandled_seconds": waited,
                }));
            } else {
                out.line(&format!(
                    "pending {}, retrying {}, running {}, dead {}; oldest unhandled {}",
                    stats.pending,
                    stats.retrying,
                    stats.running,
                    stats.dead,
                    waited.map_or_else(|| "none".to_owned(), |s| format!("{s} s ago"))
                ));
            }
        }
    }
    Ok(())
}
