//! One endpoint for many Clink merchant accounts, each with its own signing
//! secret.
//!
//! ```text
//! CLINK_TENANT_KEYS=acct_eu=whsec_eu,acct_us=whsec_us cargo run --example multi_tenant
//! ```
//!
//! It serves `POST /webhooks/clink/{account}` on `$CLINK_BIND:$PORT`
//! (default `127.0.0.1:3000`; `CLINK_BIND=0.0.0.0`, or `::`, takes
//! deliveries from other hosts) and prints one line `handled <account>
//! <type> <id>` to stdout per handler run. `CLINK_TENANT_KEYS` holds
//! `account=secret` pairs separated by commas; an account may appear twice
//! while its secret is rotated, the new secret first (the keys file's
//! secrets, below, come before the environment's, unless the environment
//! lists the file's newest among its older ones), and both secrets are
//! then accepted: the older ones until `CLINK_TENANT_OLD_KEYS_EXPIRE` (an
//! RFC 3339 time, the end of the rotation's grace) when it is set. Without
//! it they never expire, until someone takes them out, and a warning says
//! so.
//!
//! Keys change without a restart: when `CLINK_TENANT_KEYS_FILE` names a file
//! of `account=secret` lines, its accounts are added to those of
//! `CLINK_TENANT_KEYS`, and on SIGHUP the file is read again (an account
//! removed from it is refused from then on, a rotated secret accepted). A
//! reload is all or nothing: the whole file is read and checked first, and
//! a mistake anywhere in it (a line without `=`, an empty secret) changes no
//! key and is reported as `keys not reloaded: <why>`. An account nobody
//! configured gets `404`; the same event id under two accounts is two events.
//!
//! A platform with many accounts keeps their secrets in a database, not in
//! the environment: `CLINK_TENANT_LOOKUP_MS=<ms>` plays that, looking each
//! account up (in the configured ones) through a `CachedKeySource`, each
//! lookup taking that long, and `CLINK_TENANT_LOOKUP_FAILS=1` makes every
//! lookup fail, as a database that is down. Anyone can name any account in
//! a URL, so the source has a precheck, the set of configured account ids,
//! as a platform would keep its ids at hand: a name not in it is answered
//! `404` before the cache and any lookup, so made-up names cost the
//! database nothing and use up none of the lookups real accounts need. The
//! source's defaults bound what the configured accounts cost it (one lookup
//! per account at a time, 16 at once, 100 a second); on stop it prints
//! `key lookups: <n>` to stderr. The cache keeps what it looked up for 5
//! minutes, so a reload tells it to forget each account whose secrets
//! changed, was added or was removed, and makes the reloaded set of ids its
//! precheck: such an account is seen on its next delivery, not when its
//! cached keys expire, and the accounts that did not change stay cached.
//!
//! Ctrl-C or SIGTERM stops it gracefully: it says `stopping` on stderr,
//! waits at most 4 s for the deliveries in progress (and at most 2 s more
//! for the claims of those it cut off to be settled with a shared store:
//! inside the 10 s Docker gives a container), then prints `stopped` and exits 0. Half a second
//! after the first it says `Ctrl-C again to stop at once`: a second one
//! sent after that stops it at once, with status 130 (the deliveries in
//! progress get no answer, and Clink retries them); one sent with the first
//! is the same stop.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use clink_webhooks::accounts::{
    is_valid_account, AccountFrom, CachedKeySource, KeyMap, KeySource, MAX_ACCOUNT_LEN,
};
use clink_webhooks::data::Resource;
use clink_webhooks::router::EveryHandler;
use clink_webhooks::server::Server;
use clink_webhooks::signature::SigningKey;
use clink_webhooks::BoxFuture;
use clink_webhooks::{ClinkLayer, Event, EventRouter, MemoryStore, Verifier};

#[macro_use]
#[path = "support/lines.rs"]
mod lines;

