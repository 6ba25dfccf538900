//! URLs with credentials in them: shown with every password masked, and
//! their user info read the way the database's own client reads it (up to
//! the last `@`), so that a password may hold `/`, `?`, `#`, `@` or `,`
//! as it is. The gateway's (`serve`) and `inbox --postgres`'s.

// Without the gateway, `inbox --postgres` uses a part of it only.
#![cfg_attr(not(all(feature = "gateway", unix)), allow(dead_code))]

use zeroize::Zeroizing;

use crate::output::escaped;

/// What stands for a masked secret.
const MASK: &str = "***";

/// `text` (a URL, or a comma-separated list of them) with the password of
/// every URL's user info, and every query and fragment, masked; a value
/// that is not a URL is `[redacted]` whole. Escaped for printing.
///
/// The user info of each URL runs up to its last `@`, so a password that
/// holds `/`, `?`, `#`, `@` or `,` is masked whole; when an `@` is in a
/// path or a query instead, more is masked than needed, never less.
pub(crate) fn masked_url(text: &str) -> String {
    if !text.contains("://") {
        return "[redacted]".to_owned();
    }
    let masked: Vec<String> = chunks(text, Split::Cautious)
        .into_iter()
        .map(masked_chunk)
        .collect();
    escaped(&masked.join(","))
}

/// A value that a message or the printed configuration repeats: a URL
/// (or a list of them) through [`masked_url`], anything else as it is,
/// escaped.
pub(crate) fn shown_value(text: &str) -> String {
    if text.contains("://") {
        masked_url(text)
    } else {
        escaped(text)
    }
}

/// How [`chunks`] splits a list of URLs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Before each `,scheme://`, as the clients read a list.
    AsRead,
    /// For masking: not before a `,scheme://` that may stand in a password
    /// (no `@` yet in this URL, one further on), so that such a password
    /// is masked whole with the URL it belongs to (more masked, never less).
    Cautious,
}

/// `text` split before each `,` that starts another URL (`,scheme://`):
/// one URL each, the hosts listed after the first one's `@` staying with
/// it (`redis+cluster://u:p@h1:1,h2:2`).
fn chunks(text: &str, split: Split) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for (at, _) in text.match_indices(',') {
        let may_be_password = split == Split::Cautious
            && !text[start..at].contains('@')
            && text[at + 1..].contains('@');
        if at >= start && starts_with_scheme(&text[at + 1..]) && !may_be_password {
            chunks.push(&text[start..at]);
            start = at + 1;
        }
    }
    chunks.push(&text[start..]);
    chunks
}

/// Whether `text` starts with `scheme://`.
fn starts_with_scheme(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// One URL: its scheme (without `://`; empty when it has none), its user
/// info (up to the last `@`) and the rest (hosts, path, query).
struct Parts<'a> {
    scheme: &'a str,
    user_info: Option<&'a str>,
    rest: &'a str,
}

fn parts(url: &str) -> Parts<'_> {
    let (scheme, after) = match url.split_once("://") {
        Some((scheme, after)) if starts_with_scheme(url) => (scheme, after),
        _ => ("", url),
    };
    match after.rsplit_once('@') {
        Some((user_info, rest)) => Parts {
            scheme,
            user_info: Some(user_info),
            rest,
        },
        None => Parts {
            scheme,
            user_info: None,
            rest: after,
        },
    }
}

fn masked_chunk(url: &str) -> String {
    let parts = parts(url);
    let mut text = String::new();
    if !parts.scheme.is_empty() {
        text.push_str(parts.scheme);
        text.push_str("://");
    }
    if let Some(user_info) = parts.user_info {
        text.push_str(&masked_user_info(user_info));
        text.push('@');
    }
    text.push_str(&masked_tail(parts.rest));
    text
}

/// `user:***`, or `***` for a bare token, a user name with an empty
/// password (`sk_live_...:@`, a key sent as Basic auth's user name) or a
/// user name that does not look like one (it could be the start of a
/// password).
fn masked_user_info(user_info: &str) -> String {
    match user_info.split_once(':') {
        Some((user, password))
            if !password.is_empty() && !user.contains(['/', '?', '#', '@', ',', ' ']) =>
        {
            format!("{user}:{MASK}")
        }
        _ => MASK.to_owned(),
    }
}

