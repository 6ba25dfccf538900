//! `api`: read the current state of an object, or a page of orders, from
//! Clink's merchant API; and what `api` and `endpoints` share: the client
//! from the environment, the printing of values from the API, and the
//! exit code of a failed call.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use clink_webhooks::api::{ApiError, Client, ObjectKind, OrderQuery, Page};
use clink_webhooks::data::{Order, OrderStatus};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::output::{escaped, json_text, Output};
use crate::{CliError, ErrorCode};

/// The environment variable the API keys are read from.
pub(crate) const API_KEY_VARIABLE: &str = "CLINK_SECRET_KEY";

/// The shortest key [`Printer`] keeps out of the output.
const MIN_SCRUBBED_LEN: usize = 6;

/// What `api --help` and `endpoints --help` say about the configuration.
const CONFIGURATION_HELP: &str = "\
Configuration comes from the environment:
  CLINK_SECRET_KEY    the secret key (sk_test_..., sk_prod_...); several, newest
                      first, separated by commas, during a key roll. Required;
                      never printed.
  CLINK_ENV           sandbox (the default) or production. A key of the other
                      environment (sk_prod_ in the sandbox) is refused before
                      anything is sent.
  CLINK_API_BASE_URL  another base URL than the environment's (a proxy): https://,
                      or http:// to this machine only
  CLINK_API_PLAIN_HTTP  1 allows CLINK_API_BASE_URL plain http:// to another host
                      (a proxy of your own that adds TLS).";

/// What `api`'s failures exit with.
const EXIT_HELP: &str = "\
Exit code: 0 on success; 1 when Clink said no (error codes not_found,
unauthorized, envelope_error); 2 for bad arguments, configuration (no_api_key,
api_config) and every other failure (transport, timeout, server_error,
rate_limited, decode, unsupported). The error is one line on stderr, or with
--json one object, {\"error\": CODE, \"message\": TEXT}.";

/// `api --help`'s text after the options.
pub(crate) fn after_help() -> String {
    format!(
        "\
`api get KIND ID` prints the object's `data` as Clink returned it, as indented
JSON (one line with --json): its members in order of their names, and a number
with a fraction as its nearest double (19.90 as 19.9). `api orders` prints a
page of orders, one a line (order id, status, amount, currency); with --json
one object, {{total, rows}}.
Values from the API are printed escaped when they hold control, format or
separator characters.

{CONFIGURATION_HELP}

{EXIT_HELP}"
    )
}

/// `endpoints --help`'s configuration and exit code paragraphs.
pub(crate) fn shared_help() -> String {
    format!("{CONFIGURATION_HELP}\n\n{EXIT_HELP}")
}

#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// The current state of one object: its JSON `data`.
    Get {
        /// What the object is.
        #[arg(value_name = "KIND", value_parser = object_kind())]
        kind: ObjectKind,
        /// Its id (ord_..., rfd_..., sub_..., the invoice's or session's id).
        id: String,
    },
    /// A page of orders, newest first as Clink lists them.
    Orders {
        /// Only this customer's orders.
        #[arg(long, value_name = "ID")]
        customer_id: Option<String>,
        /// Only this subscription's orders.
        #[arg(long, value_name = "ID")]
        subscription_id: Option<String>,
        /// The page, from 1 [default: 1, Clink's].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        page: Option<u32>,
        /// Orders per page, 1 to 50 [default: 20, Clink's].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
        page_size: Option<u32>,
    },
}

/// Parses an object kind: order, refund, subscription, invoice or session.
fn object_kind() -> impl TypedValueParser<Value = ObjectKind> {
    PossibleValuesParser::new(ObjectKind::ALL.map(ObjectKind::family))
        .try_map(|name| ObjectKind::for_family(&name).ok_or("not an object kind"))
}

/// Prints what `api` and `endpoints` read from Clink: every value from the
/// API escaped by the caller, JSON through [`json_text`], and any API key
/// of the environment replaced by `[redacted]`, should Clink echo one back.
pub(crate) struct Printer<'a> {
    pub(crate) out: &'a Output,
    keys: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for Printer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer")
            .field("out", self.out)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl<'a> Printer<'a> {
    /// A printer on `out`, with the keys of the environment to keep out.
    pub(crate) fn new(out: &'a Output) -> Self {
        Self {
            out,
            keys: api_keys(),
        }
    }

    /// `text` without any of the keys.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for key in &self.keys {
            if text.contains(key.as_str()) {
                text = text.replace(key.as_str(), "[redacted]");
            }
        }
        text
    }

    /// Prints a line of text.
    pub(crate) fn line(&self, text: &str) {
        self.out.line(&self.scrub(text));
    }

    /// Prints `value` as one line of JSON.
    pub(crate) fn json(&self, value: &Value) {
        self.out.line(&self.scrub(&json_text(value, false)));
    }

    /// Prints `value` as indented JSON.
    fn json_pretty(&self, value: &Value) {
        self.out.line(&self.scrub(&json_text(value, true)));
    }

    /// An error message without any of the keys (Clink's API errors are
    /// scrubbed already; this is a second guard).
    pub(crate) fn error(&self, mut error: CliError) -> CliError {
        error.message = self.scrub(&error.message);
        error
    }
}