/// A value from a delivery body, made safe to print: the crate's rule
/// (control, format and separator characters escaped, see
/// `clink_webhooks::events::printable`).
fn printable(text: &str) -> String {
    clink_webhooks::events::printable(text).into_owned()
}

/// Prints `handled <account> <type> <id>` for every event.
struct Handled;

impl EveryHandler for Handled {
    type Error = std::io::Error;

    fn handle<T: Resource + Send + 'static>(
        &self, event: Event<T>,
    ) -> BoxFuture<'static, Result<(), Self::Error>> {
        // Account ids are checked by the layer: letters, digits, `_-.` only.
        let account = event.account().unwrap_or("-");
        // Not `println!`, which panics when stdout is closed (every handler
        // run would fail), and never waiting for stdout: see `lines`.
        lines::out(format_args!(
            "handled {account} {} {}",
            printable(event.event_type.as_str()),
            printable(&event.id)
        ));
        Box::pin(std::future::ready(Ok(())))
    }
}

/// `account=secret` pairs, separated by commas or newlines, grouped by
/// account, every account id checked.
fn parse_pairs(text: &str, from: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut accounts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, pair) in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        // Neither the secret nor the line is echoed back, only where the
        // mistake is: a line without `=` may be a secret.
        let Some((account, secret)) = pair.split_once('=') else {
            return Err(format!(
                "{from}, pair {}: expected account=secret pairs",
                n + 1
            ));
        };
        let account = account.trim();
        if !is_valid_account(account) {
            return Err(format!(
                "{from}, pair {}: an account id is 1 to {MAX_ACCOUNT_LEN} ASCII letters, digits, \
                 `_`, `-` and `.`",
                n + 1
            ));
        }
        accounts
            .entry(account.to_owned())
            .or_default()
            .push(secret.trim().to_owned());
    }
    Ok(accounts)
}

/// An account's secrets, as configured, newest first.
type Secrets = Vec<String>;

/// Every account's secrets and verifier, from the environment and the keys
/// file, all read and checked before any is used: a mistake anywhere is an
/// error that leaves the keys in use as they are.
fn read_keys() -> Result<BTreeMap<String, (Secrets, Verifier)>, Box<dyn std::error::Error>> {
    // Set but not UTF-8 is a mistake to say, not an empty list.
    let keys = match std::env::var("CLINK_TENANT_KEYS") {
        Ok(keys) => keys,
        Err(std::env::VarError::NotPresent) => String::new(),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("CLINK_TENANT_KEYS is not valid UTF-8".into())
        }
    };
    // The file's secrets first: a rotation done while it runs brings the
    // new secret in the file, newer than the environment's.
    let mut accounts = BTreeMap::new();
    if let Some(path) = std::env::var_os("CLINK_TENANT_KEYS_FILE") {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read CLINK_TENANT_KEYS_FILE: {e}"))?;
        accounts = parse_pairs(&text, "CLINK_TENANT_KEYS_FILE")?;
    }
    for (account, secrets) in parse_pairs(&keys, "CLINK_TENANT_KEYS")? {
        let listed: &mut Secrets = accounts.entry(account).or_default();
        // The file's newest secret comes first, unless the environment
        // lists it among its older ones: then the environment was rotated
        // past the file, and its newest is the current one. (Otherwise the
        // older ones' expiry would end the new secret, not the old.)
        let file_is_older = listed
            .first()
            .is_some_and(|newest| secrets.iter().skip(1).any(|older| older == newest));
        let (first, then) = if file_is_older {
            (secrets, std::mem::take(listed))
        } else {
            (std::mem::take(listed), secrets)
        };
        for secret in first.into_iter().chain(then) {
            if !listed.contains(&secret) {
                listed.push(secret);
            }
        }
    }
    let expire = old_keys_expire()?;
    let mut never = Vec::new();
    let mut verifiers = BTreeMap::new();
    for (account, secrets) in accounts {
        // The account id was checked, so it prints as itself; the errors
        // of a secret never quote it.
        let key = |secret: &str| SigningKey::new(secret).map_err(|e| format!("{account}: {e}"));
        let mut each = secrets.iter();
        let first = each.next().ok_or("an account without a secret")?;
        let mut verifier = Verifier::from_key(&key(first)?);
        for secret in each {
            verifier = verifier.add_key(key(secret)?);
        }
        if secrets.len() > 1 {
            match expire {
                Some(at) => verifier = verifier.expire_older_keys_at(at),
                None => never.push(account.clone()),
            }
        }
        verifiers.insert(account, (secrets, verifier));
    }
    if !never.is_empty() {
        // The account ids were checked: they print as themselves.
        eprintln!(
            "warning: the older secrets of {} never expire: set {OLD_KEYS_EXPIRE} to the end of \
             the rotation's grace (an RFC 3339 time, such as 2026-12-31T00:00:00Z)",
            never.join(", ")
        );
    }
    Ok(verifiers)
}

