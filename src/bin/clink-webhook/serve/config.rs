//! The gateway's configuration: one TOML file, every value also settable
//! by an environment variable (`CLINK_` and the name in upper case; the
//! environment wins), validated as a whole before anything starts, and
//! printed with its secrets masked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clink_webhooks::accounts::is_valid_account;
use clink_webhooks::{SigningKey, Timestamp, Verifier};
use serde_json::json;
use zeroize::Zeroizing;

use crate::output::escaped;
use crate::urls::{
    http_parts, masked_url, nats_servers, postgres_config, refused_url, shown_value,
    with_user_info_encoded, NatsServers,
};

/// One setting: its name in the file, the environment variable that sets
/// it too, its default, and whether its value is a secret.
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) default: Option<&'static str>,
    secret: bool,
}

impl Field {
    /// `CLINK_` and the name in upper case; `DATABASE_URL` as everywhere.
    pub(crate) fn env(&self) -> String {
        if self.name == "database_url" {
            "DATABASE_URL".to_owned()
        } else {
            format!("CLINK_{}", self.name.to_ascii_uppercase())
        }
    }
}

const fn field(name: &'static str, default: Option<&'static str>, secret: bool) -> Field {
    Field {
        name,
        default,
        secret,
    }
}

/// Every setting, in the order the effective configuration is printed.
pub(crate) const FIELDS: &[Field] = &[
    field("serve_listen", Some("127.0.0.1:3000"), false),
    field("serve_path", Some("/webhooks/clink"), false),
    field("admin_listen", None, false),
    field("webhook_signing_key", None, true),
    field("signing_keys", None, true),
    field("accounts_file", None, false),
    field("tolerance_s", Some("300"), false),
    field("inbox", None, false),
    field("database_url", None, true),
    field("database_ca_file", None, false),
    field("inbox_retention_hours", Some("168"), false),
    field("destination", None, true),
    field("destination_timeout_ms", Some("10000"), false),
    field("destination_signing_key", None, true),
    field("nats_stream", Some("CLINK"), false),
    field("nats_subject", Some("clink.{account}.{type}"), false),
    field("nats_duplicate_window_s", Some("600"), false),
    field("nats_replicas", Some("1"), false),
    field("redis_stream", Some("clink:{account}"), false),
    field("redis_dedup_hours", Some("168"), false),
    field("redis_wait_replicas", Some("0"), false),
    field("settle_ms", Some("1000"), false),
    field("concurrency", Some("8"), false),
    field("lease_ms", Some("30000"), false),
    field("max_attempts", Some("1000"), false),
    field("backoff_ms", Some("1000"), false),
    field("max_backoff_ms", Some("60000"), false),
    field("body_limit_bytes", Some("1048576"), false),
    field("body_budget_bytes", Some("67108864"), false),
    field("body_budget_bodies", Some("1024"), false),
    field("body_timeout_ms", Some("30000"), false),
    field("store_timeout_ms", Some("5000"), false),
    field("header_read_timeout_ms", Some("10000"), false),
    field("max_connections", Some("1024"), false),
    field("shutdown_timeout_ms", Some("10000"), false),
    field("metrics", Some("true"), false),
    field("console_token", None, true),
    field("console_secure_cookie", Some("true"), false),
    field("console_client_header", None, false),
    field("console_trusted_proxies", None, false),
    field("log", Some("warn"), false),
];

/// Whether two listening addresses take the same port: the same port (not
/// 0, which picks a free one) on the same address, or either of them on
/// every address (`0.0.0.0`, `[::]`).
fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip().to_canonical() == b.ip().to_canonical()
            || a.ip().is_unspecified()
            || b.ip().is_unspecified())
}

/// Where a value came from.
#[derive(Debug, Clone, Default)]
pub(crate) enum Origin {
    Env(String),
    File(PathBuf),
    #[default]
    Default,
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Self::Env(name) => format!("from the environment variable {name}"),
            Self::File(path) => format!("in {}", path.display()),
            Self::Default => "the default".to_owned(),
        }
    }

    fn short(&self) -> String {
        match self {
            Self::Env(name) => format!("env {name}"),
            Self::File(_) => "file".to_owned(),
            Self::Default => "default".to_owned(),
        }
    }
}

/// A wrong configuration: which setting, where it came from, and why.
#[derive(Debug)]
pub(crate) struct ConfigProblem(pub(crate) String);

fn problem(name: &str, origin: &Origin, message: impl std::fmt::Display) -> ConfigProblem {
    ConfigProblem(format!(
        "configuration: {name} ({}): {message}",
        origin.describe()
    ))
}

/// A value as given: text from the environment, or a TOML value.
enum Raw {
    Text(String),
    Toml(toml::Value),
}

/// The settings as given, before they are read.
struct Given {
    file: Option<(PathBuf, toml::Table)>,
    env: BTreeMap<&'static str, String>,
}

impl Given {
    fn get(&self, field: &Field) -> Option<(Raw, Origin)> {
        if let Some(text) = self.env.get(field.name) {
            return Some((Raw::Text(text.clone()), Origin::Env(field.env())));
        }
        let (path, table) = self.file.as_ref()?;
        let value = table.get(field.name)?;
        Some((Raw::Toml(value.clone()), Origin::File(path.clone())))
    }
}

/// A TOML parse error, by line and column, without quoting the file (a
/// line of it may hold a secret).
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end_matches('\n').replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

fn read_toml(path: &Path, what: &str) -> Result<toml::Table, ConfigProblem> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigProblem(format!(
            "configuration: cannot read the {what} {}: {error}",
            path.display()
        ))
    })?;
    let text = Zeroizing::new(text);
    toml::from_str::<toml::Table>(&text).map_err(|error| {
        ConfigProblem(format!(
            "configuration: the {what} {} is not valid TOML: {}",
            path.display(),
            toml_error(&text, &error)
        ))
    })
}

/// A signing key as configured.
#[derive(Clone)]
pub(crate) struct KeySpec {
    secret: Zeroizing<String>,
    name: Option<String>,
    expires: Option<Timestamp>,
    /// The latest delivery stamp it is accepted for: a key Clink rotated
    /// out signs nothing after the rotation.
    signed_until: Option<Timestamp>,
}

impl KeySpec {
    fn signing_key(&self) -> Result<SigningKey, String> {
        let mut key = SigningKey::new(self.secret.as_bytes()).map_err(|e| e.to_string())?;
        if let Some(name) = &self.name {
            key = key.named(name).map_err(|e| e.to_string())?;
        }
        if let Some(expires) = self.expires {
            key = key.expires_at(expires.to_system_time());
        }
        if let Some(signed_until) = self.signed_until {
            key = key.signed_until(signed_until.to_system_time());
        }
        Ok(key)
    }

    /// The secret, to sign a forward with.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// The key's name as the layer records it on a verified event: its
    /// name, or the fingerprint of its secret when it has none.
    pub(crate) fn recorded_name(&self) -> Option<String> {
        self.signing_key().ok().map(|key| key.name().to_owned())
    }

    /// Whether a delivery stamped `now` may be signed with the key: it has
    /// not expired, and a key rotated out is within its `signed_until`
    /// (what its verifier accepts).
    pub(crate) fn signs_at(&self, now: Timestamp) -> bool {
        self.expires.is_none_or(|expires| now < expires)
            && self.signed_until.is_none_or(|until| now <= until)
    }

    fn describe(&self) -> String {
        let mut text = match &self.name {
            Some(name) => format!("{} ([redacted])", escaped(name)),
            None => "[redacted]".to_owned(),
        };
        if let Some(expires) = self.expires {
            let _ = write!(text, " expires {expires}");
        }
        if let Some(signed_until) = self.signed_until {
            let _ = write!(text, " signed until {signed_until}");
        }
        text
    }
}

/// A verifier with `keys` (newest first) and the timestamp tolerance.
pub(crate) fn verifier(keys: &[KeySpec], tolerance: Duration) -> Result<Verifier, String> {
    let mut keys = keys.iter();
    let first = keys.next().ok_or("no signing key")?;
    let mut verifier = Verifier::from_key(&first.signing_key()?);
    for key in keys {
        verifier = verifier.add_key(key.signing_key()?);
    }
    Ok(verifier.tolerance(tolerance))
}

/// Whether `entry` is an IP address or a range of them (`10.0.0.0/8`,
/// `fd00::/8`), as `Console::trusted_proxies` takes them.
fn proxy_entry(entry: &str) -> bool {
    let (address, bits) = entry.split_once('/').unwrap_or((entry, ""));
    let Ok(address) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    let most = if address.is_ipv4() { 32 } else { 128 };
    bits.is_empty() || bits.parse::<u8>().is_ok_and(|bits| bits <= most)
}

/// A key from one secret as given, without the whitespace around it: a
/// secret read from a file (`CLINK_..._KEY=$(cat file)`, a mounted
/// secret) often ends in a newline, which would otherwise be part of the
/// key. An empty secret is refused; the error never quotes the secret.
fn one_key(text: &str) -> Result<KeySpec, String> {
    let secret = text.trim();
    if secret.is_empty() {
        return Err("an empty signing key".to_owned());
    }
    Ok(KeySpec {
        secret: Zeroizing::new(secret.to_owned()),
        name: None,
        expires: None,
        signed_until: None,
    })
}

