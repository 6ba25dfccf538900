//! `endpoints`: the merchant's webhook endpoints through Clink's API: list,
//! get, ensure, rotate-secret, enable, disable, delete.

use clap::{Args, Subcommand};
use clink_webhooks::api::{
    ApiError, ApiErrorKind, Endpoint, EndpointQuery, EnsureEndpoint, Ensured, Page,
};
use clink_webhooks::EventType;
use http::Uri;
use serde_json::{json, Value};

use crate::api_command::{api_error, client, shared_help, Printer};
use crate::output::{escaped, Output};
use crate::{CliError, ErrorCode};

/// The events `--events core` stands for: a checkout completing, an order
/// succeeding or failing, a refund succeeding, a subscription being
/// created and an invoice being paid (the alias of Clink's own CLI).
const CORE_EVENTS: [EventType; 6] = [
    EventType::SessionComplete,
    EventType::OrderSucceeded,
    EventType::OrderFailed,
    EventType::RefundSucceeded,
    EventType::SubscriptionCreated,
    EventType::InvoicePaid,
];

/// `endpoints --help`'s text after the options.
pub(crate) fn after_help() -> String {
    format!(
        "\
Signing secrets are masked (`whse...9f2a`) unless --show-secret is given;
with --json the plain secret is then the `signingSecret` field. Clink returns
the plain secret only when it creates an endpoint, rotates its secret, or
ensure is asked for it (--return-secret); list and get never have it. A secret
ensure gets back (that of an endpoint it created) is printed in full even
without --show-secret: Clink never shows it again.

`ensure URL --events NAMES` creates the endpoint at URL, or updates the one
already there: the recommended, idempotent set-up. NAMES are event names
separated by commas (order.succeeded,refund.succeeded); `core` stands for
session.complete, order.succeeded, order.failed, refund.succeeded,
subscription.created and invoice.paid, `all` for the 44 event types
(`clink-webhook fixture --list`). With --return-secret Clink returns the
signing secret; for an endpoint that exists already it can only do that by
rotating the secret, which it does unless --no-rotate-secret-if-unavailable
is given. Rotating (--rotate-secret, rotate-secret) stops the old secret at
once: update the receiver's key straight away. When rotate-secret or ensure
gets no answer it can read (a timeout, a lost connection, a server error),
Clink may have rotated or created all the same, and nobody has the new
secret: the error says so, and how to rotate again with --show-secret. An
error whose answer carries a signing secret prints that secret on stdout, in
full as on success, and the command still fails (exit 1 when the answer said
no, 2 for a failure on the way): Clink may or may not sign with it.

Values from the API are printed escaped when they hold control, format or
separator characters.

{}",
        shared_help()
    )
}

#[derive(Debug, Args)]
pub(crate) struct EndpointsArgs {
    /// Print signing secrets in full instead of masked.
    #[arg(long, global = true)]
    show_secret: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// A page of the endpoints, all or those the filters match.
    List {
        /// Only enabled (true) or disabled (false) endpoints.
        #[arg(long, value_name = "true|false")]
        enabled: Option<bool>,
        /// Only the endpoint with exactly this URL.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// The page, from 1.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        page: u32,
        /// Endpoints per page, 1 to 100.
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        page_size: u32,
    },
    /// One endpoint.
    Get {
        /// The endpoint's id (whk_...).
        id: String,
    },
    /// Create the endpoint at URL, or update the one there (idempotent).
    Ensure(EnsureArgs),
    /// Give an endpoint a new signing secret; the old one stops working at once.
    RotateSecret {
        /// The endpoint's id.
        id: String,
    },
    /// Have Clink deliver to an endpoint again.
    Enable {
        /// The endpoint's id.
        id: String,
    },
    /// Stop Clink delivering to an endpoint.
    Disable {
        /// The endpoint's id.
        id: String,
    },
    /// Delete an endpoint.
    Delete {
        /// The endpoint's id.
        id: String,
    },
}

// Each bool is a flag of its own on the command line.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Args)]
struct EnsureArgs {
    /// The endpoint's https:// URL, which identifies it.
    url: String,
    /// The events to deliver: names separated by commas, `core` or `all`.
    #[arg(long, value_name = "NAMES", required = true, value_delimiter = ',')]
    events: Vec<String>,
    /// A description for the dashboard.
    #[arg(long, value_name = "D")]
    description: Option<String>,
    /// Create or leave it disabled: Clink does not deliver to it.
    #[arg(long)]
    disabled: bool,
    /// Ask Clink for the plain signing secret (rotating an existing
    /// endpoint's secret to get one, unless --no-rotate-secret-if-unavailable).
    #[arg(long)]
    return_secret: bool,
    /// With --return-secret: do not rotate an existing endpoint's secret;
    /// go without the secret instead.
    #[arg(long, requires = "return_secret")]
    no_rotate_secret_if_unavailable: bool,
    /// Rotate the signing secret in any case (the old one stops working at once).
    #[arg(long)]
    rotate_secret: bool,
}