/// Hosts and path as they are; a query or a fragment masked (either may
/// carry a token).
fn masked_tail(rest: &str) -> String {
    match rest.find(['?', '#']) {
        Some(at) => format!("{}{}{MASK}", &rest[..at], &rest[at..=at]),
        None => rest.to_owned(),
    }
}

/// Credentials read from a URL's user info, percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// `user:password@`.
    UserPassword(String, Zeroizing<String>),
    /// `token@`: a bare token.
    Token(Zeroizing<String>),
}

impl Credentials {
    fn read(user_info: &str) -> Self {
        match user_info.split_once(':') {
            Some((user, password)) => Self::UserPassword(
                percent_decoded(user),
                Zeroizing::new(percent_decoded(password)),
            ),
            None => Self::Token(Zeroizing::new(percent_decoded(user_info))),
        }
    }
}

/// `%XX` sequences decoded; a `%` not followed by two hex digits kept as is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[at] == b'%' && at + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[at + 1]), hex(bytes[at + 2])) {
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                at += 3;
                continue;
            }
        }
        out.push(bytes[at]);
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with every character a URL parser would read as the end of the
/// user info (or a separator inside it) percent-encoded; `%` is kept, so
/// that a part already encoded stays as it is.
fn user_info_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+;=%".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `url` with its user info (up to the last `@`) percent-encoded so that a
/// parser that ends the user info at the first `/`, `?` or `#` (the `url`
/// crate, which the Redis client uses) reads the same user and password.
pub(crate) fn with_user_info_encoded(url: &str) -> Zeroizing<String> {
    if !url.contains("://") {
        // Not a URL (a `key=value` connection string, whose `@` may be in
        // a user or password value): as it is.
        return Zeroizing::new(url.to_owned());
    }
    let parts = parts(url);
    let Some(user_info) = parts.user_info else {
        return Zeroizing::new(url.to_owned());
    };
    let user_info = match user_info.split_once(':') {
        Some((user, password)) => Zeroizing::new(format!(
            "{}:{}",
            user_info_encoded(user),
            user_info_encoded(password)
        )),
        None => Zeroizing::new(user_info_encoded(user_info)),
    };
    Zeroizing::new(format!(
        "{}://{}@{}",
        parts.scheme,
        user_info.as_str(),
        parts.rest
    ))
}

/// A PostgreSQL connection string (`DATABASE_URL`) as the gateway's inbox
/// and `inbox --postgres` read it: its user info up to the last `@`
/// ([`with_user_info_encoded`]), so that a password may hold `@` or `/`
/// as it is, though the PostgreSQL client alone ends it at the first.
/// `None` when it is not one; the client's error is not given (it could
/// quote the password). libpq's `sslmode=verify-full` and `verify-ca`,
/// which the client does not read, are read as `require`: TLS here is
/// always verified in full (see `clink_webhooks::store::postgres_tls`).
#[cfg(feature = "postgres")]
pub(crate) fn postgres_config(url: &str) -> Option<tokio_postgres::Config> {
    clink_webhooks::store::postgres_config(&with_user_info_encoded(url)).ok()
}

/// The servers of a NATS destination and the credentials they share.
#[cfg(feature = "gateway")]
#[derive(Clone)]
pub(crate) struct NatsServers {
    /// One `scheme://host:port` per server, without user info.
    pub(crate) urls: Vec<String>,
    pub(crate) credentials: Option<Credentials>,
}

