//! `clink-webhook`: sign, check, send and receive Clink webhooks from a
//! terminal, through the `clink-webhooks` crate's own signer, verifier and
//! receiving pipeline, and read objects and manage webhook endpoints
//! through Clink's API. Run `clink-webhook --help` for the commands.

mod api_command;
mod endpoints_command;
mod inbox_command;
mod lines;
mod listen;
mod output;
mod send;
#[cfg(all(feature = "gateway", unix))]
mod serve;
#[cfg(any(feature = "postgres", all(feature = "gateway", unix)))]
mod urls;

use std::ffi::OsString;
use std::future::Future;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Parser, Subcommand};
use clink_webhooks::api::ApiErrorKind;
use clink_webhooks::testing::fixture;
use clink_webhooks::{sign, EventType, Timestamp, Verifier};
use serde_json::json;
use zeroize::Zeroizing;

use output::{Output, Tone};

/// The environment variable the signing key is read from when `--secret` is absent.
const KEY_VARIABLE: &str = "CLINK_WEBHOOK_SIGNING_KEY";

const AFTER_HELP: &str = "\
The signing key comes from --secret (the secret itself, or env:NAME to read the
environment variable NAME) or else from CLINK_WEBHOOK_SIGNING_KEY. It is never printed.
During a rotation it may hold several secrets, newest first, separated by commas:
verify and listen accept each, sign and send sign with the first. The whitespace
around each secret (a file's trailing newline, a CRLF) is not part of it.

Output is text, coloured when stdout is a terminal (NO_COLOR turns colour off).
With --json every command prints JSON Lines instead: one JSON object per line
on stdout. Errors go to stderr.

Exit codes:
  0  success: the signature verified, every delivery got a 2xx
  1  a signature did not verify, a delivery got a status other than 2xx (with
     send --tamper, other than 401 for its signature), an inbox replay was
     refused, or Clink's API said no (not found, unauthorized, refused)
  2  usage or I/O error: bad arguments, unknown event type, unreadable file,
     bad URL, unreachable host, port in use, no or bad API key, a call to
     Clink's API that failed on the way
  130  listen: a second Ctrl-C or SIGTERM stopped it at once, during the
       graceful stop the first began

Errors: in text, `error: MESSAGE` on stderr. With --json, one JSON object on
stderr, {\"error\": CODE, \"message\": TEXT}, whenever the exit code is not 0
(a failed verification or delivery is also in the output on stdout, as in
text). CODE is one of these, shown with its exit code:
  usage               bad arguments: unknown flag, missing or invalid value   2
  unknown_event_type  TYPE is not one of the 44 event types                   2
  no_signing_key      no signing key, an empty one, or env:NAME is not set    2
  bad_url             --to is not an http:// URL with a host                  2
  io                  a file, stdin, the port or the runtime failed           2
  invalid_signature   verify: the signature did not verify                    1
  non_2xx             send: a delivery got a status other than 2xx            1
  tamper_accepted     send --tamper: a tampered delivery got no 401           1
  unreachable         send: a delivery got no answer (refused, timeout)       2
  refused             inbox replay: the event was handled or is running       1
  interrupted         listen: a second Ctrl-C or SIGTERM stopped it at
                      once                                                  130
  no_api_key          api, endpoints: CLINK_SECRET_KEY is not set             2
  api_config          api, endpoints: a key Clink would refuse (pk_, the
                      other environment's), bad CLINK_ENV or base URL         2
  not_found           api, endpoints: no such object or endpoint              1
  unauthorized        api, endpoints: Clink refused every key                 1
  envelope_error      api, endpoints: Clink said no (its code, another 4xx)   1
  transport, timeout, server_error, rate_limited, decode, unsupported
                      api, endpoints: the call failed on the way, or Clink's
                      answer was not what its API documents                   2";

/// Sign, check, send and receive Clink webhooks.
#[derive(Debug, Parser)]
#[command(name = "clink-webhook", version, after_help = AFTER_HELP)]
struct Cli {
    /// Print JSON Lines (one object per line) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the X-Clink-Timestamp and X-Clink-Signature headers for a body.
    Sign(SignArgs),
    /// Check a delivery's signature as a receiver would (exit 1 with the reason when it fails).
    Verify(VerifyArgs),
    /// Print a realistic body for an event type.
    Fixture(FixtureArgs),
    /// Sign events and POST them to a receiver; print each answer and a summary.
    #[command(after_help = send::AFTER_HELP)]
    Send(send::SendArgs),
    /// Receive deliveries with the crate's own pipeline and print each one.
    #[command(after_help = listen::AFTER_HELP)]
    Listen(listen::ListenArgs),
    /// Look into a durable inbox: list, show, replay, purge, stats.
    #[command(after_help = inbox_command::AFTER_HELP)]
    Inbox(inbox_command::InboxArgs),
    /// Run the receiving gateway: verify, keep in a durable inbox, relay to
    /// an HTTP app, NATS JetStream or Redis Streams in per-object order.
    #[cfg(all(feature = "gateway", unix))]
    #[command(after_help = serve::after_help())]
    Serve(serve::ServeArgs),
    /// Read from Clink's API: an order, refund, subscription, invoice or
    /// session by id, or a page of orders.
    #[command(after_help = api_command::after_help())]
    Api(api_command::ApiArgs),
    /// Manage the webhook endpoints of Clink's merchant account: list, get,
    /// ensure, rotate-secret, enable, disable, delete.
    #[command(after_help = endpoints_command::after_help())]
    Endpoints(endpoints_command::EndpointsArgs),
}

/// Where the signing key comes from.
#[derive(Args)]
struct KeyArgs {
    /// The endpoint's signing secret, or env:NAME to read it from the
    /// environment variable NAME [default: $CLINK_WEBHOOK_SIGNING_KEY].
    #[arg(long, value_name = "SECRET|env:NAME")]
    secret: Option<String>,
}

impl std::fmt::Debug for KeyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = self
            .secret
            .as_deref()
            .map(|given| match given.strip_prefix("env:") {
                Some(name) if is_conventional_name(name) => given,
                _ => "[redacted]",
            });
        f.debug_struct("KeyArgs").field("secret", &secret).finish()
    }
}

impl KeyArgs {
    /// The key as given, from `--secret` or else the environment, and where
    /// it came from (for messages).
    fn given(&self) -> Result<(String, Zeroizing<String>), CliError> {
        // A variable that is set, but not to UTF-8, is not "not set".
        let read = |source: &str, name: &str| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(CliError::no_key(format!(
                "{source}: that environment variable is not valid UTF-8"
            ))),
        };
        let (source, value) = match &self.secret {
            Some(given) => match given.strip_prefix("env:") {
                // A name no variable can have (not letters, digits and _),
                // or one that begins as a key does (the secret itself, put
                // after `env:` by mistake), is not repeated: it may be the
                // secret. A name that can be a variable's is repeated, to
                // say which is not set.
                Some(name) if !is_variable_name(name) => {
                    return Err(CliError::no_key(
                        "--secret env:NAME: NAME is not an environment variable's name \
                         (letters, digits and _, not a key: to pass the secret itself, leave out \
                         env:)",
                    ));
                }
                // A name as variables are named (upper case, digits and
                // _) is repeated; another, which may be a secret of another
                // shape, is read but not repeated.
                Some(name) if is_conventional_name(name) => {
                    let source = format!("--secret env:{name}");
                    let value = read(&source, name)?;
                    (source, value)
                }
                Some(name) => {
                    let source =
                        "--secret env:NAME (a name with lower-case letters, not repeated: \
                                  it may be a secret put after env: by mistake)"
                            .to_owned();
                    let value = read(&source, name)?;
                    (source, value)
                }
                None => ("--secret".to_owned(), Some(given.clone())),
            },
            None => (KEY_VARIABLE.to_owned(), read(KEY_VARIABLE, KEY_VARIABLE)?),
        };
        match value.map(Zeroizing::new) {
            Some(secret) if !secret.trim().is_empty() => Ok((source, secret)),
            Some(_) => Err(CliError::no_key(format!(
                "{source}: the signing key is empty"
            ))),
            None if self.secret.is_some() => Err(CliError::no_key(format!(
                "{source}: that environment variable is not set"
            ))),
            None => Err(CliError::no_key(format!(
                "no signing key: pass --secret SECRET (or --secret env:NAME), or set {KEY_VARIABLE}"
            ))),
        }
    }

    /// A verifier of every secret the key holds: one, or several separated
    /// by commas, newest first (during a rotation, as `serve` reads them),
    /// each without the whitespace around it (a secret from a file ends in
    /// `\n`, one from a CRLF `.env` file in `\r\n`); and the key as given.
    fn read(&self) -> Result<(Verifier, Zeroizing<String>), CliError> {
        let (source, secrets) = self.given()?;
        // The message says which secret is wrong, never what it is.
        let verifier = Verifier::from_secret_list(&secrets)
            .map_err(|e| CliError::no_key(format!("{source}: {}", e.message())))?;
        Ok((verifier, secrets))
    }

    /// The verifier of the key's secrets ([`read`](Self::read)).
    fn verifier(&self) -> Result<Verifier, CliError> {
        self.read().map(|(verifier, _)| verifier)
    }

    /// The secret to sign with: the newest of the key's secrets (the first),
    /// without the whitespace around it; the list is checked as
    /// [`read`](Self::read) checks it.
    fn signing_secret(&self) -> Result<Zeroizing<String>, CliError> {
        let (_, secrets) = self.read()?;
        let newest = secrets.split(',').next().unwrap_or_default().trim();
        Ok(Zeroizing::new(newest.to_owned()))
    }
}

