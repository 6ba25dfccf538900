//! [`ApiError`]: what went wrong with a call, in a form to act on.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use super::endpoints::WebhookSecret;

/// What kind of failure an [`ApiError`] is: what to do about it follows
/// from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// The key the call was made with was refused (HTTP 401, or envelope
    /// `code` 401), and so was the next active key it was made with once
    /// more (or there was none, or no room to try it, or the call was a
    /// write not made again: its refusal carried a new signing secret or a
    /// 5xx status; the message says which); or no key is active. A call
    /// tries two keys at most (see
    /// [`ClientBuilder::key`](super::ClientBuilder::key)): check the keys
    /// and their expiries.
    Unauthorized,
    /// The object or endpoint does not exist (HTTP 404, or envelope
    /// `code` 404), in this environment at least.
    NotFound,
    /// Too many calls: Clink answered 429 (see
    /// [`retry_after`](ApiError::retry_after)), or the client's own
    /// [rate budget](super::ClientBuilder::rate_limit) had no room before the
    /// deadline (the request was then not sent).
    RateLimited,
    /// Clink answered 5xx (or an envelope `code` of 500 to 599), after the
    /// retries a read gets.
    Server,
    /// Clink answered with an envelope whose `code` is not 200 and says no
    /// more than [`code`](ApiError::code) and [`message`](ApiError::message),
    /// or with another 4xx status. A `code` that is no number
    /// (`"FORBIDDEN"`, `true`) is one too, with no [`code`](ApiError::code)
    /// and the message showing it, except in an answer to create,
    /// rotate-secret or ensure that carries the new signing secret, which
    /// is taken for a yes.
    Envelope,
    /// No answer within the per-request timeout or the call's deadline.
    Timeout,
    /// The connection failed: DNS, TCP, TLS, or the connection closed.
    Transport,
    /// The answer was not what the API documents: not JSON, not the
    /// envelope, a `data` that does not fit its type, too large, or a
    /// redirect (never followed: check the base URL).
    Decode,
    /// The call cannot be made: this family of events has no object to
    /// read (disputes, customers, ...), an id is empty, `.` or `..`
    /// (which a URL path would read as another resource), or a list asks
    /// for page 0 or a page size Clink would change (orders: 1 to 50;
    /// endpoints: 1 to 100).
    Unsupported,
}

impl ApiErrorKind {
    /// A short snake_case name, for logs and metrics labels.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::Server => "server_error",
            Self::Envelope => "envelope_error",
            Self::Timeout => "timeout",
            Self::Transport => "transport",
            Self::Decode => "decode",
            Self::Unsupported => "unsupported",
        }
    }

    /// Whether Clink itself said no (unauthorized, not found, or an
    /// envelope error), rather than the call failing on the way.
    #[must_use]
    pub fn is_refusal(self) -> bool {
        matches!(self, Self::Unauthorized | Self::NotFound | Self::Envelope)
    }
}

impl fmt::Display for ApiErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call to Clink's API failed.
///
/// It never holds a key, and shows no signing secret: what the server said
/// is shortened, escaped and scrubbed of anything shaped like a key before
/// it is kept (Clink's own test fixtures echo the key in the message), and
/// every `signingSecret` the answer holds is taken out of it before that,
/// wherever it appears. An answer that said no but carried a plain signing
/// secret keeps it apart, for [`new_secret`](Self::new_secret).
#[derive(Debug, Clone)]
pub struct ApiError {
    kind: ApiErrorKind,
    /// `GET /order/{id}` and the like: the method and the path, ids escaped.
    call: String,
    status: Option<StatusCode>,
    code: Option<i64>,
    message: String,
    retry_after: Option<Duration>,
    /// A plain signing secret the failed answer carried; `Debug` masks it.
    secret: Option<WebhookSecret>,
    /// Whether no connection to Clink could be made for it.
    unsent: bool,
}