/// The event names `--events` gives, `core` and `all` expanded, each once
/// in the order given.
fn event_names(given: &[String]) -> Result<Vec<String>, CliError> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !names.iter().any(|kept| kept == name) {
            names.push(name.to_owned());
        }
    };
    for name in given.iter().map(|name| name.trim()) {
        match name {
            "" => {}
            "core" => CORE_EVENTS.iter().for_each(|t| add(t.as_str())),
            "all" => EventType::ALL.iter().for_each(|t| add(t.as_str())),
            name if EventType::ALL.iter().any(|t| t.as_str() == name) => add(name),
            name => {
                return Err(CliError::new(
                    ErrorCode::UnknownEventType,
                    format!(
                        "--events: {} is not an event type; list them with \
                         `clink-webhook fixture --list`, or give core or all",
                        escaped(name)
                    ),
                ))
            }
        }
    }
    if names.is_empty() {
        return Err(CliError::usage(
            "--events: name at least one event type, or core or all",
        ));
    }
    Ok(names)
}

/// An endpoint's URL checked to be an `https://` URL with a host, as Clink
/// requires, and written as Clink's own CLI sends it (a WHATWG URL's
/// text), so that `ensure` and `list --url` find the endpoint however it
/// was typed: the scheme and host in lower case, no default port, `/` for
/// an empty path.
///
/// A message never repeats the URL: it may hold a password or a token.
fn endpoint_url(url: &str) -> Result<String, CliError> {
    let bad = || {
        CliError::new(
            ErrorCode::BadUrl,
            "an endpoint's URL must be an https:// URL with a host",
        )
    };
    let url_text = url.trim();
    // A fragment (which the parse would drop) or a `.`/`..` segment (which
    // Clink's CLI would resolve) would make the URL sent differ from the
    // one typed.
    let path_part = url_text.split_once("://").map_or("", |(_, rest)| {
        rest.split_once('/').map_or("", |(_, path)| path)
    });
    let path_only = path_part.split(['?', '#']).next().unwrap_or("");
    // As WHATWG reads them: `%2e` is a dot, and a backslash a slash.
    let dot_segment = |segment: &str| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    };
    if url_text.contains(['#', '\\']) || path_only.split('/').any(dot_segment) {
        return Err(CliError::new(
            ErrorCode::BadUrl,
            "an endpoint's URL must not hold a fragment (#...), a backslash or a . or .. segment",
        ));
    }
    let uri = url_text.parse::<Uri>().map_err(|_| bad())?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(bad());
    };
    if authority.as_str().contains('@') {
        return Err(CliError::new(
            ErrorCode::BadUrl,
            "an endpoint's URL must not hold a user or a password (user:password@)",
        ));
    }
    let host = authority.host();
    if !scheme.eq_ignore_ascii_case("https") || host.is_empty() {
        return Err(bad());
    }
    let port = match authority.port_u16() {
        Some(443) | None => String::new(),
        Some(port) => format!(":{port}"),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let path = if path.is_empty() || path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok(format!("https://{}{port}{path}", host.to_ascii_lowercase()))
}

/// An endpoint as JSON: the secret masked, or with `show_secret` in full.
fn endpoint_json(endpoint: &Endpoint, show_secret: bool) -> Value {
    // `Endpoint` serializes its secret masked.
    let mut value = serde_json::to_value(endpoint).unwrap_or(Value::Null);
    if let (true, Some(secret)) = (show_secret, &endpoint.signing_secret) {
        value["signingSecret"] = json!(secret.expose());
    }
    value
}

/// What ensure did, as JSON; the endpoint as [`endpoint_json`] writes it.
fn ensured_json(ensured: &Ensured, show_secret: bool) -> Value {
    let mut value = serde_json::to_value(ensured).unwrap_or(Value::Null);
    value["endpoint"] = endpoint_json(&ensured.endpoint, show_secret);
    value
}