#[derive(Debug, Args)]
struct SignArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// The raw body to sign, byte for byte (`-` reads stdin).
    #[arg(long, value_name = "FILE")]
    body_file: PathBuf,
    /// The X-Clink-Timestamp to sign with, in epoch seconds or milliseconds
    /// [default: now, in milliseconds].
    #[arg(long, value_name = "T", value_parser = timestamp_text)]
    timestamp: Option<String>,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// The raw body as received, byte for byte (`-` reads stdin).
    #[arg(long, value_name = "FILE")]
    body_file: PathBuf,
    /// The X-Clink-Timestamp header as received (spaces and tabs around it
    /// are dropped, as an HTTP server drops them).
    #[arg(long, value_name = "T")]
    timestamp: String,
    /// The X-Clink-Signature header as received (spaces and tabs around it
    /// are dropped).
    #[arg(long, value_name = "S")]
    signature: String,
    /// How far the timestamp may be from the clock, in seconds, either way.
    #[arg(long, value_name = "N", default_value_t = 300)]
    tolerance_seconds: u64,
    /// Check as if the clock read N epoch milliseconds (to check an old
    /// delivery, or a test vector) [default: the system clock].
    #[arg(long, value_name = "N")]
    now_ms: Option<i64>,
}

#[derive(Debug, Args)]
struct FixtureArgs {
    /// The event type, e.g. order.succeeded.
    #[arg(
        value_name = "TYPE",
        value_parser = event_type(),
        hide_possible_values = true,
        required_unless_present = "list"
    )]
    event_type: Option<EventType>,
    /// List all 44 event types instead.
    #[arg(long, conflicts_with = "event_type")]
    list: bool,
}

