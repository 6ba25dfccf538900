//! [`ApiKey`] and [`Environment`]: which keys may call which API, checked
//! before anything is sent.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ConfigError;

/// Which of Clink's two environments the client calls. Each has its own
/// domain and its own keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Environment {
    /// The test environment (`https://uat-api.clinkbill.com/api/`), for
    /// `sk_test_…` (or `sk_uat_…`) keys and no real data. The default.
    #[default]
    Sandbox,
    /// Live payments (`https://api.clinkbill.com/api/`), for `sk_prod_…` keys.
    Production,
}

impl Environment {
    /// The API's base URL in this environment, ending in `/`.
    #[must_use]
    pub fn base_url(self) -> &'static str {
        match self {
            Self::Sandbox => "https://uat-api.clinkbill.com/api/",
            Self::Production => "https://api.clinkbill.com/api/",
        }
    }

    /// `sandbox` or `production`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sandbox => "sandbox",
            Self::Production => "production",
        }
    }

    /// The key prefixes that name the other environment: a key with one is
    /// refused here.
    fn foreign_prefixes(self) -> &'static [&'static str] {
        match self {
            Self::Sandbox => &["sk_prod_", "sk_live_"],
            Self::Production => &["sk_test_", "sk_uat_"],
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Environment {
    type Err = ConfigError;

    /// `sandbox` or `production`, ignoring case and surrounding spaces. An
    /// unknown name is an error, never a silent fallback to one of them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sandbox" => Ok(Self::Sandbox),
            "production" => Ok(Self::Production),
            // Shown only when it is a short word: a value in the wrong
            // variable may be a key.
            _ => Err(ConfigError::new(match s.trim() {
                name if name.len() <= 20
                    && name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') =>
                {
                    format!("unknown Clink environment {name:?}: use sandbox or production")
                }
                other => format!(
                    "unknown Clink environment (a value of {} characters, not shown: it may be \
                     a key in the wrong variable): use sandbox or production",
                    other.chars().count()
                ),
            })),
        }
    }
}

/// The longest key name.
const MAX_NAME_LEN: usize = 64;

/// A secret API key (`sk_test_…`, `sk_prod_…`), with an optional expiry
/// for key rotation.
///
/// The key is zeroized when dropped and never shown by `Debug`, `Display`,
/// errors or logs: those say its [name](Self::name), which you choose or
/// which is a short fingerprint of the key (`api-` and 8 hex digits).
///
/// ```
/// use clink_webhooks::api::ApiKey;
///
/// let key = ApiKey::new("sk_test_51abc")?.named("2026-12")?;
/// assert_eq!(key.name(), "2026-12");
/// assert!(!format!("{key:?}").contains("51abc"));
/// assert!(ApiKey::new("pk_test_51abc").is_err()); // publishable keys cannot call the API
/// # Ok::<(), clink_webhooks::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ApiKey {
    secret: Arc<Zeroizing<String>>,
    expires_at: Option<SystemTime>,
    name: Arc<str>,
}

