//! `inbox`: look into a durable inbox and act on it: list, show, replay,
//! purge, stats.

use std::sync::Arc;

use clap::{Args, Subcommand};
use clink_webhooks::store::{Inbox, InboxEntry, InboxFilter, InboxStatus, PageStart, Replayed};
use clink_webhooks::Timestamp;
use serde_json::json;

use crate::output::{escaped, Output};
use crate::{CliError, ErrorCode};

pub(crate) const AFTER_HELP: &str = "\
The inbox is the one a receiver keeps with ClinkLayer::intake: --sqlite FILE for
SqliteInbox (feature sqlite), or --postgres for PostgresInbox in the database
DATABASE_URL names (feature postgres; --table for another table than
clink_webhook_inbox; a password in it runs up to the last @, as the gateway
reads it, so it may hold / or @ as it is). Event bodies are data: every value from one is printed
escaped, and `show` prints the body as JSON text only with --json (in base64,
as body_base64, when it is not UTF-8), with the signature headers it came with.

`list` and `replay` pick events with the same filters, every one given having
to match: --status, --type, --account (\"\" for events with no account),
--object (as `list` prints it, e.g. order:ord_1) and --from/--until (when the
event arrived: RFC 3339 such as 2025-01-15T12:00:00Z, or epoch milliseconds;
--from inclusive, --until exclusive).

`replay SEQ` replays one event; `replay` with filters replays every event they
match, dead ones by default (--status dead; --dead says the same). A handled
(done) event is refused, since replaying it runs its handler a second time:
exit 1, error code `refused`, saying when it was handled; --force replays it
anyway. A running event is never replayed (also `refused` for `replay SEQ`).
--dry-run prints what would be replayed, one event a line as `list` prints
it, and changes nothing.";

/// The filters `list` and `replay` share.
#[derive(Debug, Args)]
struct FilterArgs {
    /// Only events with this status: pending, retrying, running, done, dead.
    #[arg(long, value_name = "STATUS", value_parser = status)]
    status: Option<InboxStatus>,
    /// Only events of this type, e.g. order.succeeded.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Only events of this merchant account ("" for events with none).
    #[arg(long, value_name = "ACCOUNT")]
    account: Option<String>,
    /// Only events about this object, as `list` prints it (order:ord_1).
    #[arg(long, value_name = "OBJECT")]
    object: Option<String>,
    /// Only events that arrived at or after this time (RFC 3339, or epoch
    /// milliseconds).
    #[arg(long, value_name = "TIME", value_parser = crate::time_arg)]
    from: Option<Timestamp>,
    /// Only events that arrived before this time (RFC 3339, or epoch
    /// milliseconds).
    #[arg(long, value_name = "TIME", value_parser = crate::time_arg)]
    until: Option<Timestamp>,
}

impl FilterArgs {
    /// Whether any filter other than the status is given.
    fn narrows(&self) -> bool {
        self.event_type.is_some()
            || self.account.is_some()
            || self.object.is_some()
            || self.from.is_some()
            || self.until.is_some()
    }

    /// The filter, with `status` when none was given.
    fn filter(&self, status: Option<InboxStatus>) -> InboxFilter {
        let mut filter = InboxFilter::default().received(self.from, self.until);
        if let Some(status) = self.status.or(status) {
            filter = filter.status(status);
        }
        if let Some(event_type) = &self.event_type {
            filter = filter.event_type(event_type.clone());
        }
        if let Some(account) = &self.account {
            filter = filter.account(account.clone());
        }
        if let Some(object) = &self.object {
            filter = filter.object_key(object.clone());
        }
        filter
    }
}

fn status(text: &str) -> Result<InboxStatus, String> {
    InboxStatus::parse(text).ok_or_else(|| {
        format!(
            "{}: one of pending, retrying, running, done, dead",
            escaped(text)
        )
    })
}

#[derive(Debug, Args)]
pub(crate) struct InboxArgs {
    /// The SQLite file of a SqliteInbox.
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "postgres")]
    sqlite: Option<std::path::PathBuf>,
    /// The PostgresInbox in DATABASE_URL's database.
    #[arg(long, global = true)]
    postgres: bool,
    /// The PostgresInbox's table (with --postgres only).
    #[arg(long, value_name = "NAME", global = true)]
    table: Option<String>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Events, oldest first, all or those the filters match.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many, oldest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One event: its last error, when it was handled and replayed, its signing key.
    Show {
        /// The event's number in the inbox (the first column of `list`).
        seq: i64,
    },
    /// Make one event (SEQ), or every one the filters match (dead ones by
    /// default), pending again now.
    Replay {
        /// The event's number.
        seq: Option<i64>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Every dead event: the default without SEQ, said outright.
        #[arg(long, conflicts_with = "seq")]
        dead: bool,
        /// Replay handled (done) events too, running their handlers again.
        #[arg(long)]
        force: bool,
        /// Print what would be replayed, one event a line, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete done events last handled or replayed more than the retention
    /// ago, however long ago they arrived; dead events only with --dead,
    /// and events still to run never.
    Purge {
        /// The retention: events that settled (were last handled, failed
        /// or replayed) more than this many hours ago.
        #[arg(long, value_name = "HOURS", default_value_t = 72)]
        older_than_hours: u64,
        /// Delete the dead events that settled before the retention too:
        /// events acknowledged to Clink that no handler finished, kept
        /// until replayed otherwise.
        #[arg(long)]
        dead: bool,
    },
    /// How many events are where, and how long the oldest has waited.
    Stats,
}