/// What kind of error ended a command: the `error` code of a JSON error,
/// and the exit code. The codes are listed in [`AFTER_HELP`]; they are
/// stable, so add to them rather than rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorCode {
    /// Bad arguments: clap's own errors, and checks clap cannot make.
    Usage,
    /// An event type that is not one of the 44.
    UnknownEventType,
    /// No signing key, an empty one, or `env:NAME` naming an unset variable.
    NoSigningKey,
    /// `--to` is not an `http://` URL with a host.
    BadUrl,
    /// A file, stdin, the port or the runtime could not be used.
    Io,
    /// `verify`: the signature did not verify.
    InvalidSignature,
    /// `send`: a delivery got a status other than 2xx.
    Non2xx,
    /// `send --tamper`: a tampered delivery was answered other than `401`
    /// (a `2xx`: the receiver took a forgery), or `401` for its timestamp,
    /// before the receiver checked its body.
    TamperAccepted,
    /// `send`: a delivery got no answer at all.
    Unreachable,
    /// `inbox replay`: the event was handled (replay it with --force) or is running.
    Refused,
    /// `listen`: a second Ctrl-C or SIGTERM stopped it at once, without
    /// waiting for the deliveries in progress.
    Interrupted,
    /// `api`, `endpoints`: `CLINK_SECRET_KEY` is not set, or empty.
    NoApiKey,
    /// `api`, `endpoints`: a key Clink would refuse, an unknown
    /// `CLINK_ENV`, or a bad `CLINK_API_BASE_URL`; nothing was sent.
    ApiConfig,
    /// `api`, `endpoints`: a call to Clink's API failed; its code is the
    /// kind's name, and it exits 1 when Clink said no.
    Api(ApiErrorKind),
}