impl ApiKey {
    /// A key from its text, surrounding spaces removed.
    ///
    /// # Errors
    ///
    /// [`ConfigError`], naming the problem and never the key, when it is
    /// empty, holds characters a header cannot carry, is a publishable key
    /// (`pk_…`: they cannot call the server API) or a webhook signing
    /// secret (`whsec_…`).
    pub fn new(secret: impl AsRef<str>) -> Result<Self, ConfigError> {
        let secret = secret.as_ref().trim();
        if secret.is_empty() {
            return Err(ConfigError::new("a Clink API key is empty"));
        }
        if !secret
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(ConfigError::new(
                "a Clink API key holds spaces, quotes, backslashes or characters other than \
                 visible ASCII",
            ));
        }
        if secret.starts_with("pk_") {
            return Err(ConfigError::new(
                "a Clink API key starting pk_ is a publishable key, which cannot call the \
                 server API: use the secret key (sk_...)",
            ));
        }
        if secret.starts_with("whsec_") {
            return Err(ConfigError::new(
                "a Clink API key starting whsec_ is a webhook signing secret, not an API key: \
                 use the secret key (sk_...)",
            ));
        }
        Ok(Self {
            name: fingerprint(secret).into(),
            secret: Arc::new(Zeroizing::new(secret.to_owned())),
            expires_at: None,
        })
    }

    /// Names this key for logs and metrics: 1 to 64 characters from
    /// `A-Z a-z 0-9 . _ - : / @ +`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for any other name.
    pub fn named(mut self, name: &str) -> Result<Self, ConfigError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-:/@+".contains(c);
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(allowed) {
            return Err(ConfigError::new(format!(
                "API key name {}: use 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ - : / @ +",
                crate::events::printable(&name.chars().take(MAX_NAME_LEN + 1).collect::<String>())
            )));
        }
        self.name = name.into();
        Ok(self)
    }

    /// Stops using this key at `at`: the old key of a roll that Clink
    /// expires at a scheduled time.
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The key's name: the one given to [`named`](Self::named), or else its
    /// fingerprint.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When this key stops being used, if ever.
    #[must_use]
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Whether the key may be used at `now`.
    pub(crate) fn is_active_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    /// The key's text, for the `X-API-KEY` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.secret
    }

    /// Refuses a key whose prefix names the other environment.
    pub(crate) fn check_environment(&self, env: Environment) -> Result<(), ConfigError> {
        match env
            .foreign_prefixes()
            .iter()
            .find(|prefix| self.secret.starts_with(**prefix))
        {
            Some(prefix) => Err(ConfigError::new(format!(
                "the Clink API key {} starts {prefix}, a key of the other environment, and the \
                 client is for {env}: set the environment (CLINK_ENV) or use the {env} key",
                self.name
            ))),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("key", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A name for a key that says nothing usable about it: `api-` and 8 hex
/// digits of a SHA-256 of a fixed label and the key.
fn fingerprint(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"clink-webhooks api key fingerprint\n")
        .chain_update(secret.as_bytes())
        .finalize();
    format!("api-{}", hex::encode(&digest[..4]))
}

/// The prefixes of the secrets Clink issues: a run starting with one is
/// taken for a secret wherever a server's message is kept.
const SECRET_PREFIXES: [&str; 4] = ["sk_", "pk_", "ck_", "whsec_"];

/// `text` from a server, made safe to keep in an error or a log: every
/// run that looks like a key or a signing secret (see [`SECRET_PREFIXES`])
/// and every key in `keys` replaced by `[redacted]`, at most 200
/// characters, escaped as [`printable`](crate::events::printable) does.
pub(crate) fn scrub(text: &str, keys: &[ApiKey]) -> String {
    // Only the start is kept, so only the start is read: a 4 MiB error page
    // costs no more than a short one. A key the end would cut is read
    // whole, so that it is replaced whatever its prefix (the words before
    // it can shrink to `[redacted]`, bringing what follows them into the
    // 200 characters kept).
    let longest = keys.iter().map(|key| key.expose().len()).max().unwrap_or(0);
    let boundary = |mut at: usize| {
        at = at.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    let mut end = boundary(SCRUB_WINDOW + longest);
    let around = &text[..boundary(SCRUB_WINDOW + 2 * longest)];
    for key in keys {
        let key = key.expose();
        if let Some((at, _)) = around
            .match_indices(key)
            .find(|(at, _)| *at < end && at + key.len() > end)
        {
            end = at + key.len();
        }
    }
    let mut text = text[..end].to_owned();
    for key in keys {
        if text.contains(key.expose()) {
            text = text.replace(key.expose(), "[redacted]");
        }
    }
    // One pass over the words (runs of key characters).
    let mut out = String::with_capacity(text.len());
    let mut word_start = None;
    for (at, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        match (word_start, is_key_char(c)) {
            (None, true) => word_start = Some(at),
            (Some(start), false) => {
                let word = &text[start..at];
                if SECRET_PREFIXES
                    .iter()
                    .any(|prefix| word.starts_with(prefix))
                {
                    out.push_str("[redacted]");
                } else {
                    out.push_str(word);
                }
                word_start = None;
            }
            _ => {}
        }
        if word_start.is_none() && at < text.len() {
            out.push(c);
        }
    }
    let short: String = out.chars().take(200).collect();
    crate::events::printable(&short).into_owned()
}

/// How much of a server's text [`scrub`] reads, beyond the longest key.
const SCRUB_WINDOW: usize = 1024;

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_without_showing_them() {
        for (key, says) in [
            ("", "empty"),
            ("sk_test_a b", "visible ASCII"),
            ("sk_test_a\"b", "quotes"),
            ("sk_test_a\\b", "backslashes"),
            ("pk_test_abc", "publishable"),
            ("pk_prod_abc", "publishable"),
            ("whsec_abc", "signing secret"),
        ] {
            let error = ApiKey::new(key).unwrap_err().to_string();
            assert!(error.contains(says), "{key}: {error}");
            if key.len() > 4 {
                assert!(!error.contains(&key[3..]), "{error}");
            }
        }
        let prod = ApiKey::new("sk_prod_secretvalue").unwrap();
        let error = prod
            .check_environment(Environment::Sandbox)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sandbox") && !error.contains("secretvalue"),
            "{error}"
        );
        assert!(prod.check_environment(Environment::Production).is_ok());
        for key in ["sk_test_x", "sk_uat_x"] {
            let key = ApiKey::new(key).unwrap();
            assert!(key.check_environment(Environment::Production).is_err());
            assert!(key.check_environment(Environment::Sandbox).is_ok());
        }
        assert!(ApiKey::new("sk_live_x")
            .unwrap()
            .check_environment(Environment::Sandbox)
            .is_err());
    }

    #[test]
    fn environments_parse_strictly() {
        assert_eq!(
            " Production ".parse::<Environment>().unwrap(),
            Environment::Production
        );
        assert_eq!(
            "sandbox".parse::<Environment>().unwrap(),
            Environment::Sandbox
        );
        assert!("prod".parse::<Environment>().is_err());
        assert_eq!(Environment::default(), Environment::Sandbox);
        // A short word is named; anything else, a key in the wrong
        // variable say, is not shown.
        let staging = "staging".parse::<Environment>().unwrap_err().to_string();
        assert!(staging.contains("\"staging\""), "{staging}");
        for key in ["sk_prod_51Hsecretvalue", "hunter2", "x".repeat(21).as_str()] {
            let said = key.parse::<Environment>().unwrap_err().to_string();
            assert!(!said.contains(key) && said.contains("not shown"), "{said}");
        }
    }

    #[test]
    fn scrub_removes_keys_and_escapes() {
        let key = ApiKey::new("zz_custom_key_123").unwrap();
        let said = scrub(
            "invalid apiKey=sk_test_abc123, also zz_custom_key_123 and whsec_q\nforged",
            &[key],
        );
        assert!(
            !said.contains("abc123") && !said.contains("custom_key") && !said.contains("whsec_q")
        );
        assert!(!said.contains('\n'), "{said}");
        assert!(said.contains("[redacted]"));
        // A word that merely contains the prefix is kept.
        assert!(scrub("task_id", &[]).contains("task_id"));
        assert_eq!(scrub(&"x".repeat(500), &[]).len(), 200);
        // A huge page costs what its start costs, and keeps the
        // characters whole.
        let page = format!("{}sk_test_late é", "task_ ".repeat(1_000_000));
        let said = scrub(&page, &[]);
        assert!(said.starts_with("task_ task_"), "{said}");
        assert_eq!(scrub("é".repeat(2000).as_str(), &[]).chars().count(), 200);
        // A key the window's end would cut, behind words that shrink to
        // `[redacted]`, at every offset around the end.
        for before in 1000..1060 {
            let text = format!("sk_{} {}", "a".repeat(before), key_text());
            let said = scrub(&text, &[ApiKey::new(key_text()).unwrap()]);
            assert!(!said.contains("zz_custom"), "{before}: {said}");
        }
    }

    fn key_text() -> &'static str {
        "zz_custom_key_123"
    }
}