/// Whether the SQLite file at `path`, opened read-only, holds the inbox's
/// table: `false` for a database without it, or a file that is no
/// database; `true` when it cannot tell otherwise (a file it may not read,
/// a lock held), so that opening it says why.
#[cfg(feature = "sqlite")]
fn holds_an_inbox(path: &std::path::Path) -> bool {
    let not_a_database = |error: &rusqlite::Error| {
        error.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase)
    };
    let db = match rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) {
        Ok(db) => db,
        Err(error) => return !not_a_database(&error),
    };
    match db.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'clink_webhook_inbox'",
        [],
        |row| row.get::<_, i64>(0),
    ) {
        Ok(count) => count == 1,
        Err(error) => !not_a_database(&error),
    }
}

async fn open(args: &InboxArgs) -> Result<Arc<dyn Inbox>, CliError> {
    // Refused, not ignored: a purge would act on the file's one table.
    if args.table.is_some() && !args.postgres {
        return Err(CliError::usage(
            "--table names a PostgreSQL inbox's table: give it with --postgres",
        ));
    }
    if let Some(path) = &args.sqlite {
        #[cfg(feature = "sqlite")]
        {
            // Opening makes the file, and the inbox's table in it: a
            // mistyped path would be an empty inbox left behind.
            if !path.is_file() {
                return Err(CliError::new(
                    ErrorCode::Io,
                    format!(
                        "--sqlite {}: no such file; give the inbox file the receiver writes",
                        escaped(&path.to_string_lossy())
                    ),
                ));
            }
            // Nor is any other SQLite file (another app's database, given
            // by mistake) changed: opening would set it to WAL and add the
            // inbox's tables. It is read first, read-only.
            if !holds_an_inbox(path) {
                return Err(CliError::new(
                    ErrorCode::Io,
                    format!(
                        "--sqlite {}: not an inbox file (no clink_webhook_inbox table in it, or \
                         not SQLite); give the inbox file the receiver writes",
                        escaped(&path.to_string_lossy())
                    ),
                ));
            }
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
            #[allow(unused_mut)]
            let mut config = postgres_config(std::env::var_os("DATABASE_URL"))?;
            let ca_file = std::env::var_os("CLINK_DATABASE_CA_FILE")
                .filter(|file| !file.is_empty())
                .map(std::path::PathBuf::from);
            #[cfg(feature = "postgres-tls")]
            let tls = clink_webhooks::store::postgres_tls(&mut config, ca_file.as_deref())
                .map_err(|e| CliError::usage(e.to_string()))?;
            #[cfg(feature = "postgres-tls")]
            let manager = match &tls {
                Some(tls) => deadpool_postgres::Manager::new(config, tls.clone()),
                None => deadpool_postgres::Manager::new(config, tokio_postgres::NoTls),
            };
            #[cfg(not(feature = "postgres-tls"))]
            let manager = {
                if ca_file.is_some()
                    || config.get_ssl_mode() == tokio_postgres::config::SslMode::Require
                {
                    return Err(CliError::usage(
                        "TLS to PostgreSQL (sslmode=require, CLINK_DATABASE_CA_FILE) needs a \
                         clink-webhook built with the postgres-tls feature",
                    ));
                }
                deadpool_postgres::Manager::new(config, tokio_postgres::NoTls)
            };
            let pool = deadpool_postgres::Pool::builder(manager)
                .max_size(2)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| CliError::new(ErrorCode::Io, e.to_string()))?;
            let mut inbox = clink_webhooks::store::PostgresInbox::new(pool)
                .with_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| CliError::usage(e.to_string()))?;
            #[cfg(feature = "postgres-tls")]
            if let Some(tls) = tls {
                inbox = inbox.cancel_with(tls);
            }
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

/// The PostgreSQL connection `DATABASE_URL` (`url`) names, read as the
/// gateway reads it: the user info up to the last `@`, so that the inbox a
/// gateway opens with a password holding `@` or `/` opens here too.
#[cfg(feature = "postgres")]
fn postgres_config(url: Option<std::ffi::OsString>) -> Result<tokio_postgres::Config, CliError> {
    let url = url.ok_or_else(|| CliError::usage("--postgres needs DATABASE_URL"))?;
    let url = zeroize::Zeroizing::new(
        url.into_string()
            .map_err(|_| CliError::usage("DATABASE_URL is not valid UTF-8"))?,
    );
    crate::urls::postgres_config(&url).ok_or_else(|| {
        CliError::usage(
            "DATABASE_URL is not a valid PostgreSQL connection string \
             (postgres://user:password@host/db)",
        )
    })
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
        "handled_at": entry.handled_at.map(|t| t.to_string()),
        "replays": entry.replays,
        "last_replayed_at": entry.last_replayed_at.map(|t| t.to_string()),
    });
    if with_body {
        // Byte for byte: as text when it is UTF-8, in base64 when not (a
        // verified body that is no envelope, kept dead, may be anything).
        match std::str::from_utf8(&event.body) {
            Ok(text) => value["body"] = json!(text),
            Err(_) => value["body_base64"] = json!(crate::urls::base64(&event.body).as_str()),
        }
        // With the body they sign, so that it can be checked, or sent on.
        value["signature_headers"] = event.signature_headers.as_ref().map_or(
            serde_json::Value::Null,
            |headers| json!({ "timestamp": headers.timestamp, "signature": headers.signature }),
        );
        value["receipt"] = json!(entry.receipt);
        value["history"] = entry
            .history
            .iter()
            .map(|record| {
                json!({
                    "attempt": record.attempt,
                    "started_at": record.started_at.to_string(),
                    "duration_ms": u64::try_from(record.duration.as_millis()).unwrap_or(u64::MAX),
                    "outcome": record.outcome.as_str(),
                    "error": record.outcome.error(),
                })
            })
            .collect();
    }
    value
}