impl ErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::UnknownEventType => "unknown_event_type",
            Self::NoSigningKey => "no_signing_key",
            Self::BadUrl => "bad_url",
            Self::Io => "io",
            Self::InvalidSignature => "invalid_signature",
            Self::Non2xx => "non_2xx",
            Self::TamperAccepted => "tamper_accepted",
            Self::Unreachable => "unreachable",
            Self::Refused => "refused",
            Self::Interrupted => "interrupted",
            Self::NoApiKey => "no_api_key",
            Self::ApiConfig => "api_config",
            Self::Api(kind) => kind.as_str(),
        }
    }

    fn exit_code(self) -> ExitCode {
        match self {
            Self::InvalidSignature | Self::Non2xx | Self::TamperAccepted | Self::Refused => {
                ExitCode::from(1)
            }
            Self::Api(kind) if kind.is_refusal() => ExitCode::from(1),
            // As a shell reports a command that Ctrl-C ended (128 + SIGINT).
            Self::Interrupted => ExitCode::from(130),
            _ => ExitCode::from(2),
        }
    }
}

/// An error that ends the command with a non-zero exit code. Its message
/// never holds a secret.
#[derive(Debug)]
struct CliError {
    code: ErrorCode,
    message: String,
    /// The text output already says it (a failed verification, a summary
    /// with failed deliveries): only `--json` prints it again, on stderr.
    reported: bool,
    /// The command has printed the error itself, as [`Output::error_text`]
    /// gives it, whatever the format: it is not printed again.
    printed: bool,
}

impl CliError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reported: false,
            printed: false,
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Usage, message)
    }

    fn no_key(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NoSigningKey, message)
    }

    fn io(context: &str, error: &dyn std::error::Error) -> Self {
        Self::new(ErrorCode::Io, format!("{context}: {}", error_chain(error)))
    }

    /// A failure the command's output has already shown.
    fn reported(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            reported: true,
            ..Self::new(code, message)
        }
    }

    /// This error, which the command has printed itself (in the format
    /// [`Output::error_text`] gives).
    fn printed(self) -> Self {
        Self {
            printed: true,
            ..self
        }
    }

    /// Prints the error (unless text output already showed it) and gives its exit code.
    fn finish(self, out: &Output) -> ExitCode {
        if !self.printed && (out.json || !self.reported) {
            out.error(self.code.as_str(), &self.message);
        }
        self.code.exit_code()
    }
}

/// Whether `--json` is among the raw arguments (before any `--`), so that
/// an error clap finds in them can be printed as JSON too.
fn json_requested(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|arg| *arg != "--")
        .any(|arg| arg == "--json")
}

/// The environment variables that hold keys: each comma-separated part of
/// their values is kept out of messages that quote an argument.
const KEY_VARIABLES: &[&str] = &[
    KEY_VARIABLE,
    api_command::API_KEY_VARIABLE,
    "CLINK_DESTINATION_SIGNING_KEY",
    "CLINK_CONSOLE_TOKEN",
];

/// How a key starts: a signing key, or a secret key of Clink's API (a
/// sandbox key starts `sk_test_` or `sk_uat_`, a production one `sk_prod_`
/// or `sk_live_`). Text that starts so, up to a space, a quote or a comma,
/// is kept out of a message, wherever it stands (after the escape that
/// colours it, say).
const KEY_PREFIXES: &[&str] = &["whsec_", "sk_test_", "sk_uat_", "sk_prod_", "sk_live_"];

/// Whether `name` is named as environment variables conventionally are:
/// upper-case letters, digits and `_`.
fn is_conventional_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `name` can be an environment variable's name (a letter or `_`,
/// then letters, digits and `_`) and does not look like a key (one starts
/// with a lowercase prefix, `whsec_`: `WHSEC_PROD` is a name).
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !KEY_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The secrets among the raw arguments (the values of `--secret`) and in
/// the environment (the [`KEY_VARIABLES`], and a variable `--secret
/// env:NAME` names), to keep out of messages that quote an argument.
fn secrets_in(args: &[OsString]) -> Vec<Zeroizing<String>> {
    let mut variables: Vec<String> = KEY_VARIABLES.iter().map(|&name| name.to_owned()).collect();
    let mut secrets = Vec::new();
    let mut args = args.iter().map(|arg| arg.to_string_lossy());
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--secret") {
            Some("") => args.next(),
            Some(rest) => rest.strip_prefix('=').map(|value| value.to_owned().into()),
            None => None,
        };
        if let Some(value) = value {
            match value.strip_prefix("env:") {
                Some(name) => variables.push(name.to_owned()),
                None => {
                    // Each secret of a list too, as it is read.
                    let value = Zeroizing::new(value.into_owned());
                    secrets.extend(
                        value
                            .split(',')
                            .map(str::trim)
                            .map(|part| Zeroizing::new(part.to_owned())),
                    );
                    secrets.push(value);
                }
            }
        }
    }
    for name in variables {
        if let Some(value) = std::env::var_os(&name) {
            let value = Zeroizing::new(value.to_string_lossy().into_owned());
            secrets.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .map(|part| Zeroizing::new(part.to_owned())),
            );
        }
    }
    secrets.retain(|secret| !secret.is_empty());
    secrets
}