/// Keys from a comma-separated list of secrets, newest first, each read
/// as [`one_key`] reads it.
fn key_list(text: &str) -> Result<Vec<KeySpec>, String> {
    text.split(',')
        .map(|secret| {
            one_key(secret).map_err(|_| "an empty signing key (a stray comma?)".to_owned())
        })
        .collect()
}

/// Keys from a TOML array of tables `{ secret, name, expires, signed_until }`.
fn key_tables(value: &toml::Value) -> Result<Vec<KeySpec>, String> {
    let toml::Value::Array(items) = value else {
        return Err(
            "expected an array of tables { secret = \"...\", name = \"...\", expires = \"RFC 3339\", \
             signed_until = \"RFC 3339\" }"
                .to_owned(),
        );
    };
    if items.is_empty() {
        return Err("no signing key".to_owned());
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let at = |message: String| format!("key {}: {message}", index + 1);
            let toml::Value::Table(table) = item else {
                return Err(at(
                    "expected a table { secret, name, expires, signed_until }".to_owned(),
                ));
            };
            if let Some(unknown) = table
                .keys()
                .find(|k| !["secret", "name", "expires", "signed_until"].contains(&k.as_str()))
            {
                return Err(at(format!(
                    "unknown field {}; a key has secret, name, expires and signed_until",
                    escaped(unknown)
                )));
            }
            let text = |name: &str| match table.get(name) {
                None => Ok(None),
                Some(toml::Value::String(text)) => Ok(Some(text.clone())),
                Some(_) => Err(at(format!("{name} must be a string"))),
            };
            // Without the whitespace around it, as a secret from the
            // environment (a multi-line TOML string ends with a newline,
            // which would verify nothing).
            let secret = text("secret")?
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| at("secret is missing or empty".to_owned()))?;
            let time = |field: &str| {
                let text = match table.get(field) {
                    None => return Ok(None),
                    Some(toml::Value::Datetime(datetime)) => datetime.to_string(),
                    Some(toml::Value::String(text)) => text.clone(),
                    Some(_) => return Err(at(format!("{field} must be an RFC 3339 time"))),
                };
                text.parse::<Timestamp>().map(Some).map_err(|_| {
                    at(format!(
                        "{field} {}: not an RFC 3339 time such as 2026-03-01T00:00:00Z",
                        shown_value(&text)
                    ))
                })
            };
            let key = KeySpec {
                secret: Zeroizing::new(secret),
                name: text("name")?,
                expires: time("expires")?,
                signed_until: time("signed_until")?,
            };
            key.signing_key().map_err(at)?;
            Ok(key)
        })
        .collect()
}

/// Where the layer's keys come from.
pub(crate) enum Keys {
    /// One endpoint: these keys, newest first.
    One(Vec<KeySpec>),
    /// Many accounts, each with its keys, from a file re-read on SIGHUP.
    PerAccount(PathBuf),
}

/// Reads an accounts file: `[ACCOUNT]` tables, each with `signing_key`
/// (comma-separated, newest first) or `signing_keys` (tables).
pub(crate) fn read_accounts(path: &Path) -> Result<BTreeMap<String, Vec<KeySpec>>, ConfigProblem> {
    let table = read_toml(path, "accounts file")?;
    let origin = Origin::File(path.to_owned());
    let mut accounts = BTreeMap::new();
    for (account, value) in &table {
        let name = format!("account {}", escaped(account));
        if !is_valid_account(account) {
            return Err(problem(
                &name,
                &origin,
                "an account id is 1 to 128 ASCII letters, digits, `_`, `-` and `.`",
            ));
        }
        let toml::Value::Table(settings) = value else {
            return Err(problem(
                &name,
                &origin,
                "expected a table with signing_key or signing_keys",
            ));
        };
        let keys = match (settings.get("signing_key"), settings.get("signing_keys")) {
            (Some(toml::Value::String(text)), None) => key_list(text),
            (Some(_), None) => Err("signing_key must be a string".to_owned()),
            (None, Some(tables)) => key_tables(tables),
            (Some(_), Some(_)) => Err("give signing_key or signing_keys, not both".to_owned()),
            (None, None) => Err("signing_key or signing_keys is missing".to_owned()),
        }
        .map_err(|message| problem(&name, &origin, message))?;
        if let Some(unknown) = settings
            .keys()
            .find(|k| !["signing_key", "signing_keys"].contains(&k.as_str()))
        {
            return Err(problem(
                &name,
                &origin,
                format!("unknown setting {}", escaped(unknown)),
            ));
        }
        verifier(&keys, Duration::from_secs(300)).map_err(|m| problem(&name, &origin, m))?;
        accounts.insert(account.clone(), keys);
    }
    if accounts.is_empty() {
        return Err(problem(
            "accounts_file",
            &origin,
            "no account: add [ACCOUNT] tables with signing_key",
        ));
    }
    Ok(accounts)
}

/// Where the inbox is.
pub(crate) enum InboxSpec {
    Sqlite(PathBuf),
    /// `database_url` as given (read with [`postgres_config`]).
    Postgres(Zeroizing<String>),
}

/// Where events go: the destination as metrics, logs and `/health` name
/// it (its URL with every password masked; an HTTP one's path, which may
/// be a secret, as `/…`), and how to reach it.
#[derive(Clone)]
pub(crate) struct DestinationSpec {
    pub(crate) name: String,
    pub(crate) kind: DestinationKind,
}

/// How to reach a destination.
#[derive(Clone)]
pub(crate) enum DestinationKind {
    /// The URL without its user info, and the `Authorization` value its
    /// user info makes, if it has one.
    Http {
        uri: http::Uri,
        authorization: Option<Zeroizing<String>>,
    },
    Nats(NatsServers),
    /// The URL with its user info percent-encoded for the Redis client.
    Redis(Zeroizing<String>),
    /// A Redis Cluster: one URL per node it lists.
    RedisCluster(Vec<Zeroizing<String>>),
}

/// The console, when `console_token` is set.
pub(crate) struct ConsoleSpec {
    pub(crate) token: Zeroizing<String>,
    pub(crate) secure_cookie: bool,
    /// The header the proxy in front puts the client's address in.
    pub(crate) client_header: Option<String>,
    /// The proxies whose header is believed (every connection's when
    /// empty).
    pub(crate) trusted_proxies: Vec<String>,
}

/// The gateway's configuration, read and checked.
pub(crate) struct Config {
    pub(crate) listen: SocketAddr,
    /// Where `/health`, `/ready`, `/metrics` and `/console` are served
    /// instead of beside the deliveries, when set.
    pub(crate) admin_listen: Option<SocketAddr>,
    pub(crate) path: String,
    pub(crate) keys: Keys,
    pub(crate) tolerance: Duration,
    pub(crate) inbox: InboxSpec,
    /// The CA file TLS to the inbox's PostgreSQL trusts in place of the
    /// system's roots (TLS is then required).
    pub(crate) database_ca_file: Option<PathBuf>,
    pub(crate) inbox_retention: Duration,
    pub(crate) destination: DestinationSpec,
    pub(crate) destination_timeout: Duration,
    /// The key an HTTP destination's forwards are signed with, when not
    /// the one that verified each event.
    pub(crate) destination_key: Option<KeySpec>,
    pub(crate) nats_stream: String,
    pub(crate) nats_subject: String,
    /// The subjects the stream must hold for every subject `nats_subject`
    /// makes (see [`stream_subject`]).
    pub(crate) nats_stream_subject: String,
    pub(crate) nats_duplicate_window: Duration,
    /// How many servers keep the stream the gateway makes, and the least
    /// an existing one must have.
    pub(crate) nats_replicas: usize,
    pub(crate) redis_stream: String,
    pub(crate) redis_dedup: Duration,
    /// How many replicas must have an entry (Redis's `WAIT`) before its
    /// event counts as published; 0: the primary's answer is enough.
    pub(crate) redis_wait_replicas: u64,
    pub(crate) reorder_window: Duration,
    pub(crate) concurrency: usize,
    pub(crate) lease: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) body_limit: usize,
    pub(crate) body_budget: (usize, usize),
    pub(crate) body_timeout: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) metrics: bool,
    #[cfg_attr(not(feature = "console"), allow(dead_code))]
    pub(crate) console: Option<ConsoleSpec>,
    pub(crate) log: String,
    /// Each setting's shown value and where it came from, in [`FIELDS`] order.
    pub(crate) effective: Vec<(&'static str, String, Origin)>,
}

/// Reads the settings one by one, noting each effective value.
struct Reader {
    given: Given,
    effective: Vec<(&'static str, String, Origin)>,
}

fn field_named(name: &str) -> &'static Field {
    FIELDS
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| unreachable!("no field {name}"))
}

impl Reader {
    /// The raw value of `name`, its default as text when not given.
    fn raw(&self, name: &str) -> Option<(Raw, Origin)> {
        let field = field_named(name);
        self.given.get(field).or_else(|| {
            field
                .default
                .map(|d| (Raw::Text(d.to_owned()), Origin::Default))
        })
    }