/// Reads `nats://[user:password@]host:port[,host:port...]` and lists of
/// such URLs separated by commas; each server is checked as the NATS
/// client will read it, and is `nats://` or `tls://` (the client is built
/// without WebSocket support). Errors never quote a password.
#[cfg(feature = "gateway")]
pub(crate) fn nats_servers(text: &str) -> Result<NatsServers, String> {
    let invalid = |why: &str| format!("{}: not a valid NATS URL: {why}", masked_url(text));
    let mut urls = Vec::new();
    let mut credentials: Option<Credentials> = None;
    for chunk in chunks(text, Split::AsRead) {
        let parts = parts(chunk);
        let scheme = parts.scheme.to_ascii_lowercase();
        // The NATS client is built without its `websockets` feature: it
        // would take a ws:// or wss:// server for a plain TCP one and never
        // connect, so such a server is refused here, at start.
        if matches!(scheme.as_str(), "ws" | "wss") {
            return Err(invalid(
                "NATS over WebSocket (ws://, wss://) is not supported; each server is \
                 nats://host:port or tls://host:port",
            ));
        }
        if !matches!(scheme.as_str(), "nats" | "tls") {
            return Err(invalid(
                "each server is nats://host:port or tls://host:port",
            ));
        }
        if let Some(user_info) = parts.user_info {
            let given = Credentials::read(user_info);
            match &credentials {
                Some(known) if *known != given => {
                    return Err(invalid(
                        "the servers of one destination share one user and password (or token)",
                    ));
                }
                _ => credentials = Some(given),
            }
        }
        let end = parts.rest.find(['/', '?', '#']).unwrap_or(parts.rest.len());
        let (hosts, tail) = parts.rest.split_at(end);
        if !(tail.is_empty() || tail == "/") {
            return Err(invalid(
                "a NATS server URL has no path and no query (a password holding / ? # @ or , \
                 is read up to the last @)",
            ));
        }
        for host in hosts.split(',').map(str::trim) {
            if host.is_empty() {
                return Err(invalid("an empty server (a stray comma?)"));
            }
            let url = format!("{scheme}://{host}");
            if url.parse::<async_nats::ServerAddr>().is_err() {
                return Err(invalid("a server is not host:port"));
            }
            urls.push(url);
        }
    }
    Ok(NatsServers { urls, credentials })
}

/// What stands for an HTTP destination's path, query and fragment in its
/// name.
const ELIDED_PATH: &str = "/…";

/// An HTTP destination's URL as the client sends to it (without user
/// info), its name, and the `Authorization: Basic` value its user info
/// makes, if any.
///
/// The name is the scheme, the user info masked, the host and the port
/// (the scheme's default when the URL has none), and `/…` for the path
/// and query: a path may be a secret (`https://hooks.example/services/
/// T000/B000/SECRET`), and the name shows in `/health`, in the metrics'
/// `destination` label, in the printed configuration and in logs.
pub(crate) fn http_parts(
    uri: &http::Uri,
) -> Result<(http::Uri, String, Option<Zeroizing<String>>), String> {
    let authority = uri.authority().map_or("", http::uri::Authority::as_str);
    let (user_info, host) = match authority.rsplit_once('@') {
        Some((user_info, host)) => (Some(user_info), host),
        None => (None, authority),
    };
    let scheme = uri.scheme_str().unwrap_or("http");
    let mut name = format!("{scheme}://");
    if let Some(user_info) = user_info {
        name.push_str(&masked_user_info(user_info));
        name.push('@');
    }
    name.push_str(uri.host().unwrap_or(""));
    let port = uri
        .port_u16()
        .unwrap_or(if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        });
    name.push_str(&format!(":{port}"));
    name.push_str(
        match uri.path_and_query().map(http::uri::PathAndQuery::as_str) {
            None | Some("" | "/") => "/",
            Some(_) => ELIDED_PATH,
        },
    );
    let invalid = || format!("{}: not a valid URL", escaped(&name));
    let mut bare = http::uri::Parts::default();
    bare.scheme = uri.scheme().cloned();
    bare.authority = Some(host.parse().map_err(|_| invalid())?);
    bare.path_and_query = uri.path_and_query().cloned();
    let bare = http::Uri::from_parts(bare).map_err(|_| invalid())?;
    let basic = user_info.map(|user_info| {
        let (user, password) = match Credentials::read(user_info) {
            Credentials::UserPassword(user, password) => (user, password),
            Credentials::Token(user) => (user.to_string(), Zeroizing::new(String::new())),
        };
        let pair = Zeroizing::new(format!("{user}:{}", password.as_str()));
        Zeroizing::new(format!("Basic {}", base64(pair.as_bytes()).as_str()))
    });
    Ok((bare, escaped(&name), basic))
}

/// A URL that is refused, as its error shows it: through [`masked_url`],
/// with everything after its hosts (path, query, fragment) as `/…`, since
/// it may be an HTTP destination's secret path.
pub(crate) fn refused_url(text: &str) -> String {
    if !text.contains("://") {
        return "[redacted]".to_owned();
    }
    let parts = parts(text);
    let end = parts.rest.find(['/', '?', '#']).unwrap_or(parts.rest.len());
    let (hosts, tail) = parts.rest.split_at(end);
    let mut shown = String::new();
    if !parts.scheme.is_empty() {
        shown.push_str(parts.scheme);
        shown.push_str("://");
    }
    if let Some(user_info) = parts.user_info {
        shown.push_str(&masked_user_info(user_info));
        shown.push('@');
    }
    shown.push_str(hosts);
    shown.push_str(match tail {
        "" | "/" => tail,
        _ => ELIDED_PATH,
    });
    escaped(&shown)
}