/// `message` with every one of `secrets`, all text that starts as a key
/// does ([`KEY_PREFIXES`]), and the user info of every URL in it (a
/// password: `https://[redacted]@host`), as `[redacted]`.
fn redacted(message: &str, secrets: &[Zeroizing<String>]) -> String {
    // The spans to hide, found in the message as given, so that no secret
    // is looked for in the text that stands for another.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for secret in secrets {
        spans.extend(
            message
                .match_indices(secret.as_str())
                .map(|(at, found)| (at, at + found.len())),
        );
    }
    for prefix in KEY_PREFIXES {
        for (at, _) in message.match_indices(prefix) {
            let key = message[at..]
                .find(|c: char| {
                    c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '`' | ',')
                })
                .unwrap_or(message.len() - at);
            spans.push((at, at + key));
        }
    }
    // A URL's user info runs up to its last `@` before the URL ends (at a
    // space), as a password may hold `@`, `/` or a quote; when an `@`
    // stands past a URL's closing quote instead, more is hidden than
    // needed, never less.
    for (at, scheme) in message.match_indices("://") {
        let start = at + scheme.len();
        let url = &message[start..];
        let end = url
            .find(|c: char| c.is_whitespace() || c.is_control())
            .unwrap_or(url.len());
        if let Some(user_info) = url[..end].rfind('@') {
            spans.push((start, start + user_info));
        }
    }
    spans.sort_unstable();
    let mut text = String::with_capacity(message.len());
    let mut shown = 0;
    for (start, end) in spans {
        if end <= shown {
            continue;
        }
        if start > shown {
            text.push_str(&message[shown..start]);
        }
        if start >= shown {
            text.push_str("[redacted]");
        }
        shown = end;
    }
    text.push_str(&message[shown..]);
    text
}

/// A clap error as a [`CliError`]: its code, and its message on one line
/// without the usage and the `--help` pointer.
fn clap_error(error: &clap::Error, args: &[OsString], secrets: &[Zeroizing<String>]) -> CliError {
    // A name given that is none of the 44; not a `--type` given no value
    // (clap says that too as an invalid value: an empty one).
    let unknown_type = error.kind() == ErrorKind::InvalidValue
        && matches!(
            error.get(ContextKind::InvalidArg),
            Some(ContextValue::String(arg)) if arg.contains("TYPE")
        )
        && matches!(
            error.get(ContextKind::InvalidValue),
            Some(ContextValue::String(value)) if !value.is_empty()
        );
    let code = if unknown_type {
        ErrorCode::UnknownEventType
    } else {
        ErrorCode::Usage
    };
    let rendered = match error.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // The command whose subcommand is missing, if it is not the
            // top level (`inbox`, `api`, `endpoints`).
            let command = args
                .iter()
                .skip(1)
                .filter_map(|arg| arg.to_str())
                .find(|arg| !arg.starts_with('-'));
            match command {
                Some(command) => format!(
                    "{0} needs a subcommand: see `clink-webhook {0} --help`",
                    output::escaped(command)
                ),
                None => "a command is required: sign, verify, fixture, send, listen, inbox, api \
                         or endpoints"
                    .to_owned(),
            }
        }
        _ => error.render().to_string(),
    };
    let mut message = String::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        // The 44 names are a command away; the tip names the nearest one.
        if line.is_empty() || (unknown_type && line.starts_with("[possible values:")) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(if message.ends_with(':') { " " } else { "; " });
        }
        message.push_str(line.strip_prefix("error: ").unwrap_or(line));
    }
    if unknown_type {
        message.push_str("; list them with `clink-webhook fixture --list`");
    }
    CliError::new(code, redacted(&message, secrets))
}