    fn note(&mut self, name: &str, shown: String, origin: Origin) {
        let field = field_named(name);
        self.effective.push((field.name, shown, origin));
    }

    fn text(&mut self, name: &str) -> Result<Option<(String, Origin)>, ConfigProblem> {
        let Some((raw, origin)) = self.raw(name) else {
            return Ok(None);
        };
        let text = match raw {
            Raw::Text(text) | Raw::Toml(toml::Value::String(text)) => text,
            Raw::Toml(_) => return Err(problem(name, &origin, "expected a string")),
        };
        Ok(Some((text, origin)))
    }

    /// A string, shown as is (escaped; a URL masked).
    fn plain(&mut self, name: &str) -> Result<Option<(String, Origin)>, ConfigProblem> {
        let found = self.text(name)?;
        if let Some((text, origin)) = &found {
            self.note(name, shown_value(text), origin.clone());
        }
        Ok(found)
    }

    fn number(&mut self, name: &str, low: u64, high: u64) -> Result<u64, ConfigProblem> {
        let (raw, origin) = self
            .raw(name)
            .unwrap_or_else(|| unreachable!("{name} has a default"));
        let value = match raw {
            Raw::Toml(toml::Value::Integer(n)) => u64::try_from(n).ok(),
            Raw::Text(text) | Raw::Toml(toml::Value::String(text)) => text.trim().parse().ok(),
            Raw::Toml(_) => None,
        };
        let value = value.filter(|n| (low..=high).contains(n)).ok_or_else(|| {
            problem(
                name,
                &origin,
                format!("expected a whole number from {low} to {high}"),
            )
        })?;
        self.note(name, value.to_string(), origin);
        Ok(value)
    }

    fn millis(&mut self, name: &str, low: u64, high: u64) -> Result<Duration, ConfigProblem> {
        self.number(name, low, high).map(Duration::from_millis)
    }

    fn flag(&mut self, name: &str) -> Result<bool, ConfigProblem> {
        let (raw, origin) = self
            .raw(name)
            .unwrap_or_else(|| unreachable!("{name} has a default"));
        let value = match raw {
            Raw::Toml(toml::Value::Boolean(b)) => Some(b),
            Raw::Text(text) | Raw::Toml(toml::Value::String(text)) => {
                match text.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => Some(true),
                    "false" | "0" | "no" | "off" => Some(false),
                    _ => None,
                }
            }
            Raw::Toml(_) => None,
        };
        let value = value.ok_or_else(|| problem(name, &origin, "expected true or false"))?;
        self.note(name, value.to_string(), origin);
        Ok(value)
    }
}

/// The settings given in the environment, `get` reading a variable; one
/// that is not valid UTF-8 is refused, by name (its value is not shown).
fn env_values(
    get: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<BTreeMap<&'static str, String>, ConfigProblem> {
    let mut env = BTreeMap::new();
    for field in FIELDS {
        let name = field.env();
        let Some(value) = get(&name) else {
            continue;
        };
        let value = value.into_string().map_err(|_| {
            problem(
                field.name,
                &Origin::Env(name.clone()),
                "not valid UTF-8 (its value is not shown)",
            )
        })?;
        env.insert(field.name, value);
    }
    Ok(env)
}

const DAY_HOURS: u64 = 24;
const YEAR_HOURS: u64 = 366 * DAY_HOURS;

