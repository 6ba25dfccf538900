//! Who may see the console: the bearer token, the session cookie made from
//! it, or the app's own authentication; and the CSRF token every action
//! carries.
//!
//! Every secret the console keeps is one HMAC key, derived from the token
//! (or the app's secret), so several instances given the same token accept
//! each other's cookies and forms, and changing the token ends every
//! session.
//!
//! - The session cookie is `<issued ms>.<nonce>.<mac>`, the MAC over the
//!   first two under the key; it is valid for the session's lifetime.
//! - In app-auth mode a cookie of the same form carries the CSRF nonce alone.
//! - The CSRF token is the MAC of the nonce under the key (`bearer` for a
//!   request with the bearer header: browsers never send that header on
//!   their own, so a forged form cannot carry it).
//!
//! A request may carry several cookies of the console's name (one planted
//! for a longer path, or for a parent domain by a sibling subdomain, comes
//! first): each is checked, and the first that holds counts.
//!
//! Every comparison of a presented secret is of two HMAC digests of equal
//! length, with `subtle`.

use std::time::Duration;

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::signature::tag::HmacKey;
use crate::store::LeaseToken;
use crate::Timestamp;

/// The session cookie's name (token mode).
pub(super) const SESSION_COOKIE: &str = "clink_console";
/// The CSRF cookie's name (app-auth mode).
pub(super) const CSRF_COOKIE: &str = "clink_console_csrf";

/// The console's HMAC key, and the token when the console checks one.
#[derive(Clone)]
pub(super) struct Keys {
    key: [u8; 32],
    /// The MAC of the bearer token under `key`, when the console checks one.
    token_mac: Option<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("checks_token", &self.token_mac.is_some())
            .finish_non_exhaustive()
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacKey::new(key).start();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            mac.update(b"|");
        }
        mac.update(part);
    }
    mac.finish()
}

/// Who a request is, once let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Who {
    /// The bearer header.
    Bearer,
    /// The session cookie, with its nonce.
    Session(String),
    /// The app's own authentication in front; the CSRF cookie's nonce.
    App(String),
}

impl Who {
    /// How the request got in, for the action log.
    pub(super) fn via(&self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Session(_) => "session",
            Self::App(_) => "app",
        }
    }

    fn nonce(&self) -> &str {
        match self {
            Self::Bearer => "bearer",
            Self::Session(nonce) | Self::App(nonce) => nonce,
        }
    }
}

impl Keys {
    /// Keys checking the bearer `token`.
    pub(super) fn for_token(token: &str) -> Self {
        let key = mac(token.as_bytes(), &[b"clink-webhooks console key v1"]);
        Self {
            key,
            token_mac: Some(mac(&key, &[b"token", token.as_bytes()])),
        }
    }

    /// Keys for a console behind the app's authentication, from its secret.
    pub(super) fn for_app(secret: &[u8]) -> Self {
        Self {
            key: mac(secret, &[b"clink-webhooks console key v1"]),
            token_mac: None,
        }
    }

    /// Whether the console checks a token itself.
    pub(super) fn checks_token(&self) -> bool {
        self.token_mac.is_some()
    }

    /// Whether `presented` is the token, compared in constant time.
    pub(super) fn is_token(&self, presented: &str) -> bool {
        let Some(expected) = &self.token_mac else {
            return false;
        };
        let presented = mac(&self.key, &[b"token", presented.as_bytes()]);
        bool::from(presented.ct_eq(expected))
    }

    /// A new signed cookie value `<issued>.<nonce>.<mac>` for `purpose`.
    pub(super) fn new_cookie(&self, purpose: &str, now: Timestamp) -> (String, String) {
        let nonce = LeaseToken::generate().as_str().to_owned();
        let issued = now.as_millis().to_string();
        let tag = mac(
            &self.key,
            &[purpose.as_bytes(), issued.as_bytes(), nonce.as_bytes()],
        );
        (format!("{issued}.{nonce}.{}", hex::encode(tag)), nonce)
    }

    /// The nonce of a cookie value made by [`new_cookie`](Self::new_cookie)
    /// for `purpose`, if its MAC holds and it was issued less than `ttl`
    /// before `now` (and not in the future).
    pub(super) fn check_cookie(
        &self, purpose: &str, value: &str, ttl: Duration, now: Timestamp,
    ) -> Option<String> {
        let mut parts = value.splitn(3, '.');
        let (issued, nonce, tag) = (parts.next()?, parts.next()?, parts.next()?);
        let tag: [u8; 32] = hex::decode(tag).ok()?.try_into().ok()?;
        let expected = mac(
            &self.key,
            &[purpose.as_bytes(), issued.as_bytes(), nonce.as_bytes()],
        );
        if !bool::from(tag.ct_eq(&expected)) {
            return None;
        }
        let issued: i64 = issued.parse().ok()?;
        let age = now.as_millis().checked_sub(issued)?;
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        (0..ttl).contains(&age).then(|| nonce.to_owned())
    }

    /// The CSRF token the forms shown to `who` carry.
    pub(super) fn csrf(&self, who: &Who) -> String {
        hex::encode(mac(&self.key, &[b"csrf", who.nonce().as_bytes()]))
    }

    /// Whether `presented` is `who`'s CSRF token, compared in constant time.
    pub(super) fn is_csrf(&self, who: &Who, presented: &str) -> bool {
        let Ok(presented) = hex::decode(presented) else {
            return false;
        };
        let expected = mac(&self.key, &[b"csrf", who.nonce().as_bytes()]);
        presented.len() == expected.len() && bool::from(presented.ct_eq(&expected[..]))
    }
}