/// The parsed command line, or the exit code once its error is printed.
/// Help and version print as usual; other clap errors print with every
/// key they quote redacted ([`redacted`]): as clap renders them, or as
/// JSON errors with `--json` anywhere in the arguments.
fn parse() -> Result<Cli, ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let error = match Cli::try_parse_from(&args) {
        Ok(cli) => return Ok(cli),
        Err(error) => error,
    };
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        error.exit();
    }
    let secrets = secrets_in(&args);
    if json_requested(&args) {
        return Err(clap_error(&error, &args, &secrets).finish(&Output::new(true)));
    }
    let color = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let rendered = if color {
        error.render().ansi().to_string()
    } else {
        error.render().to_string()
    };
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "{}", redacted(&rendered, &secrets));
    Err(ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2)))
}

/// An error and its sources, joined by `: ` and without repeats.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Parses an event type name, offering the 44 names when it is not one.
fn event_type() -> impl TypedValueParser<Value = EventType> {
    PossibleValuesParser::new(EventType::ALL.iter().map(EventType::as_str))
        .map(|name| EventType::from(name.as_str()))
}

/// Checks that a timestamp to sign with is epoch seconds or milliseconds,
/// as a verifier reads them: digits, at most `i64::MAX`.
fn timestamp_text(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<i64>().is_ok() {
        Ok(text.to_owned())
    } else {
        Err(
            "expected epoch seconds or milliseconds, as digits (at most 9223372036854775807)"
                .to_owned(),
        )
    }
}

/// Parses a time given on the command line: RFC 3339, or epoch
/// milliseconds. A number that would be a time before 2001-09-09 in
/// milliseconds is refused: it is most likely epoch seconds (as `sign` and
/// the verifier take them), which read as milliseconds would be a time in
/// January 1970 and, for a filter, match nearly every event or none.
fn time_arg(text: &str) -> Result<Timestamp, String> {
    const EARLIEST_MILLIS: i64 = 1_000_000_000_000;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<i64>() {
            Ok(millis) if millis >= EARLIEST_MILLIS => Ok(Timestamp::from_millis(millis)),
            Ok(_) => Err(format!(
                "{}: as epoch milliseconds that is before 2001-09-09, so most likely epoch \
                 seconds; give milliseconds ({}000 for those seconds) or RFC 3339 \
                 (2025-01-15T12:00:00Z)",
                output::escaped(text),
                output::escaped(text)
            )),
            Err(_) => Err(format!(
                "{}: too large for epoch milliseconds",
                output::escaped(text)
            )),
        };
    }
    Timestamp::parse_rfc3339(text).map_err(|_| {
        format!(
            "{}: not a time; give RFC 3339 (2025-01-15T12:00:00Z) or epoch milliseconds",
            output::escaped(text)
        )
    })
}

/// The largest body `sign`, `verify` and `send` read: the layer's default
/// body limit (1 MiB), past which a receiver refuses a delivery.
const BODY_LIMIT: usize = clink_webhooks::layer::DEFAULT_BODY_LIMIT;

/// Reads a body file, or stdin for `-`: at most [`BODY_LIMIT`] bytes, and a
/// larger body is refused (never read whole: `/dev/zero` has no end).
fn read_body(path: &Path) -> Result<Vec<u8>, CliError> {
    let (source, failed, reader): (_, _, Box<dyn Read>) = if path == Path::new("-") {
        (
            "stdin".to_owned(),
            "cannot read the body from stdin".to_owned(),
            Box::new(std::io::stdin().lock()),
        )
    } else {
        let failed = format!("cannot read {}", path.display());
        let file = std::fs::File::open(path).map_err(|e| CliError::io(&failed, &e))?;
        (path.display().to_string(), failed, Box::new(file))
    };
    let mut body = Vec::new();
    reader
        .take(
            u64::try_from(BODY_LIMIT)
                .unwrap_or(u64::MAX)
                .saturating_add(1),
        )
        .read_to_end(&mut body)
        .map_err(|e| CliError::io(&failed, &e))?;
    if body.len() > BODY_LIMIT {
        return Err(CliError::usage(format!(
            "{source}: the body is larger than {BODY_LIMIT} bytes (1 MiB), the layer's default \
             body limit: a receiver refuses it"
        )));
    }
    Ok(body)
}