/// The secret to print for `endpoint`: the plain one masked or in full,
/// else the masked form Clink gave.
fn secret_text(endpoint: &Endpoint, show_secret: bool) -> Option<String> {
    match &endpoint.signing_secret {
        Some(secret) if show_secret => Some(escaped(secret.expose())),
        Some(secret) => Some(format!(
            "{} (masked: --show-secret prints it; Clink returns it only on creation \
             and rotation)",
            secret.masked()
        )),
        None => endpoint
            .masked_signing_secret
            .as_deref()
            .map(|masked| format!("{} (masked by Clink)", escaped(masked))),
    }
}

/// One line for an endpoint, as `list` prints it.
fn endpoint_line(endpoint: &Endpoint, show_secret: bool) -> String {
    let mut line = format!(
        "{}  {}  {}  {} event{}",
        escaped(&endpoint.id),
        if endpoint.enabled {
            "enabled "
        } else {
            "disabled"
        },
        escaped(&endpoint.url),
        endpoint.events.len(),
        if endpoint.events.len() == 1 { "" } else { "s" },
    );
    if let Some(description) = &endpoint.description {
        line.push_str(&format!("  {}", escaped(description)));
    }
    if let Some(secret) = secret_text(endpoint, show_secret) {
        line.push_str(&format!("  secret {secret}"));
    }
    line
}

/// An endpoint's lines: its id and state, then a field a line.
fn endpoint_lines(endpoint: &Endpoint, show_secret: bool) -> Vec<String> {
    let state = if endpoint.enabled {
        "enabled"
    } else {
        "disabled"
    };
    let events: Vec<String> = endpoint.events.iter().map(|e| escaped(e)).collect();
    let mut lines = vec![
        format!("{}  {state}", escaped(&endpoint.id)),
        format!("  url          {}", escaped(&endpoint.url)),
        format!("  events       {}", events.join(", ")),
    ];
    if let Some(description) = &endpoint.description {
        lines.push(format!("  description  {}", escaped(description)));
    }
    if let Some(secret) = secret_text(endpoint, show_secret) {
        lines.push(format!("  secret       {secret}"));
    }
    if let Some(at) = endpoint.created_at {
        lines.push(format!("  created at   {at}"));
    }
    if let Some(at) = endpoint.updated_at {
        lines.push(format!("  updated at   {at}"));
    }
    lines
}

/// Prints one endpoint: JSON, or its lines after `heading` if any.
fn print_endpoint(printer: &Printer<'_>, heading: Option<&str>, endpoint: &Endpoint, show: bool) {
    if printer.out.json {
        printer.json(&endpoint_json(endpoint, show));
        return;
    }
    if let Some(heading) = heading {
        printer.line(heading);
    }
    for line in endpoint_lines(endpoint, show) {
        printer.line(&line);
    }
}

/// Runs `endpoints`.
pub(crate) async fn run(out: &Output, args: &EndpointsArgs) -> Result<(), CliError> {
    let printer = Printer::new(out);
    run_action(&printer, args)
        .await
        .map_err(|error| printer.error(error))
}