impl Config {
    /// Reads the file at `path` (if any) and the environment.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self, ConfigProblem> {
        let env = env_values(|name| std::env::var_os(name))?;
        let file = path
            .map(|path| read_toml(path, "configuration file").map(|table| (path.to_owned(), table)))
            .transpose()?;
        if let Some((path, table)) = &file {
            if let Some(unknown) = table
                .keys()
                .find(|key| !FIELDS.iter().any(|f| f.name == key.as_str()))
            {
                return Err(ConfigProblem(format!(
                    "configuration: {} in {}: unknown setting; the settings are listed by `clink-webhook serve --help`",
                    escaped(unknown),
                    path.display()
                )));
            }
        }
        Self::read(Given { file, env })
    }

    #[allow(clippy::too_many_lines)]
    fn read(given: Given) -> Result<Self, ConfigProblem> {
        let mut r = Reader {
            given,
            effective: Vec::new(),
        };
        let (listen, origin) = r.plain("serve_listen")?.unwrap_or_default();
        let listen: SocketAddr = listen.parse().map_err(|_| {
            problem(
                "serve_listen",
                &origin,
                "expected an address and port such as 127.0.0.1:3000 or [::]:3000",
            )
        })?;
        // Empty is unset: the admin routes share the delivery port.
        let admin_listen = match r.plain("admin_listen")? {
            Some((admin, _)) if admin.trim().is_empty() => None,
            None => None,
            Some((admin, origin)) => {
                let admin: SocketAddr = admin.trim().parse().map_err(|_| {
                    problem(
                        "admin_listen",
                        &origin,
                        "expected an address and port such as 127.0.0.1:3001",
                    )
                })?;
                if clashes(admin, listen) {
                    return Err(problem(
                        "admin_listen",
                        &origin,
                        format!(
                            "port {} is serve_listen's ({listen}): give the admin routes a port \
                             of their own",
                            admin.port()
                        ),
                    ));
                }
                Some(admin)
            }
        };
        let (path, origin) = r.plain("serve_path")?.unwrap_or_default();
        let path_origin = origin.clone();
        // Compared with the request's path as sent (percent-encoded), so
        // only visible ASCII without `%` can ever match one.
        if !path.starts_with('/')
            || path.len() > 1 && path.ends_with('/')
            || path.contains(['?', '#', '%'])
            || !path.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(problem(
                "serve_path",
                &origin,
                "expected a path such as /webhooks/clink: starting with /, without a trailing /, \
                 in visible ASCII without ? # or %",
            ));
        }

        let tolerance = Duration::from_secs(r.number("tolerance_s", 1, 86_400)?);
        let keys = Self::read_keys(&mut r, tolerance)?;
        if path == "/" && matches!(keys, Keys::PerAccount(_)) {
            return Err(problem(
                "serve_path",
                &path_origin,
                "with accounts_file the account follows the path (/webhooks/clink/{account}): \
                 choose a path other than /",
            ));
        }

        let inbox =
            match r.plain("inbox")? {
                None => return Err(ConfigProblem(
                    "configuration: inbox is missing: set CLINK_INBOX (or inbox in the file) to \
                     sqlite:<path> or postgres"
                        .to_owned(),
                )),
                Some((text, origin)) => {
                    if let Some(file) = text.strip_prefix("sqlite:") {
                        if file.is_empty() {
                            return Err(problem(
                                "inbox",
                                &origin,
                                "sqlite: needs a file, as sqlite:/var/lib/clink/inbox.db",
                            ));
                        }
                        InboxSpec::Sqlite(PathBuf::from(file))
                    } else if text == "postgres" {
                        let Some((url, url_origin)) = r.text("database_url")? else {
                            return Err(problem(
                                "inbox",
                                &origin,
                                "postgres needs DATABASE_URL (or database_url in the file)",
                            ));
                        };
                        // Read up to the last `@`, as the docs say: the
                        // PostgreSQL client ends the user info at the first.
                        let url = Zeroizing::new(url);
                        if postgres_config(&url).is_none() {
                            return Err(problem(
                            "database_url",
                            &url_origin,
                            "not a PostgreSQL connection string (postgres://user:password@host/db)",
                        ));
                        }
                        r.note("database_url", masked_url(&url), url_origin);
                        InboxSpec::Postgres(url)
                    } else {
                        return Err(problem(
                            "inbox",
                            &origin,
                            format!(
                                "{}: expected sqlite:<path> or postgres",
                                // `user:password@host` or `password=...`
                                // without a scheme: not repeated.
                                if !text.contains("://") && text.contains(['@', '=']) {
                                    "[redacted]".to_owned()
                                } else {
                                    shown_value(&text)
                                }
                            ),
                        ));
                    }
                }
            };
        let database_ca_file = match r.plain("database_ca_file")? {
            Some((file, _)) if file.trim().is_empty() => None,
            None => None,
            Some((file, origin)) => {
                if !matches!(inbox, InboxSpec::Postgres(_)) {
                    return Err(problem(
                        "database_ca_file",
                        &origin,
                        "it is for a PostgreSQL inbox (inbox = postgres)",
                    ));
                }
                let file = PathBuf::from(file.trim());
                let mut probe = tokio_postgres::Config::new();
                clink_webhooks::store::postgres_tls(&mut probe, Some(&file))
                    .map_err(|m| problem("database_ca_file", &origin, m))?;
                Some(file)
            }
        };
        let inbox_retention =
            Duration::from_secs(3600 * r.number("inbox_retention_hours", 1, 10 * YEAR_HOURS)?);

        let destination =
            match r.text("destination")? {
                None => return Err(ConfigProblem(
                    "configuration: destination is missing: set CLINK_DESTINATION (or destination \
                     in the file) to http://..., https://..., nats://host:port or redis://..."
                        .to_owned(),
                )),
                Some((url, origin)) => {
                    let url = Zeroizing::new(url);
                    let spec =
                        parse_destination(&url).map_err(|m| problem("destination", &origin, m))?;
                    r.note("destination", spec.name.clone(), origin);
                    spec
                }
            };
        let destination_timeout = r.millis("destination_timeout_ms", 1, 3_600_000)?;
        let destination_key = match r.text("destination_signing_key")? {
            None => None,
            Some((secret, origin)) => {
                let secret = Zeroizing::new(secret);
                if !matches!(destination.kind, DestinationKind::Http { .. }) {
                    return Err(problem(
                        "destination_signing_key",
                        &origin,
                        "only an http:// or https:// destination is signed",
                    ));
                }
                // Read as the other keys are: trimmed, and not empty.
                let key =
                    one_key(&secret).map_err(|m| problem("destination_signing_key", &origin, m))?;
                key.signing_key()
                    .map_err(|m| problem("destination_signing_key", &origin, m))?;
                r.note("destination_signing_key", key.describe(), origin);
                Some(key)
            }
        };
        let (nats_stream, origin) = r.plain("nats_stream")?.unwrap_or_default();
        if nats_stream.is_empty()
            || nats_stream.len() > 64
            || !nats_stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(problem(
                "nats_stream",
                &origin,
                "a stream name is 1 to 64 ASCII letters, digits, `_` and `-`",
            ));
        }
        let (nats_subject, origin) = r.plain("nats_subject")?.unwrap_or_default();
        // With one key, the account is empty.
        let account_empty = matches!(keys, Keys::One(_));
        let nats_stream_subject = check_template(&nats_subject, &["account", "type"])
            .and_then(|()| stream_subject(&nats_subject, account_empty))
            .map_err(|m| problem("nats_subject", &origin, m))?;
        let nats_duplicate_window =
            Duration::from_secs(r.number("nats_duplicate_window_s", 1, 7 * 86_400)?);
        let nats_replicas = usize::try_from(r.number("nats_replicas", 1, 5)?).unwrap_or(1);
        let (redis_stream, origin) = r.plain("redis_stream")?.unwrap_or_default();
        check_template(&redis_stream, &["account", "type"])
            .map_err(|m| problem("redis_stream", &origin, m))?;
        if redis_stream.is_empty()
            || account_empty && redis_stream.replace("{account}", "").is_empty()
        {
            return Err(problem(
                "redis_stream",
                &origin,
                "a stream name is not empty (with one key, {account} is empty)",
            ));
        }
        let redis_dedup = Duration::from_secs(3600 * r.number("redis_dedup_hours", 1, YEAR_HOURS)?);
        let redis_wait_replicas = r.number("redis_wait_replicas", 0, 16)?;
        // In a Redis Cluster, WAIT goes to every primary, each over a
        // connection of its own: it would wait on shards the entry is not
        // in, and not surely on the connection that wrote it.
        if redis_wait_replicas > 0 && matches!(destination.kind, DestinationKind::RedisCluster(_)) {
            return Err(ConfigProblem(
                "configuration: redis_wait_replicas is for a single Redis server (redis://, \
                 rediss://), not a Redis Cluster: set it to 0, or make the cluster's nodes \
                 refuse a write without replicas (min-replicas-to-write)"
                    .to_owned(),
            ));
        }
        // An event whose XADD landed and whose answer was lost can die
        // (Redis unreachable for the whole retry span) and be replayed
        // later (the inbox keeps dead events until then). Its
        // marker, set at the XADD (and set again to the whole dedup time by
        // each run that finds it, so that a replay, which keeps a handled
        // event for another retention, keeps its marker as long), must
        // still be there, or the replay adds it again. The retry span (at
        // most max_attempts times max_backoff_ms) is not counted: the
        // README asks for it on top.
        if matches!(
            destination.kind,
            DestinationKind::Redis(_) | DestinationKind::RedisCluster(_)
        ) && redis_dedup < inbox_retention
        {
            return Err(ConfigProblem(format!(
                "configuration: redis_dedup_hours ({} h) must be at least inbox_retention_hours \
                 ({} h): a handled event can be replayed (with force) as long as the inbox keeps \
                 it, and one whose marker in Redis has expired by then is added to the stream \
                 again; raise redis_dedup_hours or lower inbox_retention_hours (and replay a dead \
                 event, which is kept until then, within redis_dedup_hours of its first attempt: \
                 its death can come the retry span later)",
                redis_dedup.as_secs() / 3600,
                inbox_retention.as_secs() / 3600
            )));
        }

        let reorder_window = r.millis("settle_ms", 0, 3_600_000)?;
        let concurrency = usize::try_from(r.number("concurrency", 1, 10_000)?).unwrap_or(1);
        let lease = r.millis("lease_ms", 1000, 3_600_000)?;
        if matches!(destination.kind, DestinationKind::Nats(_)) && nats_duplicate_window <= lease {
            return Err(ConfigProblem(format!(
                "configuration: nats_duplicate_window_s ({} s) must be longer than lease_ms ({} ms): \
                 an event republished after a crash must still be inside the stream's duplicate window",
                nats_duplicate_window.as_secs(),
                lease.as_millis()
            )));
        }
        let max_attempts = u32::try_from(r.number("max_attempts", 1, 1_000_000)?).unwrap_or(1);
        let backoff = r.millis("backoff_ms", 1, 86_400_000)?;
        let max_backoff = r.millis("max_backoff_ms", 1, 86_400_000)?;
        if max_backoff < backoff {
            return Err(ConfigProblem(format!(
                "configuration: max_backoff_ms ({}) must be at least backoff_ms ({})",
                max_backoff.as_millis(),
                backoff.as_millis()
            )));
        }
        let body_limit = usize::try_from(r.number("body_limit_bytes", 1, 1 << 30)?).unwrap_or(1);
        let budget_bytes = usize::try_from(r.number("body_budget_bytes", 1, 1 << 40)?).unwrap_or(1);
        let budget_bodies =
            usize::try_from(r.number("body_budget_bodies", 1, 1 << 20)?).unwrap_or(1);
        if budget_bytes < body_limit {
            return Err(ConfigProblem(format!(
                "configuration: body_budget_bytes ({budget_bytes}) must be at least body_limit_bytes ({body_limit})"
            )));
        }
        let body_timeout = r.millis("body_timeout_ms", 1, 3_600_000)?;
        let store_timeout = r.millis("store_timeout_ms", 1, 3_600_000)?;
        // The workers stop a handler before its lease ends by the longer
        // of a tenth of it and the inbox's call timeout (PostgreSQL's
        // store_timeout_ms; SQLite's inbox has none, its calls waiting
        // only for its one connection and another process's write), at
        // most half of it, so that its settle lands inside the lease: a
        // forward must have its answer, or its timeout, before then.
        let (spare, spare_text) = match &inbox {
            InboxSpec::Postgres(_) => (
                (lease / 10).max(store_timeout.min(lease / 2)),
                format!(
                    "the longer of a tenth of it and store_timeout_ms ({} ms), at most half of it",
                    store_timeout.as_millis()
                ),
            ),
            InboxSpec::Sqlite(_) => (lease / 10, "a tenth of it".to_owned()),
        };
        let handler_time = lease - spare;
        if destination_timeout >= handler_time {
            return Err(ConfigProblem(format!(
                "configuration: destination_timeout_ms ({} ms) must be shorter than the time the \
                 workers give a forward: lease_ms ({} ms) less {spare_text}, so under {} ms; a \
                 forward still waiting for the destination then is stopped before it can record \
                 the failure; lower destination_timeout_ms or raise lease_ms",
                destination_timeout.as_millis(),
                lease.as_millis(),
                handler_time.as_millis()
            )));
        }
        let header_read_timeout = r.millis("header_read_timeout_ms", 1, 3_600_000)?;
        let max_connections =
            usize::try_from(r.number("max_connections", 1, 1 << 20)?).unwrap_or(1);
        let shutdown_timeout = r.millis("shutdown_timeout_ms", 0, 3_600_000)?;
        let metrics = r.flag("metrics")?;
        let secure_cookie = r.flag("console_secure_cookie")?;
        let client_header = match r.plain("console_client_header")? {
            Some((header, _)) if header.trim().is_empty() => None,
            None => None,
            Some((header, origin)) => {
                if http::HeaderName::from_bytes(header.trim().as_bytes()).is_err() {
                    return Err(problem(
                        "console_client_header",
                        &origin,
                        "expected a header name, such as x-forwarded-for",
                    ));
                }
                Some(header.trim().to_owned())
            }
        };
        let trusted_proxies: Vec<String> = match r.plain("console_trusted_proxies")? {
            None => Vec::new(),
            Some((list, origin)) => {
                let proxies: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|entry| !entry.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(wrong) = proxies.iter().find(|entry| !proxy_entry(entry)) {
                    return Err(problem(
                        "console_trusted_proxies",
                        &origin,
                        format!(
                            "expected IP addresses or ranges such as 10.0.0.0/8, separated by \
                             commas; {wrong:?} is neither"
                        ),
                    ));
                }
                if !proxies.is_empty() && client_header.is_none() {
                    return Err(problem(
                        "console_trusted_proxies",
                        &origin,
                        "it names the proxies whose console_client_header is believed; set \
                         console_client_header too",
                    ));
                }
                proxies
            }
        };
        let console = match r.text("console_token")? {
            None => None,
            Some((token, origin)) => {
                if !cfg!(feature = "console") {
                    return Err(problem(
                        "console_token",
                        &origin,
                        "this clink-webhook was built without the console feature",
                    ));
                }
                if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(problem(
                        "console_token",
                        &origin,
                        "a console token is at least 16 characters, without spaces",
                    ));
                }
                r.note("console_token", "[redacted]".to_owned(), origin);
                Some(ConsoleSpec {
                    token: Zeroizing::new(token),
                    secure_cookie,
                    client_header,
                    trusted_proxies,
                })
            }
        };
        // The admin routes on the delivery port come after the delivery
        // path: a path that is one of them, or holds one, would hide it.
        let served = ["/health", "/ready"]
            .into_iter()
            .chain(metrics.then_some("/metrics"))
            .chain(console.as_ref().map(|_| "/console"));
        let hidden = served
            .into_iter()
            .find(|route| path == *route || path.starts_with(&format!("{route}/")));
        if let (None, Some(route)) = (admin_listen, hidden) {
            return Err(problem(
                "serve_path",
                &path_origin,
                format!(
                    "{route} is an admin route on this port: choose another path, or move the \
                     admin routes with admin_listen"
                ),
            ));
        }
        let (log, origin) = r.plain("log")?.unwrap_or_default();
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(problem(
                "log",
                &origin,
                "not a log filter such as warn or warn,clink_webhooks=info",
            ));
        }

        let mut effective = r.effective;
        effective.sort_by_key(|(name, ..)| FIELDS.iter().position(|f| f.name == *name));
        Ok(Self {
            listen,
            admin_listen,
            path,
            keys,
            tolerance,
            inbox,
            database_ca_file,
            inbox_retention,
            destination,
            destination_timeout,
            destination_key,
            nats_stream,
            nats_subject,
            nats_stream_subject,
            nats_duplicate_window,
            nats_replicas,
            redis_stream,
            redis_dedup,
            redis_wait_replicas,
            reorder_window,
            concurrency,
            lease,
            max_attempts,
            backoff,
            max_backoff,
            body_limit,
            body_budget: (budget_bytes, budget_bodies),
            body_timeout,
            store_timeout,
            header_read_timeout,
            max_connections,
            shutdown_timeout,
            metrics,
            console,
            log,
            effective,
        })
    }

    fn read_keys(r: &mut Reader, tolerance: Duration) -> Result<Keys, ConfigProblem> {
        let one = r.text("webhook_signing_key")?;
        let tables = r.raw("signing_keys");
        let file = r.text("accounts_file")?;
        let given = [one.is_some(), tables.is_some(), file.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(ConfigProblem(
                "configuration: give one of webhook_signing_key, signing_keys and accounts_file, \
                 not several"
                    .to_owned(),
            ));
        }
        let keys = if let Some((text, origin)) = one {
            let keys = key_list(&text).map_err(|m| problem("webhook_signing_key", &origin, m))?;
            verifier(&keys, tolerance).map_err(|m| problem("webhook_signing_key", &origin, m))?;
            r.note("webhook_signing_key", describe_keys(&keys), origin);
            Keys::One(keys)
        } else if let Some((raw, origin)) = tables {
            let value = match raw {
                Raw::Toml(value) => Ok(value),
                // In the environment: a TOML array, as in the file.
                Raw::Text(text) => toml::from_str::<toml::Table>(&format!("v = {text}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .ok_or_else(|| {
                        problem(
                            "signing_keys",
                            &origin,
                            "expected a TOML array such as [{ secret = \"whsec_...\", name = \"2026-01\" }]",
                        )
                    }),
            }?;
            let keys = key_tables(&value).map_err(|m| problem("signing_keys", &origin, m))?;
            verifier(&keys, tolerance).map_err(|m| problem("signing_keys", &origin, m))?;
            r.note("signing_keys", describe_keys(&keys), origin);
            Keys::One(keys)
        } else if let Some((path, origin)) = file {
            let path = PathBuf::from(path);
            let accounts = read_accounts(&path)?;
            r.note(
                "accounts_file",
                format!(
                    "{} ({} accounts)",
                    escaped(&path.display().to_string()),
                    accounts.len()
                ),
                origin,
            );
            Keys::PerAccount(path)
        } else {
            return Err(ConfigProblem(
                "configuration: no signing key: set CLINK_WEBHOOK_SIGNING_KEY (comma-separated, \
                 newest first), or signing_keys or accounts_file in the file"
                    .to_owned(),
            ));
        };
        Ok(keys)
    }

    /// A configuration from `pairs` (setting, value) alone, for tests.
    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&'static str, &str)]) -> Result<Self, ConfigProblem> {
        let env = pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        Self::read(Given { file: None, env })
    }

    /// The effective configuration, one `name = value (origin)` a line.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.effective
            .iter()
            .map(|(name, value, origin)| format!("config: {name} = {value} ({})", origin.short()))
            .collect()
    }

    /// The effective configuration as one JSON object.
    pub(crate) fn json(&self) -> serde_json::Value {
        let settings: serde_json::Map<_, _> = self
            .effective
            .iter()
            .map(|(name, value, origin)| {
                (
                    (*name).to_owned(),
                    json!({ "value": value, "from": origin.short() }),
                )
            })
            .collect();
        json!({ "config": settings })
    }
}