fn run_sign(out: &Output, args: &SignArgs) -> Result<(), CliError> {
    let secret = args.key.signing_secret()?;
    let body = read_body(&args.body_file)?;
    let timestamp = args
        .timestamp
        .clone()
        .unwrap_or_else(|| Timestamp::now().as_millis().to_string());
    let signature = sign(secret.as_bytes(), &timestamp, &body);
    if out.json {
        out.json_line(&json!({ "timestamp": timestamp, "signature": signature }));
    } else {
        out.line(&format!("X-Clink-Timestamp: {timestamp}"));
        out.line(&format!("X-Clink-Signature: {signature}"));
    }
    Ok(())
}

fn run_verify(out: &Output, args: &VerifyArgs) -> Result<(), CliError> {
    let verifier = args
        .key
        .verifier()?
        .tolerance(Duration::from_secs(args.tolerance_seconds));
    let body = read_body(&args.body_file)?;
    let now = args
        .now_ms
        .map_or_else(Timestamp::now, Timestamp::from_millis);
    // As a receiver gets them: an HTTP parser strips the spaces and tabs
    // around a header's value (pasted values often carry some), and no
    // header holds a line's end (a value cut from a CRLF dump ends in one).
    let header = |value: &str| value.trim_ascii().to_owned();
    match verifier.verify_at(
        &header(&args.timestamp),
        &header(&args.signature),
        &body,
        now.to_system_time(),
    ) {
        Ok(verified) => {
            let signed_at = verified.signed_at();
            if out.json {
                out.json_line(&json!({
                    "valid": true,
                    "signed_at": signed_at.to_string(),
                    "signed_at_ms": signed_at.as_millis(),
                }));
            } else {
                out.line(&format!(
                    "{}: the signature matches, signed at {signed_at}",
                    out.paint(Tone::Good, "valid")
                ));
            }
            Ok(())
        }
        Err(error) => {
            let code = error.kind().code();
            if out.json {
                out.json_line(
                    &json!({ "valid": false, "code": code, "message": error.to_string() }),
                );
            } else {
                out.line(&format!(
                    "{} ({code}): {error}",
                    out.paint(Tone::Bad, "invalid")
                ));
            }
            Err(CliError::reported(
                ErrorCode::InvalidSignature,
                error.to_string(),
            ))
        }
    }
}

fn run_fixture(out: &Output, args: &FixtureArgs) {
    match &args.event_type {
        Some(event_type) if out.json => {
            let body: serde_json::Value =
                serde_json::from_str(&fixture(event_type)).unwrap_or_default();
            out.json_line(&body);
        }
        Some(event_type) => out.line(&fixture(event_type)),
        // JSON Lines, as every --json output: one object per type.
        None if out.json => {
            for name in EventType::ALL {
                out.json_line(&json!({ "type": name.as_str() }));
            }
        }
        None => {
            for name in EventType::ALL {
                out.line(name.as_str());
            }
        }
    }
}

/// Runs `command` on a runtime of its own. Once it has returned, what it
/// left running in the runtime's blocking threads (a name lookup the system
/// resolver has not given up on, past the command's own timeout) is waited
/// for `leftovers` at most, so that the command exits on time.
fn on_runtime(
    leftovers: Duration, command: impl Future<Output = Result<(), CliError>>,
) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::io("cannot start the async runtime", &e))?;
    let result = runtime.block_on(command);
    runtime.shutdown_timeout(leftovers);
    result
}

/// How long a command that reaches only the network waits for what it
/// left blocking (a name lookup) once done.
const NETWORK_LEFTOVERS: Duration = Duration::from_secs(1);

/// How long a command that writes an inbox waits for what it left
/// blocking once done: an SQLite write under way (which waits up to its
/// 5 s busy timeout for the file's lock) is let land rather than rolled
/// back by the exit.
const INBOX_LEFTOVERS: Duration = Duration::from_secs(10);