/// The variable that ends a rotation's grace.
const OLD_KEYS_EXPIRE: &str = "CLINK_TENANT_OLD_KEYS_EXPIRE";

/// When the older secrets of an account listed more than once stop being
/// accepted: `CLINK_TENANT_OLD_KEYS_EXPIRE`, an RFC 3339 time; `None` when
/// it is not set. A value that is no such time is an error.
fn old_keys_expire() -> Result<Option<std::time::SystemTime>, String> {
    let value = match std::env::var(OLD_KEYS_EXPIRE) {
        Ok(value) if !value.trim().is_empty() => value,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!("{OLD_KEYS_EXPIRE} is not valid UTF-8"))
        }
        _ => return Ok(None),
    };
    clink_webhooks::Timestamp::parse_rfc3339(value.trim())
        .map(|at| Some(at.to_system_time()))
        .map_err(|_| {
            format!(
                "{OLD_KEYS_EXPIRE} must be an RFC 3339 time (2026-12-31T00:00:00Z), got {}",
                printable(&value)
            )
        })
}

/// What a load made `keys` hold, and what it changed.
struct Loaded {
    /// Each account's secrets, as `keys` holds them now.
    secrets: BTreeMap<String, Secrets>,
    /// The accounts added, removed, or whose secrets changed.
    changed: Vec<String>,
}

impl Loaded {
    /// The accounts, in order.
    fn accounts(&self) -> Vec<String> {
        self.secrets.keys().cloned().collect()
    }
}

/// Reads the keys ([`read_keys`]) and, only if all of them are right, makes
/// `keys` hold them and nothing else: `previous` is what it held.
fn load(
    keys: &KeyMap, previous: &BTreeMap<String, Secrets>,
) -> Result<Loaded, Box<dyn std::error::Error>> {
    let read = read_keys()?;
    let mut secrets = BTreeMap::new();
    let mut changed = Vec::new();
    for (account, (given, verifier)) in read {
        if previous.get(&account) != Some(&given) {
            changed.push(account.clone());
        }
        // Cannot fail: `parse_pairs` checked the id with `is_valid_account`,
        // the one check `insert` makes.
        keys.insert(account.clone(), verifier)?;
        secrets.insert(account, given);
    }
    for gone in previous.keys().filter(|a| !secrets.contains_key(*a)) {
        keys.remove(gone);
        changed.push(gone.clone());
    }
    Ok(Loaded { secrets, changed })
}

/// How the cached "database" source looks an account up.
type Fetch = Box<
    dyn Fn(String) -> BoxFuture<'static, Result<Option<Verifier>, std::io::Error>> + Send + Sync,
>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The crate logs through `tracing`: without a subscriber, a failed
    // handler or a refused delivery prints nothing. Colour only on a terminal.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(lines::Stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // Whatever stops it from starting is said on one line, and it exits 1.
    let code = match run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    };
    // What waits for stdout and stderr is written: a stream nobody reads
    // keeps the receiver from exiting for a second at most.
    lines::flush(Duration::from_secs(1));
    code
}