/// The bearer token of an `Authorization` header, if there is one.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The values of every cookie named `name` the request sent, in the order
/// it sent them.
///
/// A browser may send several: with longer paths first, and one set for a
/// parent domain (`Domain=.example.com`, by a sibling subdomain) among
/// them. Each is checked, never only the first, so that a cookie planted
/// with a longer path cannot hide the console's own.
pub(super) fn cookies<'h>(
    headers: &'h HeaderMap, name: &'h str,
) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// Which requests from other sites a cookie goes with.
#[derive(Clone, Copy)]
pub(super) enum SameSite {
    /// None: a credential (the session).
    Strict,
    /// Top-level navigations too: a nonce that is no credential (the
    /// CSRF cookie behind the app's auth), which a link from another site
    /// must not replace, voiding the forms of every console tab open.
    Lax,
}

/// A `Set-Cookie` value: HttpOnly, `same_site`, for `path`, for `max_age`,
/// and Secure when `secure`.
pub(super) fn set_cookie(
    name: &str, value: &str, path: &str, max_age: Duration, secure: bool, same_site: SameSite,
) -> String {
    let secure = if secure { "; Secure" } else { "" };
    let same_site = match same_site {
        SameSite::Strict => "Strict",
        SameSite::Lax => "Lax",
    };
    format!(
        "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite={same_site}{secure}",
        max_age.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_token_and_only_the_token_lets_in() {
        let keys = Keys::for_token("console-token-0123456789");
        assert!(keys.is_token("console-token-0123456789"));
        assert!(!keys.is_token("console-token-012345678"));
        assert!(!keys.is_token(""));
        assert!(!Keys::for_app(b"secret").is_token(""));
    }

    #[test]
    fn cookies_hold_until_they_expire_or_are_altered() {
        let keys = Keys::for_token("console-token-0123456789");
        let now = Timestamp::from_millis(1_000_000);
        let (cookie, nonce) = keys.new_cookie("session", now);
        assert_eq!(
            keys.check_cookie("session", &cookie, HOUR, now).as_deref(),
            Some(nonce.as_str())
        );
        // Another purpose, another key, too old, from the future, altered.
        assert!(keys.check_cookie("csrf", &cookie, HOUR, now).is_none());
        let other = Keys::for_token("another-token-0123456789");
        assert!(other.check_cookie("session", &cookie, HOUR, now).is_none());
        let later = Timestamp::from_millis(now.as_millis() + 3_600_000);
        assert!(keys.check_cookie("session", &cookie, HOUR, later).is_none());
        let earlier = Timestamp::from_millis(now.as_millis() - 1);
        assert!(keys
            .check_cookie("session", &cookie, HOUR, earlier)
            .is_none());
        let altered = cookie.replacen("1000000", "1000001", 1);
        assert!(keys.check_cookie("session", &altered, HOUR, now).is_none());
        assert!(keys.check_cookie("session", "x.y", HOUR, now).is_none());
    }

    #[test]
    fn csrf_tokens_are_per_session() {
        let keys = Keys::for_token("console-token-0123456789");
        let a = Who::Session("a".to_owned());
        let b = Who::Session("b".to_owned());
        assert!(keys.is_csrf(&a, &keys.csrf(&a)));
        assert!(!keys.is_csrf(&b, &keys.csrf(&a)));
        assert!(!keys.is_csrf(&a, ""));
        assert!(!keys.is_csrf(&a, "zz"));
        assert!(keys.is_csrf(&Who::Bearer, &keys.csrf(&Who::Bearer)));
    }

    #[test]
    fn headers_are_read_as_browsers_send_them() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer  abc ".parse().unwrap());
        headers.append(COOKIE, "a=1; clink_console=v.w.x".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        assert_eq!(
            cookies(&headers, "clink_console").collect::<Vec<_>>(),
            ["v.w.x"]
        );
        assert_eq!(cookies(&headers, "b").next(), None);
        let set = set_cookie("n", "v", "/console", HOUR, true, SameSite::Strict);
        assert_eq!(
            set,
            "n=v; Path=/console; Max-Age=3600; HttpOnly; SameSite=Strict; Secure"
        );
        let set = set_cookie("n", "v", "/console", HOUR, false, SameSite::Lax);
        assert_eq!(
            set,
            "n=v; Path=/console; Max-Age=3600; HttpOnly; SameSite=Lax"
        );
    }

    /// A cookie of the same name planted before the console's own (a
    /// longer path, a parent domain) does not hide it: every one is
    /// listed, and the first that holds is the session.
    #[test]
    fn every_cookie_of_the_name_is_read_the_planted_one_too() {
        let keys = Keys::for_token("console-token-0123456789");
        let now = Timestamp::from_millis(1_000_000);
        let (good, nonce) = keys.new_cookie("session", now);
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            format!("clink_console=x; a=1; clink_console={good}")
                .parse()
                .unwrap(),
        );
        headers.append(COOKIE, "clink_console=\"y\"".parse().unwrap());
        assert_eq!(
            cookies(&headers, SESSION_COOKIE).collect::<Vec<_>>(),
            ["x", good.as_str(), "y"]
        );
        let session = cookies(&headers, SESSION_COOKIE)
            .find_map(|value| keys.check_cookie("session", value, HOUR, now));
        assert_eq!(session, Some(nonce));
    }
}