/// One line per recorded attempt, oldest first: its number, when it
/// started, how long it ran and how it ended (with the error, escaped).
fn history_lines(entry: &InboxEntry) -> Vec<String> {
    entry
        .history
        .iter()
        .map(|record| {
            let mut line = format!(
                "        attempt {} at {}, {} ms: {}",
                record.attempt,
                record.started_at,
                record.duration.as_millis(),
                record.outcome.as_str()
            );
            if let Some(error) = record.outcome.error() {
                line.push_str(&format!(": {}", escaped(error)));
            }
            line
        })
        .collect()
}

fn entry_line(entry: &InboxEntry) -> String {
    let event = &entry.event;
    // An event kept with no type (a verified body that is no envelope,
    // kept as a dead letter) shows `-`: the line keeps its columns.
    let event_type = if event.event_type.is_empty() {
        "-".to_owned()
    } else {
        escaped(&event.event_type)
    };
    let mut line = format!(
        "{:>6}  {:<8}  {}  {}  attempts {}",
        entry.seq,
        entry.status.as_str(),
        event_type,
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

/// What `show` prints under an event's line: arrival, handling, replays and key.
fn entry_details(entry: &InboxEntry) -> [String; 3] {
    let event = &entry.event;
    let handled = match entry.handled_at {
        Some(at) => format!("handled at {at}"),
        None => "never handled".to_owned(),
    };
    let replays = match (entry.replays, entry.last_replayed_at) {
        (0, _) => "never replayed".to_owned(),
        (1, Some(at)) => format!("replayed once, at {at}"),
        (n, Some(at)) => format!("replayed {n} times, last at {at}"),
        (n, None) => format!("replayed {n} times"),
    };
    let key = match &event.signing_key {
        Some(key) => format!("signing key {}", escaped(key)),
        None => "signing key not recorded (kept before the inbox recorded it)".to_owned(),
    };
    [
        format!(
            "        received {}, next attempt {}, {} body bytes",
            event.received_at,
            entry.next_attempt_at,
            event.body.len()
        ),
        format!("        {handled}; {replays}"),
        format!("        {key}"),
    ]
}

/// Why event `seq` cannot be replayed without `--force`: it was handled.
fn handled_refusal(seq: i64, at: Option<Timestamp>) -> CliError {
    CliError::new(
        ErrorCode::Refused,
        format!(
            "event {seq} was handled{}; replaying it would run its handler again: add --force \
             to do that on purpose",
            at.map(|at| format!(" at {at}")).unwrap_or_default()
        ),
    )
}

fn running_refusal(seq: i64) -> CliError {
    CliError::new(
        ErrorCode::Refused,
        format!("event {seq} is running now; replay it once it is settled"),
    )
}

/// Reads the events `filter` matches, oldest first, at most `limit`, a
/// page at a time, handing each page to `each`, oldest first: whole
/// events, bodies of up to the layer's limit each, so only a page of them
/// (a hundred bodies) is held at once, however many are listed. Events
/// that arrive while it reads are left out; one whose status changes while
/// it reads is listed as it is when its page is read.
async fn oldest_first(
    inbox: &dyn Inbox, filter: &InboxFilter, limit: usize, mut each: impl FnMut(Vec<InboxEntry>),
) -> Result<(), CliError> {
    const PAGE: usize = 100;
    let newest = inbox
        .page(&InboxFilter::default(), PageStart::Newest, 1)
        .await
        .map_err(|e| store_error(&e))?;
    let Some(newest) = newest.first().map(|e| e.seq) else {
        return Ok(());
    };
    let through = filter
        .seq_through
        .map_or(newest, |through| through.min(newest));
    let filter = &filter.clone().seq_through(through);
    let mut left = limit;
    let mut start = PageStart::After(i64::MIN);
    while left > 0 {
        // A page holds the events just after `start`, newest first.
        let mut page = inbox
            .page(filter, start, PAGE.min(left))
            .await
            .map_err(|e| store_error(&e))?;
        let Some(newest) = page.first().map(|e| e.seq) else {
            break;
        };
        left = left.saturating_sub(page.len());
        start = PageStart::After(newest);
        page.reverse();
        each(page);
    }
    Ok(())
}

/// Prints the events `entries`, one a line, as `list` does.
fn print_entries(out: &Output, entries: &[InboxEntry]) {
    for entry in entries {
        if out.json {
            out.json_line(&entry_json(entry, false));
        } else {
            out.line(&entry_line(entry));
        }
    }
}

/// `replay SEQ`: replays one event, or with `dry_run` prints it if it would be.
async fn replay_one(
    out: &Output, inbox: &dyn Inbox, seq: i64, force: bool, dry_run: bool,
) -> Result<Vec<i64>, CliError> {
    if dry_run {
        let entry = inbox.get(seq).await.map_err(|e| store_error(&e))?;
        let Some(entry) = entry else {
            return Err(CliError::usage(format!("no event {seq} in the inbox")));
        };
        match entry.status {
            InboxStatus::Running => return Err(running_refusal(seq)),
            InboxStatus::Done if !force => return Err(handled_refusal(seq, entry.handled_at)),
            _ => {}
        }
        print_entries(out, std::slice::from_ref(&entry));
        return Ok(vec![seq]);
    }
    match inbox
        .replay(seq, force)
        .await
        .map_err(|e| store_error(&e))?
    {
        Replayed::Replayed => Ok(vec![seq]),
        Replayed::Handled { at } => Err(handled_refusal(seq, at)),
        Replayed::Running => Err(running_refusal(seq)),
        _ => Err(CliError::usage(format!("no event {seq} in the inbox"))),
    }
}

/// `replay` by filter: every matching event that is neither running nor,
/// without `force`, handled; refused whole when it matches a handled event
/// and `force` is not given. It counts rather than reads the matching
/// events, and a dry run reads them a page at a time: a filter may match a
/// backlog of any size.
async fn replay_matching(
    out: &Output, inbox: &dyn Inbox, filter: &InboxFilter, force: bool, dry_run: bool,
) -> Result<(Vec<i64>, u64), CliError> {
    let may_be = |status| filter.status.is_none_or(|wanted| wanted == status);
    if !force && may_be(InboxStatus::Done) {
        let done = filter.clone().status(InboxStatus::Done);
        let handled = inbox.count(&done).await.map_err(|e| store_error(&e))?;
        let first = match handled {
            0 => None,
            _ => inbox
                .list(&done, 1)
                .await
                .map_err(|e| store_error(&e))?
                .into_iter()
                .next(),
        };
        if let Some(first) = first {
            let more = match handled {
                0 | 1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Err(CliError::new(
                ErrorCode::Refused,
                format!(
                    "event {}{more} was handled{}; replaying would run handlers again: add \
                     --force to do that on purpose, or leave done events out (--status dead)",
                    first.seq,
                    first
                        .handled_at
                        .map(|at| format!(" at {at}"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    let running = if may_be(InboxStatus::Running) {
        inbox
            .count(&filter.clone().status(InboxStatus::Running))
            .await
            .map_err(|e| store_error(&e))?
    } else {
        0
    };
    if running > 0 && !out.json {
        out.hint(&format!(
            "{running} matching events are running now and are left alone; replay them once they are settled"
        ));
    }
    if dry_run {
        let mut would = Vec::new();
        oldest_first(inbox, filter, usize::MAX, |mut page| {
            page.retain(|e| e.status != InboxStatus::Running);
            print_entries(out, &page);
            would.extend(page.iter().map(|e| e.seq));
        })
        .await?;
        return Ok((would, running));
    }
    let replayed = inbox
        .replay_matching(filter, force)
        .await
        .map_err(|e| partly_replayed(&e))?;
    Ok((replayed, running))
}

/// A replay by filter that failed: an inbox replays in steps (the SQLite
/// and PostgreSQL inboxes of 5,000 events, each kept once made), so the
/// events of the steps before the error may have been replayed, and the
/// error says so and how to see them (by when each was last replayed: once
/// replayed, an event is soon running or done, no longer pending); running
/// it again with `--force` would replay again those handled since.
fn partly_replayed(error: &clink_webhooks::store::StoreError) -> CliError {
    CliError::new(
        ErrorCode::Io,
        format!(
            "{error}; the replay goes in steps, each kept once made, so the events of the steps \
             before the error may have been replayed (and run since): `list --json --limit N` with \
             the same filters but --status shows when each was last replayed \
             (last_replayed_at); the same replay again without --force leaves out those \
             handled since"
        ),
    )
}

pub(crate) async fn run(out: &Output, args: &InboxArgs) -> Result<(), CliError> {
    let inbox = open(args).await?;
    match &args.action {
        Action::List { filter, limit } => {
            oldest_first(&*inbox, &filter.filter(None), *limit, |page| {
                print_entries(out, &page);
            })
            .await?;
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
                for line in entry_details(&entry) {
                    out.line(&line);
                }
                for line in history_lines(&entry) {
                    out.line(&line);
                }
            }
        }
        Action::Replay {
            seq,
            filter,
            dead,
            force,
            dry_run,
        } => {
            // The events replayed, and how many matching ones were left
            // alone because a worker held them.
            let (seqs, running) = match seq {
                Some(seq) => {
                    if filter.narrows() || filter.status.is_some() {
                        return Err(CliError::usage(
                            "replay SEQ takes no filter: give SEQ, or filters without it",
                        ));
                    }
                    (replay_one(out, &*inbox, *seq, *force, *dry_run).await?, 0)
                }
                None => {
                    if *dead && filter.status.is_some_and(|s| s != InboxStatus::Dead) {
                        return Err(CliError::usage("--dead is --status dead: give one status"));
                    }
                    let filter = filter.filter(Some(InboxStatus::Dead));
                    replay_matching(out, &*inbox, &filter, *force, *dry_run).await?
                }
            };
            if *dry_run {
                if !out.json {
                    out.hint(&format!(
                        "dry run: {} would be replayed; nothing was changed",
                        seqs.len()
                    ));
                }
            } else if out.json {
                out.json_line(&json!({
                    "replayed": seqs.len(),
                    "seqs": seqs,
                    "running_skipped": running,
                }));
            } else {
                out.line(&format!("replayed {}", seqs.len()));
            }
        }
        Action::Purge {
            older_than_hours,
            dead,
        } => {
            let millis =
                i64::try_from(older_than_hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX);
            let before =
                Timestamp::from_millis(Timestamp::now().as_millis().saturating_sub(millis));
            let purged = inbox.purge(before).await.map_err(|e| store_error(&e))?;
            let dead = if *dead {
                Some(
                    inbox
                        .purge_dead(before)
                        .await
                        .map_err(|e| store_error(&e))?,
                )
            } else {
                None
            };
            match (out.json, dead) {
                (true, None) => out.json_line(&json!({ "purged": purged })),
                (true, Some(dead)) => out.json_line(&json!({ "purged": purged, "dead": dead })),
                (false, None) => out.line(&format!("purged {purged}")),
                (false, Some(dead)) => out.line(&format!("purged {purged}, dead {dead}")),
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

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;

    use clink_webhooks::store::{
        InboxClaim, InboxStats, Inserted, MemoryInbox, NewEvent, Settle, StoreError, StoreErrorKind,
    };
    use clink_webhooks::BoxFuture;
    use std::time::Duration;

    /// A memory inbox whose replays by filter replay the oldest matching
    /// event, then fail, as a stepped replay fails after its first step.
    struct FailsAfterOne(MemoryInbox);

    impl Inbox for FailsAfterOne {
        fn insert<'a>(&'a self, e: &'a NewEvent) -> BoxFuture<'a, Result<Inserted, StoreError>> {
            self.0.insert(e)
        }
        fn insert_dead<'a>(
            &'a self, e: &'a NewEvent, error: &'a str,
        ) -> BoxFuture<'a, Result<Inserted, StoreError>> {
            self.0.insert_dead(e, error)
        }
        fn claim(
            &self, lease: Duration, window: Duration,
        ) -> BoxFuture<'_, Result<Option<InboxClaim>, StoreError>> {
            self.0.claim(lease, window)
        }
        fn complete<'a>(&'a self, c: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
            self.0.complete(c)
        }
        fn fail<'a>(
            &'a self, c: &'a InboxClaim, error: &'a str, retry_at: Option<Timestamp>,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            self.0.fail(c, error, retry_at)
        }
        fn release<'a>(&'a self, c: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
            self.0.release(c)
        }
        fn list<'a>(
            &'a self, filter: &'a InboxFilter, limit: usize,
        ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
            self.0.list(filter, limit)
        }
        fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
            self.0.get(seq)
        }
        fn replay(&self, seq: i64, force: bool) -> BoxFuture<'_, Result<Replayed, StoreError>> {
            self.0.replay(seq, force)
        }
        fn replay_matching<'a>(
            &'a self, filter: &'a InboxFilter, force: bool,
        ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
            Box::pin(async move {
                let first = self.0.list(filter, 1).await?;
                if let Some(first) = first.first() {
                    self.0.replay(first.seq, force).await?;
                }
                Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    "the second step timed out",
                ))
            })
        }
        fn purge(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.0.purge(before)
        }
        fn purge_dead(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.0.purge_dead(before)
        }
        fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
            self.0.stats()
        }
        fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            self.0.check_writable()
        }
    }

    /// A replay by filter that fails after a step says that events may
    /// have been replayed, and how to see them: a bare error would have an
    /// operator believe nothing happened, and run it again.
    #[tokio::test]
    async fn a_replay_by_filter_that_fails_partway_says_events_may_have_been_replayed() {
        let inbox = FailsAfterOne(MemoryInbox::new());
        for id in ["evt_1", "evt_2"] {
            let event = NewEvent::new(
                None,
                id.to_owned(),
                "order.succeeded".to_owned(),
                None,
                None,
                Timestamp::now(),
                Timestamp::now(),
                bytes::Bytes::from_static(b"{}"),
            );
            inbox.insert_dead(&event, "dead").await.unwrap();
        }
        let dead = InboxFilter::default().status(InboxStatus::Dead);
        let error = replay_matching(&Output::new(true), &inbox, &dead, false, false)
            .await
            .unwrap_err();
        assert!(
            error.message.contains("may have been replayed")
                && error.message.contains("last_replayed_at"),
            "{}",
            error.message
        );
        assert_eq!(
            inbox.0.get(1).await.unwrap().unwrap().status,
            InboxStatus::Pending
        );
    }

    /// `list` reads a page of at most 100 events at a time, oldest first,
    /// and stops at its limit: the events and their order are those one
    /// read of them all gives.
    #[tokio::test]
    async fn events_are_listed_a_page_at_a_time_oldest_first() {
        use clink_webhooks::store::{Inbox as _, MemoryInbox, NewEvent};

        let event = |id: String| {
            NewEvent::new(
                None,
                id,
                "order.succeeded".to_owned(),
                None,
                None,
                Timestamp::now(),
                Timestamp::now(),
                bytes::Bytes::from_static(b"{}"),
            )
        };
        let inbox = MemoryInbox::new();
        for n in 0..250 {
            let event = event(format!("evt_{n}"));
            if n % 10 == 0 {
                inbox.insert_dead(&event, "dead").await.unwrap();
            } else {
                inbox.insert(&event).await.unwrap();
            }
        }
        // Every tenth is dead; a filter by status pages as it lists.
        let dead = InboxFilter::default().status(InboxStatus::Dead);
        let mut pages = Vec::new();
        oldest_first(&inbox, &dead, usize::MAX, |page| pages.push(page))
            .await
            .unwrap();
        let listed: Vec<i64> = pages.iter().flatten().map(|e| e.seq).collect();
        assert_eq!(listed, (1..=250).step_by(10).collect::<Vec<i64>>());
        let filter = InboxFilter::default();
        for limit in [0, 1, 99, 100, 101, 230, 250, usize::MAX] {
            let mut pages = Vec::new();
            oldest_first(&inbox, &filter, limit, |page| pages.push(page))
                .await
                .unwrap();
            assert!(pages.iter().all(|page| page.len() <= 100), "{limit}");
            let listed: Vec<i64> = pages.iter().flatten().map(|e| e.seq).collect();
            let all: Vec<i64> = inbox
                .list(&filter, limit)
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(listed.len(), limit.min(250), "{limit}");
            assert_eq!(listed, all, "{limit}");
        }

        // An event that arrives while it lists is left out: listing ends at
        // the newest there was when it started.
        let inbox = std::sync::Arc::new(inbox);
        let mut listed = 0;
        oldest_first(&*inbox, &filter, usize::MAX, |page| {
            listed += page.len();
            if listed > 200 {
                return;
            }
            // One arrives after each of the first two pages.
            let arrived = format!("evt_arrived_{listed}");
            let inbox = std::sync::Arc::clone(&inbox);
            // Another runtime on a thread of its own: this one is busy
            // listing, and `each` cannot await.
            std::thread::spawn(move || {
                let arrived = event(arrived);
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(inbox.insert(&arrived))
                    .unwrap();
            })
            .join()
            .unwrap();
        })
        .await
        .unwrap();
        assert_eq!(listed, 250, "events that arrived while it listed");
        assert_eq!(inbox.list(&filter, usize::MAX).await.unwrap().len(), 252);
    }

    /// A line of an event kept with no type keeps its columns: `-` stands
    /// for the type.
    #[tokio::test]
    async fn a_line_of_an_event_without_a_type_keeps_its_columns() {
        use clink_webhooks::store::{Inbox as _, MemoryInbox, NewEvent};
        use clink_webhooks::Timestamp;

        let inbox = MemoryInbox::new();
        let event = NewEvent::new(
            None,
            "not-an-envelope:ab12".to_owned(),
            String::new(),
            None,
            None,
            Timestamp::now(),
            Timestamp::now(),
            bytes::Bytes::from_static(b"[]"),
        );
        inbox
            .insert_dead(&event, "dead: no envelope")
            .await
            .unwrap();
        let entry = inbox.get(1).await.unwrap().expect("the dead letter");
        let line = entry_line(&entry);
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            columns[..5],
            ["1", "dead", "-", "not-an-envelope:ab12", "attempts"],
            "{line}"
        );
    }

    /// `show --json` prints the event whole: a body that is not UTF-8 in
    /// base64, byte for byte, and the signature headers it came with.
    #[tokio::test]
    async fn show_json_prints_a_body_byte_for_byte_with_its_signature_headers() {
        use clink_webhooks::store::{Inbox as _, MemoryInbox, NewEvent, SignatureHeaders};

        let inbox = MemoryInbox::new();
        for (id, body) in [
            ("evt_binary", &b"\xff\xfe{}"[..]),
            ("evt_text", &b"{\"a\":1}"[..]),
        ] {
            let event = NewEvent::new(
                None,
                id.to_owned(),
                String::new(),
                None,
                None,
                Timestamp::now(),
                Timestamp::now(),
                bytes::Bytes::copy_from_slice(body),
            )
            .with_signature_headers(SignatureHeaders::new("1754819711382", "ab12"));
            inbox
                .insert_dead(&event, "dead: no envelope")
                .await
                .unwrap();
        }
        let binary = entry_json(&inbox.get(1).await.unwrap().unwrap(), true);
        assert_eq!(binary["body_base64"], "//57fQ==", "{binary}");
        assert!(binary.get("body").is_none(), "{binary}");
        assert_eq!(
            binary["signature_headers"],
            json!({ "timestamp": "1754819711382", "signature": "ab12" })
        );
        let text = entry_json(&inbox.get(2).await.unwrap().unwrap(), true);
        assert_eq!(text["body"], "{\"a\":1}", "{text}");
        assert!(text.get("body_base64").is_none(), "{text}");
        assert_eq!(text["receipt"], serde_json::Value::Null);
    }

    /// `DATABASE_URL` is read as the gateway reads it: a password holding
    /// `@` or `/` runs to the last `@`.
    #[test]
    fn database_url_is_read_as_the_gateway_reads_it() {
        let read = postgres_config(Some("postgres://app:p@s/s@db.example:5432/clink".into()))
            .unwrap_or_else(|error| panic!("{}", error.message));
        assert_eq!(read.get_user(), Some("app"));
        assert_eq!(read.get_password(), Some(&b"p@s/s"[..]));
        assert_eq!(read.get_dbname(), Some("clink"));
        assert!(matches!(
            read.get_hosts(),
            [tokio_postgres::config::Host::Tcp(host)] if host == "db.example"
        ));

        // A key=value string is read as it is, an `@` in a value too.
        let read = postgres_config(Some("host=db.example user=app@corp dbname=clink".into()))
            .unwrap_or_else(|error| panic!("{}", error.message));
        assert_eq!(read.get_user(), Some("app@corp"));
        assert_eq!(read.get_dbname(), Some("clink"));

        let message = |url| postgres_config(url).err().map(|error| error.message);
        assert_eq!(
            message(None).as_deref(),
            Some("--postgres needs DATABASE_URL")
        );
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt as _;
            let url = std::ffi::OsString::from_vec(b"postgres://app:\xff@db/clink".to_vec());
            assert_eq!(
                message(Some(url)).as_deref(),
                Some("DATABASE_URL is not valid UTF-8")
            );
        }
        let refused = message(Some("postgres://app:hunter2@db:notaport/clink".into())).unwrap();
        assert!(
            refused.contains("not a valid PostgreSQL connection string")
                && !refused.contains("hunter2"),
            "{refused}"
        );
    }
}