/// The value of `var`, `None` when it is not set (or empty); a value that
/// is not `what` is an error naming the variable, with the value as it is
/// (escaped).
fn env_parsed<T: std::str::FromStr>(var: &str, what: &str) -> Result<Option<T>, String> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{var} is not valid UTF-8")),
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{var} must be {what}, got {}", printable(&value))),
    }
}

/// Runs the receiver until it is stopped; the status to exit with.
async fn run() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let port: u16 = env_parsed("PORT", "a port number")?.unwrap_or(3000);
    let bind: std::net::IpAddr = env_parsed(
        "CLINK_BIND",
        "an IP address to listen on (127.0.0.1, 0.0.0.0, ::)",
    )?
    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    let keys = KeyMap::new();
    let mut loaded = load(&keys, &BTreeMap::new())?.secrets;
    if loaded.is_empty() {
        return Err("no accounts: set CLINK_TENANT_KEYS to account=secret pairs".into());
    }
    eprintln!(
        "accounts: {}",
        loaded.keys().cloned().collect::<Vec<_>>().join(", ")
    );

    // One store for deduplication and freshness; keys include the account.
    let store = Arc::new(MemoryStore::new());
    let router = EventRouter::new()
        .ordering(Arc::clone(&store))
        .on_every_type(Handled);
    let lookups = Arc::new(AtomicU64::new(0));
    // With CLINK_TENANT_LOOKUP_MS, how to make the cached "database" source.
    // Checked whether or not the lookup is on: a mistyped setting stops it.
    let fails = match env_parsed::<u8>("CLINK_TENANT_LOOKUP_FAILS", "1 or 0")? {
        None | Some(0) => false,
        Some(1) => true,
        Some(other) => {
            return Err(format!("CLINK_TENANT_LOOKUP_FAILS must be 1 or 0, got {other}").into())
        }
    };
    // The account ids the lookup's precheck lets through, replaced on reload.
    let known = Arc::new(RwLock::new(loaded.keys().cloned().collect::<HashSet<_>>()));
    let lookup = env_parsed("CLINK_TENANT_LOOKUP_MS", "a number of milliseconds")?.map(|ms| {
        let delay = Duration::from_millis(ms);
        database(
            keys.clone(),
            Arc::clone(&known),
            delay,
            fails,
            Arc::clone(&lookups),
        )
    });
    let looked_up = lookup.is_some();
    let source: Arc<dyn KeySource> = match &lookup {
        Some(cached) => cached.clone(),
        None => Arc::new(keys.clone()),
    };
    let layer = ClinkLayer::with_key_source(AccountFrom::LastPathSegment, source);
    let service = layer.store(store).route(router);
    let app = Router::new().route_service("/webhooks/clink/{account}", service);

    let addr = std::net::SocketAddr::from((bind, port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (PORT, CLINK_BIND): {e}"))?;
    let server = Server::new().shutdown_timeout(STOP_WITHIN)?;
    // Listened for before saying where it listens: the first stops it
    // gracefully, a second at once.
    let (graceful, at_once) =
        stop_signals().map_err(|e| format!("cannot listen for Ctrl-C and SIGTERM: {e}"))?;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup())?;
        let keys = keys.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match load(&keys, &loaded) {
                    Ok(now) => {
                        let accounts = now.accounts();
                        // The accounts now configured as the precheck, then,
                        // the "database" holding the new keys, each changed
                        // account forgotten, so that nothing cached of it
                        // before the reload is used after it.
                        *known.write().unwrap_or_else(PoisonError::into_inner) =
                            accounts.iter().cloned().collect();
                        if let Some(cached) = &lookup {
                            for account in &now.changed {
                                cached.forget(account);
                            }
                        }
                        loaded = now.secrets;
                        eprintln!("reloaded keys: {}", accounts.join(", "));
                    }
                    Err(error) => eprintln!("keys not reloaded: {error}"),
                }
            }
        });
    }
    eprintln!(
        "listening on http://{}/webhooks/clink/{{account}}",
        listener.local_addr()?
    );
    // Slow and idle clients are cut off, accept errors never stop it, and a
    // stop waits at most STOP_WITHIN for deliveries in progress.
    let stopped_at_once = tokio::select! {
        // A graceful stop that ends as a second signal comes is still one.
        biased;
        () = server.serve(listener, app, graceful) => false,
        // The deliveries in progress get no answer, and Clink retries them.
        () = at_once => true,
    };
    if looked_up {
        eprintln!("key lookups: {}", lookups.load(Ordering::Relaxed));
    }
    if stopped_at_once {
        // 130, as a shell reports a command Ctrl-C ended.
        eprintln!("stopped at once");
        return Ok(std::process::ExitCode::from(130));
    }
    eprintln!("stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

/// How long a stop waits for the deliveries in progress, from the signal:
/// well inside the 10 s Docker gives a container after SIGTERM before it
/// kills it (Kubernetes gives 30 s).
const STOP_WITHIN: Duration = Duration::from_secs(4);

/// The accounts' keys as a database would give them: each lookup takes
/// `delay`, fails when `fails`, and is counted in `lookups`. In front of
/// it, a `CachedKeySource` with its default limits, whose precheck lets
/// through the account ids in `known` alone.
fn database(
    accounts: KeyMap, known: Arc<RwLock<HashSet<String>>>, delay: Duration, fails: bool,
    lookups: Arc<AtomicU64>,
) -> Arc<CachedKeySource<Fetch>> {
    let fetch: Fetch = Box::new(move |account: String| {
        lookups.fetch_add(1, Ordering::Relaxed);
        let found = accounts.get(&account).map(|verifier| (*verifier).clone());
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if fails {
                return Err(std::io::Error::other(format!(
                    "the database is unreachable (looking up {account})"
                )));
            }
            Ok(found)
        })
    });
    // Any other name is refused before the cache and the lookup limits.
    Arc::new(CachedKeySource::new(fetch).precheck(move |account| {
        known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(account)
    }))
}