fn describe_keys(keys: &[KeySpec]) -> String {
    let each: Vec<_> = keys.iter().map(KeySpec::describe).collect();
    format!("{} key(s), newest first: {}", keys.len(), each.join(", "))
}

/// How a password that a URL parser would cut short is written.
const ENCODE_HINT: &str =
    "a password holding / ? # or @ is written percent-encoded (%2F %3F %23 %40)";

fn parse_destination(url: &str) -> Result<DestinationSpec, String> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let has_host = url
        .split_once("://")
        .is_some_and(|(_, rest)| !rest.split(['/', '?']).next().unwrap_or("").is_empty());
    let kind = match scheme.as_deref() {
        Some("http" | "https") if has_host => {
            // A password holding `/` cuts the authority short: the rest of
            // it reads as a port, or as a path with an `@` in it.
            let uri = url
                .parse::<http::Uri>()
                .ok()
                .filter(|uri| {
                    // The http crate reads a port that is not a number up to
                    // 65535 (`h:x`, `h:99999`, `h:`) as no port at all: the
                    // client would send to the scheme's default port.
                    let host_and_port = uri.authority().map_or("", |authority| {
                        authority
                            .as_str()
                            .rsplit_once('@')
                            .map_or(authority.as_str(), |(_, host)| host)
                    });
                    uri.host()
                        .is_some_and(|host| host == host_and_port || uri.port_u16().is_some())
                        && !uri.path().contains('@')
                        && !uri.query().is_some_and(|query| query.contains('@'))
                        && !url
                            .split_once('#')
                            .is_some_and(|(_, fragment)| fragment.contains('@'))
                })
                .ok_or_else(|| {
                    format!(
                        "{}: not a valid URL (a port is a number up to 65535; {ENCODE_HINT}, an @ in \
                         the path, query or fragment as %40)",
                        refused_url(url)
                    )
                })?;
            let (uri, name, authorization) = http_parts(&uri)?;
            return Ok(DestinationSpec {
                name,
                kind: DestinationKind::Http { uri, authorization },
            });
        }
        // ws:// and wss:// too, for nats_servers to say they are not
        // supported rather than that the destination is not a URL at all.
        Some("nats" | "ws" | "wss") if has_host => DestinationKind::Nats(nats_servers(url)?),
        Some("redis" | "rediss") if has_host => {
            let encoded = with_user_info_encoded(url);
            if redis::Client::open(encoded.as_str()).is_err() {
                return Err(format!("{}: not a valid Redis URL", masked_url(url)));
            }
            DestinationKind::Redis(encoded)
        }
        Some(scheme @ ("redis+cluster" | "rediss+cluster")) if has_host => {
            DestinationKind::RedisCluster(cluster_nodes(url, scheme.trim_end_matches("+cluster"))?)
        }
        _ => {
            return Err(format!(
                "{}: expected http://..., https://..., nats://host:port, redis://..., rediss://... \
                 or redis+cluster://host:port,host:port,...",
                refused_url(url)
            ))
        }
    };
    Ok(DestinationSpec {
        name: masked_url(url),
        kind,
    })
}