/// The API keys `CLINK_SECRET_KEY` holds, as given and trimmed.
fn api_keys() -> Vec<Zeroizing<String>> {
    let Some(value) = std::env::var(API_KEY_VARIABLE).ok().map(Zeroizing::new) else {
        return Vec::new();
    };
    let mut keys: Vec<Zeroizing<String>> = Vec::new();
    for key in value.split(',') {
        for form in [key, key.trim()] {
            // A "key" of a few characters is no secret, and replacing it
            // would garble the output; Clink's client refuses it anyway.
            if form.len() >= MIN_SCRUBBED_LEN && !keys.iter().any(|kept| kept.as_str() == form) {
                keys.push(Zeroizing::new(form.to_owned()));
            }
        }
    }
    // The longest first, so that a key holding another is replaced whole.
    keys.sort_by_key(|key| std::cmp::Reverse(key.len()));
    keys
}

/// The client `Client::from_env` builds from `CLINK_SECRET_KEY`,
/// `CLINK_ENV` and `CLINK_API_BASE_URL`; nothing is sent before it is
/// built, so a key Clink would refuse is refused here.
pub(crate) fn client() -> Result<Client, CliError> {
    match Client::from_env() {
        Ok(Some(client)) => Ok(client),
        Ok(None) => Err(CliError::new(
            ErrorCode::NoApiKey,
            format!(
                "no Clink API key: set {API_KEY_VARIABLE} to the secret key (sk_test_... for \
                 the sandbox, sk_prod_... with CLINK_ENV=production)"
            ),
        )),
        Err(error) => Err(CliError::new(
            ErrorCode::ApiConfig,
            format!(
                "cannot call Clink's API (check {API_KEY_VARIABLE}, CLINK_ENV and \
                 CLINK_API_BASE_URL): {}",
                error.message()
            ),
        )),
    }
}

/// A failed call as a [`CliError`]: exit 1 when Clink said no, 2 otherwise.
/// `ApiError`'s text is already escaped and scrubbed of keys.
pub(crate) fn api_error(error: &ApiError) -> CliError {
    let mut message = error.to_string();
    if error.kind() == clink_webhooks::api::ApiErrorKind::Unauthorized {
        message.push_str(&format!(
            "; check {API_KEY_VARIABLE} and CLINK_ENV (the sandbox and production have \
             different keys)"
        ));
    }
    CliError::new(ErrorCode::Api(error.kind()), message)
}

/// Runs `api`.
pub(crate) async fn run(out: &Output, args: &ApiArgs) -> Result<(), CliError> {
    let printer = Printer::new(out);
    run_action(&printer, args)
        .await
        .map_err(|error| printer.error(error))
}

async fn run_action(printer: &Printer<'_>, args: &ApiArgs) -> Result<(), CliError> {
    let client = client()?;
    match &args.action {
        Action::Get { kind, id } => {
            let data = client
                .get_json(*kind, id)
                .await
                .map_err(|e| api_error(&e))?;
            if printer.out.json {
                printer.json(&data);
            } else {
                printer.json_pretty(&data);
            }
        }
        Action::Orders {
            customer_id,
            subscription_id,
            page,
            page_size,
        } => {
            let mut query = OrderQuery::new();
            if let Some(id) = customer_id {
                query = query.customer_id(id.clone());
            }
            if let Some(id) = subscription_id {
                query = query.subscription_id(id.clone());
            }
            if let Some(page) = page {
                query = query.page(*page);
            }
            if let Some(size) = page_size {
                query = query.page_size(*size);
            }
            let orders = client.orders(&query).await.map_err(|e| api_error(&e))?;
            print_orders(printer, &orders, page.unwrap_or(1));
        }
    }
    Ok(())
}

/// Prints a page of orders: `{total, rows}` with `--json`, else a table.
fn print_orders(printer: &Printer<'_>, orders: &Page<Order>, page: u32) {
    if printer.out.json {
        let rows: Vec<Value> = orders
            .rows
            .iter()
            .map(|order| serde_json::to_value(order).unwrap_or(Value::Null))
            .collect();
        printer.json(&json!({ "total": orders.total, "rows": rows }));
        return;
    }
    let mut table = vec![[
        "ORDER".to_owned(),
        "STATUS".to_owned(),
        "AMOUNT".to_owned(),
        "CURRENCY".to_owned(),
    ]];
    for order in &orders.rows {
        let field = |value: Option<&str>| value.map_or_else(|| "-".to_owned(), escaped);
        table.push([
            field(order.order_id.as_deref()),
            field(order.status.as_ref().map(OrderStatus::as_str)),
            order
                .amount_total
                .map_or_else(|| "-".to_owned(), |amount| amount.to_string()),
            field(
                order
                    .payment_currency
                    .as_ref()
                    .or(order.original_currency.as_ref())
                    .map(AsRef::as_ref),
            ),
        ]);
    }
    if orders.rows.is_empty() {
        printer.line(&format!(
            "no orders on page {page} ({} in all)",
            orders.total
        ));
        return;
    }
    let widths: Vec<usize> = (0..4)
        .map(|column| {
            table
                .iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
        printer.line(line.trim_end());
    }
    printer.line(&format!(
        "{} of {} orders, page {page}",
        orders.rows.len(),
        orders.total
    ));
}