/// Standard base64 with padding.
pub(crate) fn base64(bytes: &[u8]) -> Zeroizing<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Zeroizing::new(String::with_capacity(bytes.len().div_ceil(3) * 4));
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for index in 0..4 {
            if index <= group.len() {
                let sextet = usize::try_from((n >> (18 - 6 * index)) & 63).unwrap_or(0);
                out.push(char::from(ALPHABET[sextet]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_password_is_masked() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db:5432/x",
                "postgres://app:***@db:5432/x",
            ),
            (
                "postgres://app:ab/cd+ef@127.0.0.1:5432/clink",
                "postgres://app:***@127.0.0.1:5432/clink",
            ),
            ("rediss://:pw@h:6380/0", "rediss://:***@h:6380/0"),
            ("nats://token@h:4222", "nats://***@h:4222"),
            ("nats://to/ken@h:4222", "nats://***@h:4222"),
            ("nats://user:pq/rs@h:4222", "nats://user:***@h:4222"),
            ("nats://user:p?q#r@s@h:4222", "nats://user:***@h:4222"),
            (
                "nats://app:s3cret@n1,nats://app:s3cret@n2",
                "nats://app:***@n1,nats://app:***@n2",
            ),
            (
                "redis+cluster://u:p,w@h1:1,h2:2",
                "redis+cluster://u:***@h1:1,h2:2",
            ),
            // `,a://` inside a password is not taken for another URL.
            ("redis://u:p,a://b@h", "redis://u:***@h"),
            (
                "nats://h1:4222,nats://h2:4222",
                "nats://h1:4222,nats://h2:4222",
            ),
            // A key as Basic auth's user name, its password empty.
            ("https://sk_live_abc:@h/x", "https://***@h/x"),
            ("https://h/hook?key=abc", "https://h/hook?***"),
            ("https://h/hook#abc", "https://h/hook#***"),
            ("http://h:1/a", "http://h:1/a"),
            ("host=db password=s3cret", "[redacted]"),
        ] {
            assert_eq!(masked_url(url), shown, "{url}");
        }
    }

    #[test]
    fn user_info_is_read_up_to_the_last_at() {
        assert_eq!(
            with_user_info_encoded("redis://:ab/cd@h:6379/0").as_str(),
            "redis://:ab%2Fcd@h:6379/0"
        );
        assert_eq!(
            with_user_info_encoded("redis://u:a%2Fb@h:6379/").as_str(),
            "redis://u:a%2Fb@h:6379/"
        );
        assert_eq!(percent_decoded("a%2Fb%zz%4"), "a/b%zz%4");
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_database_password_runs_to_the_last_at() {
        let read = postgres_config("postgres://app:p@s/s@db.example:5432/clink").unwrap();
        assert_eq!(read.get_user(), Some("app"));
        assert_eq!(read.get_password(), Some(&b"p@s/s"[..]));
        assert_eq!(read.get_dbname(), Some("clink"));
        assert!(matches!(
            read.get_hosts(),
            [tokio_postgres::config::Host::Tcp(host)] if host == "db.example"
        ));
        assert_eq!(read.get_ports(), [5432]);
        assert!(postgres_config("postgres://app:pw@db:notaport/clink").is_none());
        // The same text in a password is left as it is.
        let read = postgres_config("postgres://app:pw-sslmode=verify-full@db/clink").unwrap();
        assert_eq!(read.get_password(), Some(&b"pw-sslmode=verify-full"[..]));
        for mode in ["verify-full", "verify-ca", "require"] {
            let read = postgres_config(&format!("postgres://app@db/clink?sslmode={mode}")).unwrap();
            assert_eq!(
                read.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require,
                "{mode}"
            );
            let read = postgres_config(&format!("host=db user=app sslmode={mode}")).unwrap();
            assert_eq!(
                read.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require,
                "{mode}"
            );
        }
    }

    #[cfg(feature = "gateway")]
    #[test]
    fn nats_user_info_is_read_up_to_the_last_at() {
        let servers = nats_servers("nats://app:pq/rs@127.0.0.1:4222,nats://app:pq/rs@h2").unwrap();
        assert_eq!(servers.urls, ["nats://127.0.0.1:4222", "nats://h2"]);
        match servers.credentials {
            Some(Credentials::UserPassword(user, password)) => {
                assert_eq!((user.as_str(), password.as_str()), ("app", "pq/rs"));
            }
            _ => panic!("no user and password"),
        }
        for bad in [
            "nats://a:pq/rs@h:notaport",
            "nats://a:pq/rs@h:4222/path",
            "nats://a:pq/rs@h1,nats://a:other@h2",
            "nats://a:pq/rs@h1,,h2",
        ] {
            let error = nats_servers(bad).err().unwrap();
            assert!(
                !error.contains("pq/rs") && !error.contains("other"),
                "{error}"
            );
        }
    }

    /// A NATS server over WebSocket (`ws://`, `wss://`), which the client
    /// as built cannot reach, is refused by a configuration error naming
    /// the schemes it takes, whichever server of the list it is; `nats://`
    /// and `tls://` are taken.
    #[cfg(feature = "gateway")]
    #[test]
    fn nats_over_websocket_is_refused() {
        for bad in [
            "ws://127.0.0.1:8080",
            "wss://app:pq/rs@nats.example:443",
            "nats://h1:4222,ws://h2:8080",
            "WSS://h:443",
        ] {
            let error = nats_servers(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} was taken"));
            assert!(
                error.contains("NATS over WebSocket (ws://, wss://) is not supported")
                    && error.contains("nats://host:port or tls://host:port"),
                "{bad}: {error}"
            );
            assert!(!error.contains("pq/rs"), "{error}");
        }
        let servers = nats_servers("nats://h1:4222,tls://h2:4222").unwrap();
        assert_eq!(servers.urls, ["nats://h1:4222", "tls://h2:4222"]);
        let error = nats_servers("nats://h1:4222,http://h2:80").err().unwrap();
        assert!(
            error.contains("nats://host:port or tls://host:port"),
            "{error}"
        );
    }

    /// An HTTP destination is named by its scheme, host and port: its path
    /// may be a secret.
    #[test]
    fn an_http_destination_is_named_without_its_path() {
        for (url, name) in [
            (
                "https://hooks.example.invalid/services/T000/B000/SECRET",
                "https://hooks.example.invalid:443/…",
            ),
            (
                "http://hooks.example.invalid:8080/SECRET?x=1",
                "http://hooks.example.invalid:8080/…",
            ),
            ("http://127.0.0.1:9/SECRET", "http://127.0.0.1:9/…"),
            ("http://[::1]/SECRET", "http://[::1]:80/…"),
            ("https://u:pw@h/SECRET", "https://u:***@h:443/…"),
            ("http://h/?SECRET", "http://h:80/…"),
            ("http://h/", "http://h:80/"),
            ("http://h", "http://h:80/"),
        ] {
            let uri: http::Uri = url.parse().unwrap();
            let (bare, shown, _) = http_parts(&uri).unwrap();
            assert_eq!(shown, name, "{url}");
            assert!(bare.to_string().contains("SECRET") == url.contains("SECRET"));
        }
        for (url, shown) in [
            (
                "https://u:pw@hooks.example/services/SECRET",
                "https://u:***@hooks.example/…",
            ),
            ("htps://hooks.example/SECRET", "htps://hooks.example/…"),
            ("ftp://h#SECRET", "ftp://h/…"),
            ("redis://:pw@h:6379/", "redis://:***@h:6379/"),
            ("nats://h1:1,h2:2", "nats://h1:1,h2:2"),
            ("SECRET", "[redacted]"),
        ] {
            assert_eq!(refused_url(url), shown, "{url}");
        }
    }

    #[test]
    fn http_user_info_becomes_basic_auth() {
        let uri: http::Uri = "https://app:pa%40ss@h.example:8443/hook?k=v"
            .parse()
            .unwrap();
        let (bare, name, basic) = http_parts(&uri).unwrap();
        assert_eq!(bare.to_string(), "https://h.example:8443/hook?k=v");
        assert_eq!(name, "https://app:***@h.example:8443/…");
        // base64("app:pa@ss")
        assert_eq!(basic.unwrap().as_str(), "Basic YXBwOnBhQHNz");
        assert_eq!(base64(b"").as_str(), "");
        assert_eq!(base64(b"f").as_str(), "Zg==");
        assert_eq!(base64(b"fo").as_str(), "Zm8=");
        assert_eq!(base64(b"foo").as_str(), "Zm9v");
    }
}