/// The node URLs of `redis+cluster://[user:password@]host:port,host:port/`:
/// one `scheme://[user:password@]host:port` per listed node, the user info
/// (up to the last `@`) percent-encoded for the Redis client.
fn cluster_nodes(url: &str, scheme: &str) -> Result<Vec<Zeroizing<String>>, String> {
    let invalid = || {
        format!(
            "{}: not a valid Redis Cluster URL (redis+cluster://[user:password@]host:port,host:port,...)",
            masked_url(url)
        )
    };
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let (user_info, after) = match rest.rsplit_once('@') {
        Some((user_info, after)) => (Some(user_info), after),
        None => (None, rest),
    };
    let hosts = after.split(['/', '?', '#']).next().unwrap_or("");
    let tail = &after[hosts.len()..];
    if !(tail.is_empty() || tail == "/") {
        // A path, a database or a query: a cluster has one database.
        return Err(invalid());
    }
    let nodes: Vec<Zeroizing<String>> = hosts
        .split(',')
        .map(|host| {
            let node = Zeroizing::new(match user_info {
                Some(user_info) => format!("{scheme}://{user_info}@{}", host.trim()),
                None => format!("{scheme}://{}", host.trim()),
            });
            with_user_info_encoded(&node)
        })
        .collect();
    let valid = |node: &Zeroizing<String>| {
        !node.ends_with("://") && !node.ends_with('@') && redis::Client::open(node.as_str()).is_ok()
    };
    if nodes.is_empty() || !nodes.iter().all(valid) {
        return Err(invalid());
    }
    Ok(nodes)
}