async fn run_action(printer: &Printer<'_>, args: &EndpointsArgs) -> Result<(), CliError> {
    let show = args.show_secret;
    match &args.action {
        Action::List {
            enabled,
            url,
            page,
            page_size,
        } => {
            let mut query = EndpointQuery::new().page(*page).page_size(*page_size);
            if let Some(enabled) = enabled {
                query = query.enabled(*enabled);
            }
            if let Some(url) = url {
                query = query.url(endpoint_url(url)?);
            }
            let endpoints = client()?
                .list_endpoints(&query)
                .await
                .map_err(|e| api_error(&e))?;
            print_list(printer, &endpoints, *page, show);
        }
        Action::Get { id } => {
            let endpoint = client()?.endpoint(id).await.map_err(|e| api_error(&e))?;
            print_endpoint(printer, None, &endpoint, show);
        }
        Action::Ensure(ensure) => {
            // The arguments are checked before the configuration.
            let want = ensure_request(ensure)?;
            if ensure.rotate_secret
                || (ensure.return_secret && !ensure.no_rotate_secret_if_unavailable)
            {
                must_show(show, "ensure with --rotate-secret or --return-secret")?;
            }
            let ensured = client()?.ensure_endpoint(&want).await.map_err(|e| {
                secret_call_failed(printer, &e, &SecretCall::Ensure { url: &ensure.url })
            })?;
            // A plain secret in ensure's answer is new (an endpoint it
            // created, or a rotation): Clink cannot show an existing one
            // and never shows this one again. `must_show` refuses the
            // rotations beforehand; a creation shows only in the answer,
            // when refusing is too late, so its secret is printed in full.
            let shown_once = !show && ensured.endpoint.signing_secret.is_some();
            print_ensured(printer, &ensured, show || shown_once, shown_once);
            let rotated = ensure.rotate_secret
                || matches!(
                    ensured.source.as_deref(),
                    Some("rotated" | "updated_rotated")
                );
            if rotated && ensured.endpoint.signing_secret.is_none() {
                return Err(rotated_without_secret(&SecretCall::Ensure {
                    url: &ensure.url,
                }));
            }
            if ensured.source.as_deref() == Some("created")
                && ensured.endpoint.signing_secret.is_none()
            {
                return Err(created_without_secret(&ensured.endpoint.id));
            }
        }
        Action::RotateSecret { id } => {
            must_show(show, "rotate-secret")?;
            let endpoint = client()?
                .rotate_endpoint_secret(id)
                .await
                .map_err(|e| secret_call_failed(printer, &e, &SecretCall::Rotate { id }))?;
            let heading = "rotated the signing secret: the old one no longer verifies; \
                           give the receiver the new one now";
            print_endpoint(printer, Some(heading), &endpoint, show);
            if endpoint.signing_secret.is_none() {
                return Err(rotated_without_secret(&SecretCall::Rotate { id }));
            }
        }
        Action::Enable { id } => {
            let endpoint = client()?
                .enable_endpoint(id)
                .await
                .map_err(|e| api_error(&e))?;
            print_endpoint(printer, Some("enabled"), &endpoint, show);
        }
        Action::Disable { id } => {
            let endpoint = client()?
                .disable_endpoint(id)
                .await
                .map_err(|e| api_error(&e))?;
            print_endpoint(printer, Some("disabled"), &endpoint, show);
        }
        Action::Delete { id } => {
            client()?
                .delete_endpoint(id)
                .await
                .map_err(|e| api_error(&e))?;
            if printer.out.json {
                printer.json(&json!({ "deleted": id }));
            } else {
                printer.line(&format!("deleted {}", escaped(id)));
            }
        }
    }
    Ok(())
}

/// Prints a page of endpoints: `{total, rows}` with `--json`, else one a
/// line and a count.
fn print_list(printer: &Printer<'_>, endpoints: &Page<Endpoint>, page: u32, show: bool) {
    if printer.out.json {
        let rows: Vec<Value> = endpoints
            .rows
            .iter()
            .map(|endpoint| endpoint_json(endpoint, show))
            .collect();
        printer.json(&json!({ "total": endpoints.total, "rows": rows }));
    } else if endpoints.rows.is_empty() {
        printer.line(&format!(
            "no endpoints on page {page} ({} in all)",
            endpoints.total
        ));
    } else {
        for endpoint in &endpoints.rows {
            printer.line(&endpoint_line(endpoint, show));
        }
        printer.line(&format!(
            "{} of {} endpoints, page {page}",
            endpoints.rows.len(),
            endpoints.total
        ));
    }
}

/// A call that can create or rotate a secret Clink shows once.
enum SecretCall<'a> {
    /// `rotate-secret ID`.
    Rotate {
        /// The endpoint's id, as given.
        id: &'a str,
    },
    /// `ensure URL`.
    Ensure {
        /// The endpoint's URL, as given.
        url: &'a str,
    },
}

impl SecretCall<'_> {
    /// What Clink may have done.
    fn may_have(&self) -> &'static str {
        match self {
            Self::Rotate { .. } => "rotated the signing secret",
            Self::Ensure { .. } => "created the endpoint or rotated its signing secret",
        }
    }

    /// What an answer lost on the way may have left.
    fn maybe_lost(&self) -> String {
        match self {
            Self::Rotate { .. } => format!(
                "the signing secret MAY have been rotated at Clink with the answer lost: then \
                 the old one no longer verifies and nobody has the new one; {}",
                self.again()
            ),
            Self::Ensure { .. } => format!(
                "Clink MAY have created the endpoint or rotated its signing secret with the \
                 answer lost, and then nobody has the secret it signs with: {} to get a new one",
                self.again()
            ),
        }
    }

    /// How to get a new secret for sure.
    fn again(&self) -> String {
        match self {
            Self::Rotate { id } => format!(
                "rotate it again with `clink-webhook endpoints rotate-secret {} --show-secret`",
                escaped(id)
            ),
            Self::Ensure { .. } => {
                "run this ensure again with --rotate-secret --show-secret".to_owned()
            }
        }
    }
}