impl ApiError {
    pub(crate) fn new(kind: ApiErrorKind, call: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            call: call.to_owned(),
            status: None,
            code: None,
            message: message.into(),
            retry_after: None,
            secret: None,
            unsent: false,
        }
    }

    /// Marks an error of a request that never left: no connection to Clink
    /// could be made for it.
    pub(crate) fn unsent(mut self) -> Self {
        self.unsent = true;
        self
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub(crate) fn with_code(mut self, code: i64) -> Self {
        self.code = Some(code);
        self
    }

    pub(crate) fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The error with `note` after its message.
    pub(crate) fn noted(mut self, note: &str) -> Self {
        if !self.message.is_empty() {
            self.message.push_str("; ");
        }
        self.message.push_str(note);
        self
    }

    /// The error holding `secret`, which the message no longer shows.
    pub(crate) fn with_secret(mut self, secret: Option<WebhookSecret>) -> Self {
        if let Some(secret) = secret.filter(|secret| super::client::is_a_secret(secret.expose())) {
            if self.message.contains(secret.expose()) {
                self.message = self.message.replace(secret.expose(), "[redacted]");
            }
            self.secret = Some(secret);
        }
        self
    }

    /// What kind of failure it is.
    #[must_use]
    pub fn kind(&self) -> ApiErrorKind {
        self.kind
    }

    /// The HTTP status Clink answered with, if it answered.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The envelope's `code`, when the answer was an envelope that said no
    /// with a number (a `code` that is no number is in the
    /// [message](Self::message)).
    #[must_use]
    pub fn code(&self) -> Option<i64> {
        self.code
    }

    /// What the server or the client said, escaped and without secrets.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How long Clink asked to wait before calling again (`Retry-After` of
    /// a 429), when it said.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The plain signing secret the answer carried although the call
    /// failed: an answer that said no (or came in a shape the client could
    /// not read) with a `signingSecret` in its `data`. To rotate-secret,
    /// create or ensure, Clink may then have rotated or created, and this
    /// may be the only copy of the secret it signs with: store it or rotate
    /// again. (Any other call's failed answer that carries one keeps it
    /// here too, out of the message.) `None` when the answer carried none.
    #[must_use]
    pub fn new_secret(&self) -> Option<&WebhookSecret> {
        self.secret.as_ref()
    }

    /// Whether the request certainly never reached Clink: no connection
    /// to it could be made (its name did not resolve, the connection was
    /// refused, or its TLS handshake failed; a
    /// [`Transport`](ApiErrorKind::Transport) error). A write that never
    /// reached Clink changed nothing there, and can be made again. `false`
    /// when it may have reached Clink: a connection closed after it was
    /// made, a timeout, any answer (and the client's own refusals, which
    /// [`kind`](Self::kind) tells apart).
    #[must_use]
    pub fn never_reached_clink(&self) -> bool {
        self.unsent
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clink API {}: ", self.call)?;
        match self.kind {
            ApiErrorKind::Unauthorized => f.write_str("unauthorized")?,
            ApiErrorKind::NotFound => f.write_str("not found")?,
            ApiErrorKind::RateLimited => f.write_str("rate limited")?,
            ApiErrorKind::Server => f.write_str("server error")?,
            ApiErrorKind::Envelope => f.write_str("refused")?,
            ApiErrorKind::Timeout => f.write_str("timed out")?,
            ApiErrorKind::Transport => f.write_str("connection failed")?,
            ApiErrorKind::Decode => f.write_str("unexpected answer")?,
            ApiErrorKind::Unsupported => f.write_str("not supported")?,
        }
        if let Some(status) = self.status {
            write!(f, " (HTTP {}", status.as_u16())?;
            if let Some(code) = self.code {
                write!(f, ", code {code}")?;
            }
            f.write_str(")")?;
        } else if let Some(code) = self.code {
            write!(f, " (code {code})")?;
        }
        if let Some(after) = self.retry_after {
            write!(f, ", retry after {} s", after.as_secs())?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}