/// Checks that `template` names only `allowed` placeholders.
fn check_template(template: &str, allowed: &[&str]) -> Result<(), String> {
    let mut rest = template;
    let stray = || format!("{}: a }} without its {{", shown_value(template));
    while let Some(open) = rest.find('{') {
        if rest[..open].contains('}') {
            return Err(stray());
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{}: a {{ without its }}", shown_value(template)))?;
        let name = &after[..close];
        if !allowed.contains(&name) {
            return Err(format!(
                "{}: unknown placeholder {{{}}}; the placeholders are {}",
                shown_value(template),
                escaped(name),
                allowed
                    .iter()
                    .map(|a| format!("{{{a}}}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(stray());
    }
    Ok(())
}

/// The subjects a stream needs to hold every subject `template` makes, as
/// [`subject`](super::destination::subject) makes them: the template with
/// `:` as `_` and empty tokens dropped (the account is empty with one key,
/// `account_empty`); its fixed leading tokens then `>`, or the one subject
/// it makes when no placeholder is left.
pub(crate) fn stream_subject(template: &str, account_empty: bool) -> Result<String, String> {
    let refuse = |why: &str| {
        Err(format!(
            "{}: {why}; a subject template is tokens separated by dots, the first one fixed, as \
             clink.{{account}}.{{type}}",
            shown_value(template)
        ))
    };
    // The fixed text, outside the placeholders.
    let fixed_text = template.replace("{account}", "").replace("{type}", "");
    if let Some(bad) = fixed_text
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '*' | '>' | '{' | '}'))
    {
        return refuse(&format!(
            "{} cannot be in a subject (only printable ASCII without spaces, * and >)",
            escaped(&bad.to_string())
        ));
    }
    let first = template.split('.').next().unwrap_or("");
    if first.is_empty() || first.contains('{') {
        return refuse("it does not start with a fixed token");
    }
    let filled = if account_empty {
        template.replace("{account}", "")
    } else {
        template.to_owned()
    };
    let tokens: Vec<String> = filled
        .replace(':', "_")
        .split('.')
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
        .collect();
    let fixed: Vec<&str> = tokens
        .iter()
        .map(String::as_str)
        .take_while(|token| !token.contains('{'))
        .collect();
    if fixed.len() == tokens.len() {
        return Ok(fixed.join("."));
    }
    Ok(format!("{}.>", fixed.join(".")))
}

/// The help text that lists every setting.
pub(crate) fn settings_help() -> String {
    let mut text = String::new();
    for field in FIELDS {
        let default = field
            .default
            .map_or(String::new(), |d| format!(" [default: {d}]"));
        let secret = if field.secret {
            " (secret: masked when printed)"
        } else {
            ""
        };
        let _ = writeln!(
            text,
            "  {:<26} {}{default}{secret}",
            field.name,
            field.env()
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `redis_wait_replicas` is for a single server: a Redis Cluster's WAIT
    /// goes to every primary, over connections of their own.
    #[test]
    fn waiting_for_replicas_is_refused_for_a_redis_cluster() {
        let config = |destination: &str| {
            Config::from_pairs(&[
                ("webhook_signing_key", "whsec_a"),
                ("inbox", "sqlite:/tmp/unused.db"),
                ("destination", destination),
                ("redis_wait_replicas", "1"),
            ])
        };
        assert_eq!(
            config("redis://127.0.0.1:6379/")
                .unwrap()
                .redis_wait_replicas,
            1
        );
        let Err(refused) = config("redis+cluster://127.0.0.1:7000,127.0.0.1:7001") else {
            panic!("a cluster with redis_wait_replicas was taken");
        };
        assert!(refused.0.contains("not a Redis Cluster"), "{}", refused.0);
    }

    #[test]
    fn cluster_urls_list_their_nodes_and_keep_secrets_masked() {
        let nodes = |url: &str| match parse_destination(url).ok().map(|spec| spec.kind) {
            Some(DestinationKind::RedisCluster(nodes)) => nodes
                .iter()
                .map(|node| node.as_str().to_owned())
                .collect::<Vec<_>>(),
            _ => panic!("{url}: not a cluster"),
        };
        assert_eq!(
            nodes("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001/"),
            ["redis://u:pw@10.0.0.1:7000", "redis://u:pw@10.0.0.2:7001"]
        );
        assert_eq!(
            nodes("rediss+cluster://h1:1,h2:2"),
            ["rediss://h1:1", "rediss://h2:2"]
        );
        // A password holding / or , is read up to the last @.
        assert_eq!(
            nodes("redis+cluster://u:p/w,x@h1:1,h2:2"),
            ["redis://u:p%2Fw%2Cx@h1:1", "redis://u:p%2Fw%2Cx@h2:2"]
        );
        for bad in [
            "redis+cluster://u:pw@h1:1,,h2:2",
            "redis+cluster://u:pw@h1:1/2",
            "redis+cluster://u:pw@h1:1?x=1",
            "redis+cluster://u:p/w@h1:x",
        ] {
            let error = parse_destination(bad).err().unwrap();
            assert!(!error.contains("pw") && !error.contains("p/w"), "{error}");
        }
    }

    #[test]
    fn a_rejected_url_never_shows_its_password() {
        for bad in [
            "redis://:hunter/2@127.0.0.1:notaport/",
            "rediss://u:hunter/2@/0",
            "nats://app:hunter/2@127.0.0.1:notaport",
            "https://app:hunter/2@h/hook",
            // A `?` or `#` in it ends the host early: read as another host.
            "https://hunter?2@h/hook",
            "https://hunter#2@h/hook",
            "ftp://app:hunter/2@h/",
        ] {
            let error = parse_destination(bad)
                .err()
                .unwrap_or_else(|| panic!("{} accepted", masked_url(bad)));
            assert!(!error.contains("hunter"), "{error}");
        }
        // Nor its path, which may be a secret.
        for (bad, shown) in [
            (
                "htps://hooks.example/services/SECRET",
                "htps://hooks.example/…",
            ),
            ("https://h/services/SECRET#x@y", "https://***@y"),
        ] {
            let error = parse_destination(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(!error.contains("SECRET"), "{error}");
            assert!(error.starts_with(shown), "{error}");
        }
    }

    /// A wrong value that could be a URL or hold a password is repeated
    /// masked, or not at all.
    #[test]
    fn a_wrong_value_never_shows_a_password() {
        for (name, value, shown) in [
            (
                "inbox",
                "postgres://app:hunter2@db/clink",
                "postgres://app:***@db/clink",
            ),
            ("inbox", "postgres://app@db/clink?password=hunter2", "?***"),
            ("inbox", "host=db password=hunter2", "[redacted]"),
            ("inbox", "app:hunter2@db/clink", "[redacted]"),
            ("inbox", "mysql", "mysql"),
            (
                "nats_subject",
                "nats://app:hunter2@h:4222/{acount}",
                "nats://app:***@h:4222/{acount}",
            ),
            (
                "redis_stream",
                "redis://:hunter2@h/{acount}",
                "redis://:***@h/{acount}",
            ),
            (
                "signing_keys",
                r#"[{ secret = "whsec_a", expires = "https://u:hunter2@h/" }]"#,
                "https://u:***@h/",
            ),
        ] {
            let mut pairs = minimal();
            pairs.retain(|(n, _)| {
                *n != name && !(name == "signing_keys" && *n == "webhook_signing_key")
            });
            pairs.push((name, value));
            let error = config(&pairs)
                .err()
                .unwrap_or_else(|| panic!("{name}: accepted"))
                .0;
            assert!(!error.contains("hunter2"), "{error}");
            assert!(error.contains(shown), "{shown} not in {error}");
            assert!(error.contains(name), "{error}");
        }
        // A subject that is a URL is taken (it is only text), and printed
        // masked.
        let mut pairs = minimal();
        pairs.push(("nats_subject", "nats://app:hunter2@h:4222"));
        let lines = config(&pairs).unwrap().lines().join("\n");
        assert!(!lines.contains("hunter2"), "{lines}");
        assert!(
            lines.contains("nats_subject = nats://app:***@h:4222"),
            "{lines}"
        );
    }

    /// An HTTP destination's port is a number up to 65535, or none (the
    /// scheme's default); the http crate alone reads any other as none.
    #[test]
    fn an_http_port_that_is_not_a_number_is_refused() {
        for bad in [
            "https://h:notaport/hook",
            "https://h:99999/hook",
            "https://h:/hook",
            "https://u:pw@h:x/hook",
            "http://[::1]:x/hook",
        ] {
            let error = parse_destination(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(
                error.contains("not a valid URL (a port is a number up to 65535"),
                "{error}"
            );
        }
        for (good, name) in [
            ("https://h:8443/hook", "https://h:8443/…"),
            ("https://h/hook", "https://h:443/…"),
            ("https://u:pw@h:8443/hook", "https://u:***@h:8443/…"),
            ("http://[::1]/hook", "http://[::1]:80/…"),
            ("http://[::1]:8080/hook", "http://[::1]:8080/…"),
        ] {
            let spec =
                parse_destination(good).unwrap_or_else(|error| panic!("{good} refused: {error}"));
            assert_eq!(spec.name, name);
        }
    }

    /// A variable that is not valid UTF-8 is refused by name, not skipped
    /// (the file's value, or the default, would be used instead).
    #[test]
    fn a_variable_that_is_not_utf8_is_refused() {
        use std::os::unix::ffi::OsStringExt as _;
        let get = |name: &str| match name {
            "CLINK_INBOX" => Some(std::ffi::OsString::from_vec(
                b"sqlite:/tmp/\xffhunter2".to_vec(),
            )),
            "CLINK_SETTLE_MS" => Some("250".into()),
            _ => None,
        };
        let error = env_values(get).expect_err("refused").0;
        assert_eq!(
            error,
            "configuration: inbox (from the environment variable CLINK_INBOX): not valid UTF-8 \
             (its value is not shown)"
        );
        let env = env_values(|name| (name == "CLINK_SETTLE_MS").then(|| "250".into())).unwrap();
        assert_eq!(env.get("settle_ms").map(String::as_str), Some("250"));
        assert_eq!(env.len(), 1);
    }

    fn config(pairs: &[(&'static str, &str)]) -> Result<Config, ConfigProblem> {
        Config::from_pairs(pairs)
    }

    fn minimal() -> Vec<(&'static str, &'static str)> {
        vec![
            ("webhook_signing_key", "whsec_a,whsec_b"),
            ("inbox", "sqlite:/tmp/x.db"),
            ("destination", "nats://127.0.0.1:4222"),
        ]
    }

    /// A password holding `@` or `/` is read up to the last `@`, as the docs
    /// say, though the PostgreSQL client alone ends it at the first.
    #[test]
    fn a_database_password_runs_to_the_last_at() {
        let mut pairs = minimal();
        pairs.retain(|(name, _)| *name != "inbox");
        pairs.push(("inbox", "postgres"));
        pairs.push(("database_url", "postgres://app:p@s/s@db.example:5432/clink"));
        let config = config(&pairs).unwrap();
        let InboxSpec::Postgres(url) = &config.inbox else {
            panic!("a PostgreSQL inbox")
        };
        let read = postgres_config(url).unwrap();
        assert_eq!(read.get_user(), Some("app"));
        assert_eq!(read.get_password(), Some(&b"p@s/s"[..]));
        assert!(!config.lines().join("\n").contains("p@s/s"));
    }

    #[test]
    fn defaults_and_a_minimal_configuration() {
        let config = config(&minimal()).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(config.path, "/webhooks/clink");
        assert_eq!(config.reorder_window, Duration::from_secs(1));
        let lines = config.lines().join("\n");
        assert!(!lines.contains("whsec_a"), "{lines}");
        assert!(lines.contains("webhook_signing_key = 2 key(s)"), "{lines}");
        assert!(lines.contains("(env CLINK_WEBHOOK_SIGNING_KEY)"), "{lines}");
    }

    #[test]
    fn a_wrong_value_names_its_field() {
        for (name, value, expected) in [
            ("serve_listen", "localhost", "serve_listen"),
            ("settle_ms", "soon", "settle_ms"),
            ("destination", "ftp://x", "destination"),
            ("inbox", "mysql", "inbox"),
            ("nats_subject", "{type}.x", "nats_subject"),
            ("redis_stream", "clink:{acount}", "redis_stream"),
            ("redis_stream", "clink}{account}", "a } without its {"),
            ("redis_stream", "{account}", "not empty"),
            ("redis_stream", "{account}{account}", "not empty"),
            ("nats_subject", "clink.{type}}", "a } without its {"),
            ("webhook_signing_key", "a,,b", "webhook_signing_key"),
            ("serve_path", "/health", "/health is an admin route"),
            ("serve_path", "/metrics", "admin_listen"),
            ("serve_path", "/hooks/ä", "visible ASCII"),
            ("serve_path", "/hooks/%C3%A4", "visible ASCII"),
            ("serve_path", "/hooks/a b", "visible ASCII"),
            ("log", "warn,=x=", "not a log filter"),
        ] {
            let mut pairs = minimal();
            pairs.retain(|(n, _)| *n != name);
            pairs.push((name, value));
            let error = config(&pairs)
                .err()
                .unwrap_or_else(|| panic!("{name}={value} accepted"));
            assert!(error.0.contains(expected), "{}", error.0);
            assert!(error.0.contains(&field_named(name).env()), "{}", error.0);
        }
    }

    /// The paths the admin routes take are free for deliveries once the
    /// admin routes have an address of their own; names that only begin
    /// the same are free anyway.
    #[test]
    fn a_delivery_path_may_not_hide_the_admin_routes() {
        for (path, admin) in [
            ("/health", Some("127.0.0.1:3001")),
            ("/healthz", None),
            ("/webhooks/health", None),
            ("/consoles", None),
            // No console served, no metrics: nothing hidden.
            ("/console/hooks", None),
        ] {
            let mut pairs = minimal();
            pairs.push(("serve_path", path));
            pairs.push(("metrics", "false"));
            pairs.extend(admin.map(|admin| ("admin_listen", admin)));
            let read = config(&pairs);
            assert!(read.is_ok(), "{path}: {:?}", read.err().map(|e| e.0));
        }
        // With the console served, its path is taken.
        let mut pairs = minimal();
        pairs.push(("serve_path", "/console/hooks"));
        pairs.push(("console_token", "0123456789abcdef-console"));
        let error = config(&pairs).err().expect("refused");
        assert!(
            error.0.contains("/console is an admin route"),
            "{}",
            error.0
        );
    }

    /// With accounts, the account follows the delivery path: `/` would
    /// make `//{account}`, which nothing serves.
    #[test]
    fn accounts_need_a_delivery_path_other_than_the_root() {
        let file = std::env::temp_dir().join(format!(
            "clink-accounts-root-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&file, "[acct_a]\nsigning_key = \"whsec_a\"\n").unwrap();
        let path = file.to_str().unwrap().to_owned();
        for (serve_path, refused) in [("/", true), ("/hooks", false)] {
            let pairs = vec![
                ("accounts_file", path.as_str()),
                ("inbox", "sqlite:/tmp/x.db"),
                ("destination", "nats://127.0.0.1:4222"),
                ("serve_path", serve_path),
            ];
            match config(&pairs) {
                Ok(_) => assert!(!refused, "{serve_path} accepted"),
                Err(error) => {
                    assert!(refused, "{serve_path}: {}", error.0);
                    assert!(
                        error.0.contains("choose a path other than /"),
                        "{}",
                        error.0
                    );
                }
            }
        }
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn stream_subjects_cover_the_template() {
        for (template, account_empty, stream) in [
            ("clink.{account}.{type}", true, "clink.>"),
            ("clink.{account}.{type}", false, "clink.>"),
            ("clink.{account}", true, "clink"),
            ("clink.{account}", false, "clink.>"),
            ("clink.{account}.x", true, "clink.x"),
            ("clink:v1.{account}.{type}", true, "clink_v1.>"),
            ("a:b.c", false, "a_b.c"),
            ("a.b", false, "a.b"),
            ("clink..{type}", true, "clink.>"),
            ("clink.v{type}", true, "clink.>"),
        ] {
            assert_eq!(
                stream_subject(template, account_empty).unwrap(),
                stream,
                "{template}"
            );
        }
        for bad in [
            "{account}.x",
            ".x.{type}",
            "a b.{type}",
            "a.*.{type}",
            "a.>",
            "a.{type}}",
        ] {
            assert!(stream_subject(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_destination_timeout_must_end_inside_the_lease() {
        let mut pairs = minimal();
        pairs.push(("lease_ms", "2000"));
        pairs.push(("destination_timeout_ms", "10000"));
        pairs.push(("store_timeout_ms", "100"));
        let error = config(&pairs).err().unwrap().0;
        assert!(
            error.contains("destination_timeout_ms (10000 ms)")
                && error.contains("lease_ms (2000 ms)")
                && error.contains("so under 1800 ms"),
            "{error}"
        );
        pairs.retain(|(name, _)| *name != "destination_timeout_ms");
        pairs.push(("destination_timeout_ms", "1799"));
        assert!(config(&pairs).is_ok());
        // With SQLite's calls answering at once, a tenth of the lease is
        // kept whatever the store's timeout; with PostgreSQL a call that may
        // take 400 ms leaves a forward 1600 ms, and one that may take longer
        // than half the lease, half of it.
        for (inbox, store, under, just_under) in [
            ("sqlite:/tmp/x.db", "5000", "1800", "1799"),
            ("postgres", "100", "1800", "1799"),
            ("postgres", "400", "1600", "1599"),
            ("postgres", "5000", "1000", "999"),
        ] {
            pairs.retain(|(name, _)| !["store_timeout_ms", "inbox"].contains(name));
            pairs.push(("store_timeout_ms", store));
            pairs.push(("inbox", inbox));
            pairs.push(("database_url", "postgres://app@127.0.0.1:5432/clink"));
            pairs.retain(|(name, _)| *name != "destination_timeout_ms");
            pairs.push(("destination_timeout_ms", under));
            let error = config(&pairs).err().unwrap().0;
            assert!(
                error.contains(&format!("so under {under} ms")),
                "{inbox}: {error}"
            );
            pairs.retain(|(name, _)| *name != "destination_timeout_ms");
            pairs.push(("destination_timeout_ms", just_under));
            assert!(config(&pairs).is_ok(), "{inbox} {store}");
            pairs.retain(|(name, _)| *name != "database_url");
        }
    }

    /// With a Redis destination, the dedup marker must outlive the time
    /// the inbox keeps an event that could be replayed; other destinations
    /// do not read `redis_dedup_hours`.
    #[test]
    fn a_redis_dedup_time_must_cover_the_inbox_retention() {
        for destination in ["redis://127.0.0.1:6379", "redis+cluster://h1:1,h2:2"] {
            let mut pairs = minimal();
            pairs.retain(|(name, _)| *name != "destination");
            pairs.push(("destination", destination));
            pairs.push(("inbox_retention_hours", "200"));
            let error = config(&pairs)
                .err()
                .unwrap_or_else(|| panic!("{destination}: accepted"))
                .0;
            assert!(
                error.contains("redis_dedup_hours (168 h)")
                    && error.contains("inbox_retention_hours (200 h)"),
                "{error}"
            );
            pairs.push(("redis_dedup_hours", "200"));
            assert!(config(&pairs).is_ok(), "{destination}");
            pairs.retain(|(name, _)| *name != "inbox_retention_hours");
            pairs.push(("inbox_retention_hours", "12"));
            assert!(config(&pairs).is_ok(), "{destination}");
        }
        let mut pairs = minimal();
        pairs.push(("inbox_retention_hours", "200"));
        assert!(config(&pairs).is_ok(), "a NATS destination");
    }

    /// `destination_signing_key` is read as the other keys are: the
    /// newline a secret read from a file ends in (and any whitespace
    /// around it) is not part of the key the forwards are signed with, and
    /// a key that is empty once trimmed is refused by name, without its
    /// value in the error.
    #[test]
    fn a_destination_signing_key_is_trimmed_and_never_empty() {
        let with_key = |destination: &'static str, key: &'static str| {
            let mut pairs = minimal();
            pairs.retain(|(name, _)| *name != "destination");
            pairs.push(("destination", destination));
            pairs.push(("destination_signing_key", key));
            config(&pairs)
        };
        let http = "http://127.0.0.1:8080/hook";
        for given in ["whsec_own\n", "whsec_own\r\n", "  whsec_own\t"] {
            let config = with_key(http, given).unwrap_or_else(|problem| panic!("{}", problem.0));
            assert_eq!(
                config.destination_key.as_ref().map(KeySpec::secret),
                Some("whsec_own"),
                "{given:?}"
            );
        }
        for empty in ["", "\n", " \r\n "] {
            let error = with_key(http, empty)
                .err()
                .expect("an empty key is refused")
                .0;
            assert!(
                error.starts_with(
                    "configuration: destination_signing_key (from the environment variable \
                     CLINK_DESTINATION_SIGNING_KEY): an empty signing key"
                ),
                "{empty:?}: {error}"
            );
        }
        let error = with_key("nats://127.0.0.1:4222", "whsec_own\n")
            .err()
            .expect("a NATS destination is not signed")
            .0;
        assert!(error.contains("destination_signing_key"), "{error}");
        assert!(!error.contains("whsec_own"), "{error}");
    }

    /// A NATS destination over WebSocket, alone or in the list of
    /// servers, stops the start with an error that names the setting and
    /// the schemes a NATS server may have.
    #[test]
    fn a_nats_destination_over_websocket_is_refused() {
        for url in ["ws://127.0.0.1:8080", "nats://127.0.0.1:4222,wss://n2:443"] {
            let mut pairs = minimal();
            pairs.retain(|(name, _)| *name != "destination");
            pairs.push(("destination", url));
            let error = config(&pairs).err().expect("refused").0;
            assert!(
                error.starts_with(
                    "configuration: destination (from the environment variable \
                     CLINK_DESTINATION): "
                ) && error.contains("NATS over WebSocket (ws://, wss://) is not supported")
                    && error.contains("nats://host:port or tls://host:port"),
                "{url}: {error}"
            );
        }
    }

    #[test]
    fn signing_keys_from_the_environment_are_toml() {
        let mut pairs = minimal();
        pairs.retain(|(n, _)| *n != "webhook_signing_key");
        pairs.push((
            "signing_keys",
            r#"[{ secret = "whsec_new", name = "new" }, { secret = "whsec_old", name = "old", expires = "2030-01-01T00:00:00Z" }]"#,
        ));
        let config = config(&pairs).unwrap();
        let Keys::One(keys) = &config.keys else {
            panic!()
        };
        assert_eq!(keys.len(), 2);
        let lines = config.lines().join("\n");
        assert!(
            lines.contains("new ([redacted]), old ([redacted]) expires 2030-01-01T00:00:00"),
            "{lines}"
        );
        assert!(!lines.contains("whsec_"), "{lines}");

        // A secret with whitespace around it (a multi-line string's last
        // newline) is the secret without it, as from the environment.
        let mut pairs = minimal();
        pairs.retain(|(n, _)| *n != "webhook_signing_key");
        pairs.push(("signing_keys", "[{ secret = \"\"\"\n whsec_new\n\"\"\" }]"));
        let trimmed = Config::from_pairs(&pairs).unwrap_or_else(|p| panic!("{}", p.0));
        let Keys::One(keys) = &trimmed.keys else {
            panic!()
        };
        assert_eq!(keys[0].secret.as_str(), "whsec_new");
    }

    /// A key rotated out with `signed_until` verifies deliveries stamped up
    /// to then and refuses later ones (as signed by an expired key); the
    /// configuration says so, and a time that is no time is refused.
    #[test]
    fn a_rotated_out_key_verifies_only_deliveries_stamped_until_its_limit() {
        use clink_webhooks::signature::sign;

        let mut pairs = minimal();
        pairs.retain(|(n, _)| *n != "webhook_signing_key");
        pairs.push((
            "signing_keys",
            r#"[{ secret = "whsec_new", name = "new" }, { secret = "whsec_old", name = "old", signed_until = 2026-03-01T00:00:00Z }]"#,
        ));
        let rotated = config(&pairs).unwrap();
        let Keys::One(keys) = &rotated.keys else {
            panic!()
        };
        let lines = rotated.lines().join("\n");
        assert!(
            lines.contains("old ([redacted]) signed until 2026-03-01T00:00:00"),
            "{lines}"
        );
        let verifier = verifier(keys, Duration::from_secs(300)).unwrap();
        let limit = "2026-03-01T00:00:00Z".parse::<Timestamp>().unwrap();
        for (stamped, old_accepted) in [
            (limit.as_millis() - 1000, true),
            (limit.as_millis(), true),
            (limit.as_millis() + 1000, false),
        ] {
            let stamp = stamped.to_string();
            let now = Timestamp::from_millis(stamped).to_system_time();
            let body = br#"{"id":"evt_1","type":"order.succeeded","data":{}}"#;
            let old = verifier.verify_at(&stamp, &sign("whsec_old", &stamp, body), body, now);
            assert_eq!(
                old.is_ok(),
                old_accepted,
                "old key, stamped {stamp}: {old:?}"
            );
            if let Err(refused) = old {
                assert_eq!(
                    refused.kind(),
                    clink_webhooks::VerifyErrorKind::ExpiredKey,
                    "refused as signed by an expired key"
                );
            }
            let new = verifier.verify_at(&stamp, &sign("whsec_new", &stamp, body), body, now);
            assert!(new.is_ok(), "new key, stamped {stamp}: {new:?}");
        }

        let mut pairs = minimal();
        pairs.retain(|(n, _)| *n != "webhook_signing_key");
        pairs.push((
            "signing_keys",
            r#"[{ secret = "whsec_old", signed_until = "soon" }]"#,
        ));
        let error = config(&pairs).err().expect("refused").0;
        assert!(
            error.contains("key 1: signed_until soon: not an RFC 3339 time"),
            "{error}"
        );
    }
}