/// The API client's warnings (a key Clink refused while an older one
/// works, say) on stderr, one line each.
fn api_warnings() {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .finish();
    // Only the one command runs: nothing set one before.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let out = Output::new(cli.json);
    let result = match &cli.command {
        Command::Sign(args) => run_sign(&out, args),
        Command::Verify(args) => run_verify(&out, args),
        Command::Fixture(args) => {
            run_fixture(&out, args);
            Ok(())
        }
        Command::Send(args) => on_runtime(NETWORK_LEFTOVERS, send::run(&out, args)),
        Command::Listen(args) => on_runtime(NETWORK_LEFTOVERS, listen::run(&out, args)),
        Command::Inbox(args) => on_runtime(INBOX_LEFTOVERS, inbox_command::run(&out, args)),
        #[cfg(all(feature = "gateway", unix))]
        Command::Serve(args) => on_runtime(INBOX_LEFTOVERS, serve::run(&out, args)),
        Command::Api(args) => {
            api_warnings();
            on_runtime(NETWORK_LEFTOVERS, api_command::run(&out, args))
        }
        Command::Endpoints(args) => {
            api_warnings();
            on_runtime(NETWORK_LEFTOVERS, endpoints_command::run(&out, args))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.finish(&out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timestamp to sign with is one a verifier reads: digits, at most
    /// `i64::MAX`. Before, 19 digits of any value passed, and the headers
    /// printed were refused as malformed by every receiver.
    #[test]
    fn a_timestamp_to_sign_with_is_one_a_verifier_reads() {
        for good in ["0", "1736942400", "1736942400000", "9223372036854775807"] {
            assert_eq!(timestamp_text(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "9223372036854775808",
            "9999999999999999999",
            "+1",
            "-1",
            "1e3",
            "12a",
        ] {
            assert!(timestamp_text(bad).is_err(), "{bad:?}");
        }
    }

    /// A command returns on time though it left a blocking call running (a
    /// name lookup the system resolver goes on with past the command's own
    /// timeout). Before, the runtime waited for it however long it took.
    #[test]
    fn a_command_returns_without_waiting_for_what_it_left_blocking() {
        let started = std::time::Instant::now();
        let result = on_runtime(NETWORK_LEFTOVERS, async {
            drop(tokio::task::spawn_blocking(|| {
                std::thread::sleep(Duration::from_secs(600));
            }));
            Ok(())
        });
        assert!(result.is_ok());
        // A bound far past the second it waits, far short of the call.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(300), "{took:?}");
    }

    fn secrets(list: &[&str]) -> Vec<Zeroizing<String>> {
        list.iter()
            .map(|s| Zeroizing::new((*s).to_owned()))
            .collect()
    }

    #[test]
    fn every_key_in_a_message_is_redacted() {
        for (message, given, shown) in [
            (
                "unexpected argument 'whsec_old' found",
                &[][..],
                "unexpected argument '[redacted]' found",
            ),
            (
                "tip: to pass 'whsec_a,whsec_b' as a value, use '-- whsec_a,whsec_b'",
                &[],
                "tip: to pass '[redacted],[redacted]' as a value, use '-- [redacted],[redacted]'",
            ),
            (
                "invalid value 'x=sk_test_abc' for '--to <URL>'",
                &[],
                "invalid value 'x=[redacted]' for '--to <URL>'",
            ),
            // Every prefix of Clink's API keys, the sandbox's and production's.
            (
                "unexpected argument 'sk_uat_abc' found; 'sk_prod_d', 'sk_live_e'",
                &[],
                "unexpected argument '[redacted]' found; '[redacted]', '[redacted]'",
            ),
            // Wherever it starts.
            (
                "unexpected argument '--key=whsec_x' found",
                &[],
                "unexpected argument '--key=[redacted]' found",
            ),
            (
                "unexpected argument 'hunter2' found",
                &["hunter2"],
                "unexpected argument '[redacted]' found",
            ),
            // Overlapping secrets, and a short one that also stands in
            // the word that replaces another: each hidden once.
            ("x 'abcdef' y", &["abcd", "cdef", "bc"], "x '[redacted]' y"),
            (
                "'abc' or 'red'",
                &["abc", "red"],
                "'[redacted]' or '[redacted]'",
            ),
            (
                "'\u{1b}[33mwhsec_colored\u{1b}[0m'",
                &[],
                "'\u{1b}[33m[redacted]\u{1b}[0m'",
            ),
            // A URL's user info, up to its last `@`; a URL without any, and
            // an `@` past the URL's end, as they are.
            (
                "invalid value 'http://alice:s3cr@t@hooks.example:8080/clink' for '[TYPE]'",
                &[],
                "invalid value 'http://[redacted]@hooks.example:8080/clink' for '[TYPE]'",
            ),
            (
                "'https://hooks.example/a' and 'x@y' and 'redis://:pw@h'",
                &[],
                "'https://hooks.example/a' and 'x@y' and 'redis://[redacted]@h'",
            ),
            // A quote in the password is hidden with it.
            (
                "invalid value 'redis://:pa'ss@h' for '[TYPE]'",
                &[],
                "invalid value 'redis://[redacted]@h' for '[TYPE]'",
            ),
        ] {
            assert_eq!(redacted(message, &secrets(given)), shown, "{message}");
        }
    }
}