/// Ctrl-C and SIGTERM (how Docker, Kubernetes and systemd stop a
/// process), listened for from when this is called, so that a signal sent
/// as soon as the address is printed is not missed. The first resolves the
/// first future returned, a graceful stop, and says so on stderr; a second,
/// for whoever will not wait for that, sent once the line saying it can be
/// is printed half a second later ([`SAME_STOP_WITHIN`]; one sent with the
/// first is the same stop), resolves the second: a stop at once.
/// (The runtime's handlers replace the default one, which would have ended
/// the process on Ctrl-C; without the second, nothing would.)
fn stop_signals() -> std::io::Result<(
    impl std::future::Future<Output = ()>,
    impl std::future::Future<Output = ()>,
)> {
    let mut signals = Signals::new()?;
    let (first, graceful) = tokio::sync::oneshot::channel::<()>();
    let (second, at_once) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("stopping");
        let _ = first.send(());
        // Signals sent with the first (a Ctrl-C to the process group, and
        // a SIGTERM a supervisor passes on) are the same stop: a second
        // one is one sent after the line that says it can be.
        let window = tokio::time::sleep(SAME_STOP_WITHIN);
        tokio::pin!(window);
        loop {
            tokio::select! {
                () = &mut window => break,
                () = signals.next() => {}
            }
        }
        eprintln!("Ctrl-C again to stop at once");
        signals.next().await;
        let _ = second.send(());
    });
    // A channel closed without a signal (the runtime is shutting down)
    // stops nothing.
    let on = |signal: tokio::sync::oneshot::Receiver<()>| async move {
        if signal.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    Ok((on(graceful), on(at_once)))
}

/// Signals within this long of the first are the same stop, not a second.
const SAME_STOP_WITHIN: Duration = Duration::from_millis(500);

/// Ctrl-C and SIGTERM, received one at a time.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the next Ctrl-C or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            // Never a stop the user did not ask for.
            std::future::pending::<()>().await;
        }
    }
}