/// A failed call that creates or rotates a secret Clink shows once, as a
/// [`CliError`] that exits as [`api_error`] says (never 0).
///
/// When the answer carried a signing secret ([`ApiError::new_secret`]),
/// it is printed on stdout as the call's success prints it, in full (the
/// rotations need `--show-secret`, and ensure prints a secret it gets back
/// in full anyway), after a line saying that it came with an error; the
/// error says so too. Otherwise, when the request may have been applied
/// with its answer lost (no answer in time, a connection lost, a server
/// error, an answer that could not be read), the error says that nobody
/// may have the new secret, and how to get one. When Clink said no, it is
/// as [`api_error`] has it; when no connection to Clink could be made, the
/// error says the request never reached it.
fn secret_call_failed(printer: &Printer<'_>, error: &ApiError, call: &SecretCall<'_>) -> CliError {
    let mut cli_error = api_error(error);
    if let Some(secret) = error.new_secret() {
        print_secret_with_error(printer, secret.expose(), call);
        cli_error.message.push_str(&format!(
            "; the answer carried a signing secret, printed in full on stdout: if Clink {}, \
             it signs with that one from now on{}, so give it to the receiver and keep the \
             output safe; to be sure which secret Clink signs with, {}",
            call.may_have(),
            match call {
                SecretCall::Rotate { .. } => " and the old one no longer verifies",
                SecretCall::Ensure { .. } => "",
            },
            call.again()
        ));
        return cli_error;
    }
    if error.never_reached_clink() {
        cli_error
            .message
            .push_str("; the request never reached Clink: nothing was changed there");
        return cli_error;
    }
    let maybe = matches!(
        error.kind(),
        ApiErrorKind::Timeout
            | ApiErrorKind::Transport
            | ApiErrorKind::Server
            | ApiErrorKind::Decode
    );
    if maybe {
        cli_error.message.push_str("; ");
        cli_error.message.push_str(&call.maybe_lost());
    }
    cli_error
}

/// Prints a signing secret that came with an error, as the call's success
/// prints it: with `--json` the field it would be in (`signingSecret`, or
/// `endpoint.signingSecret` for ensure), else a line saying where it came
/// from and the endpoint's lines that are known.
fn print_secret_with_error(printer: &Printer<'_>, secret: &str, call: &SecretCall<'_>) {
    if printer.out.json {
        printer.json(&match call {
            SecretCall::Rotate { id } => json!({ "id": id, "signingSecret": secret }),
            SecretCall::Ensure { url } => {
                json!({ "endpoint": { "url": url, "signingSecret": secret } })
            }
        });
        return;
    }
    printer.line(&format!(
        "the answer was an error (below), but it carried a signing secret: if Clink {}, it \
         signs with this one",
        call.may_have()
    ));
    match call {
        SecretCall::Rotate { id } => printer.line(&escaped(id)),
        SecretCall::Ensure { url } => printer.line(&format!("  url          {}", escaped(url))),
    }
    printer.line(&format!("  secret       {}", escaped(secret)));
}

/// A rotation Clink answered without the new secret, as a [`CliError`]
/// (`decode`, exit 2): the old secret no longer verifies and nobody has the new
/// one, so the command did not do what it was run for.
fn rotated_without_secret(call: &SecretCall<'_>) -> CliError {
    CliError::new(
        ErrorCode::Api(ApiErrorKind::Decode),
        format!(
            "Clink rotated the signing secret but its answer holds no new secret: the old one \
             no longer verifies and nobody has the one Clink signs with; {}",
            call.again()
        ),
    )
}

/// The error of an endpoint `ensure` created whose answer holds no secret,
/// asked for as it was: Clink signs its deliveries with a secret nobody
/// has, and never shows it again.
fn created_without_secret(id: &str) -> CliError {
    CliError::new(
        ErrorCode::Api(ApiErrorKind::Decode),
        format!(
            "Clink created the endpoint but its answer holds no signing secret: nobody has the \
             one Clink signs its deliveries with, and Clink never shows it again; rotate it with \
             `clink-webhook endpoints rotate-secret {} --show-secret`",
            escaped(id)
        ),
    )
}

/// Refuses a command that can rotate the secret unless it prints the new
/// one: the old secret stops working at once, and Clink never shows the
/// new one again, so a masked one would be lost.
fn must_show(show: bool, command: &str) -> Result<(), CliError> {
    if show {
        return Ok(());
    }
    Err(CliError::usage(format!(
        "{command} can rotate the signing secret, whose new value Clink shows only once: \
         add --show-secret (and keep the output safe), or nobody will have it"
    )))
}

/// The request `ensure`'s arguments make, checked. It always asks for the
/// plain secret, so that an endpoint it creates comes with its secret
/// (which Clink shows only then); it rotates for one only with
/// `--return-secret` (unless `--no-rotate-secret-if-unavailable`) or
/// `--rotate-secret`.
fn ensure_request(args: &EnsureArgs) -> Result<EnsureEndpoint, CliError> {
    let url = endpoint_url(&args.url)?;
    let mut want = EnsureEndpoint::new(url, event_names(&args.events)?).enabled(!args.disabled);
    if let Some(description) = &args.description {
        want = want.description(description.clone());
    }
    want = want.return_secret(args.return_secret && !args.no_rotate_secret_if_unavailable);
    if args.rotate_secret {
        want = want.rotate_secret();
    }
    Ok(want)
}

/// Prints what ensure did: JSON, or what Clink did, the endpoint, and why
/// there is no secret when there is none, or with `shown_once` why it is
/// in full without `--show-secret`.
fn print_ensured(printer: &Printer<'_>, ensured: &Ensured, show: bool, shown_once: bool) {
    if printer.out.json {
        printer.json(&ensured_json(ensured, show));
        return;
    }
    let did = match ensured.source.as_deref() {
        Some("created") => "created".to_owned(),
        Some("updated") => "updated".to_owned(),
        Some("rotated") => "found; rotated its signing secret".to_owned(),
        Some("updated_rotated") => "updated; rotated its signing secret".to_owned(),
        Some(other) => format!("found ({})", escaped(other)),
        None => "found".to_owned(),
    };
    print_endpoint(printer, Some(&did), &ensured.endpoint, show);
    if shown_once {
        printer.line(
            "  the signing secret is printed in full: Clink shows it only once, so a masked one \
             would be lost; give it to the receiver and keep this output safe",
        );
    }
    if !ensured.signing_secret_available {
        let mut line = "  no signing secret returned".to_owned();
        if let Some(reason) = &ensured.signing_secret_unavailable_reason {
            line.push_str(&format!(": {}", escaped(reason)));
        }
        match &ensured.next_action {
            Some(next) => line.push_str(&format!("; next: {}", escaped(next))),
            None => line.push_str(
                "; to get one, rotate it (`clink-webhook endpoints rotate-secret ID`) or ensure \
                 with --return-secret",
            ),
        }
        printer.line(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_url;

    #[test]
    fn endpoint_urls_are_written_as_clinks_cli_writes_them() {
        for (typed, sent) in [
            ("https://shop.example", "https://shop.example/"),
            (
                "HTTPS://Shop.Example:443/Hooks",
                "https://shop.example/Hooks",
            ),
            (
                "https://shop.example:8443/h?x=1",
                "https://shop.example:8443/h?x=1",
            ),
            ("https://shop.example?x=1", "https://shop.example/?x=1"),
            ("https://[2001:DB8::1]/h", "https://[2001:db8::1]/h"),
        ] {
            assert_eq!(endpoint_url(typed).unwrap(), sent, "{typed}");
        }
        for refused in [
            "https://shop.example/h#frag",
            "https://shop.example/a/../b",
            "https://shop.example/a/./b",
            "https://shop.example/..",
            "https://shop.example/a/%2e%2E/b",
            "https://shop.example/a/.%2e",
            "https://shop.example/a\\..\\b",
            "http://shop.example/h",
            "shop.example/h",
            "https:///h",
            "https://u:p@shop.example/h",
            "not a url",
        ] {
            assert!(endpoint_url(refused).is_err(), "{refused}");
        }
    }

    /// A refused URL is not repeated: it may hold a password or a token.
    /// One with a user says so.
    #[test]
    fn a_refused_url_is_not_repeated() {
        for (refused, said) in [
            (
                "https://deploy:hunter2@shop.example/h",
                "user or a password",
            ),
            ("https://shop.example/h#hunter2", "fragment"),
            ("http://deploy:hunter2@shop.example/h", "user or a password"),
            ("ftp://hunter2.example/h", "https:// URL"),
        ] {
            let error = endpoint_url(refused).unwrap_err().message;
            assert!(error.contains(said), "{refused}: {error}");
            assert!(!error.contains("hunter2"), "{refused}: {error}");
        }
    }
}
