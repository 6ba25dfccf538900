//! Reading a PostgreSQL connection string as libpq does, and whether the
//! connection stays on this machine.

use tokio_postgres::config::Host;
use zeroize::Zeroizing;

use crate::ConfigError;

/// A connection string (`DATABASE_URL`: `postgres://...` or `key=value`
/// settings) as the PostgreSQL client reads it, with libpq's
/// `sslmode=verify-full` and `sslmode=verify-ca`, which the client refuses,
/// read as `sslmode=require`: [`postgres_tls`](crate::store::postgres_tls)
/// always verifies the server's certificate for the host it names. A URL
/// whose user info holds a raw `@` (a password with one, not
/// percent-encoded) is refused: the client would end the password there
/// and take its rest for the host. Only a
/// setting of the URL's query (after the user info, which ends at its last
/// `@`), or a whole `key=value` word, is read so: never the same text in a
/// password.
///
/// ```
/// use clink_webhooks::store::postgres_config;
/// use tokio_postgres::config::SslMode;
///
/// let config = postgres_config("postgres://app:pw@db.example/clink?sslmode=verify-full")?;
/// assert_eq!(config.get_ssl_mode(), SslMode::Require);
/// let error = postgres_config("postgres://app:secret@db.example:port/clink").unwrap_err();
/// assert!(!error.to_string().contains("secret"));
/// // A raw `@` in the password is refused, never read as a host.
/// let error = postgres_config("postgres://app:p@ss@db.example/clink").unwrap_err();
/// assert!(error.to_string().contains("%40") && !error.to_string().contains("ss@db"));
/// assert!(postgres_config("postgres://app:p%40ss@db.example/clink?application_name=a@b").is_ok());
/// # Ok::<(), clink_webhooks::ConfigError>(())
/// ```
///
/// # Errors
///
/// A [`ConfigError`] when the client cannot read it, which never quotes
/// it (nor the client's own error, which could quote the password).
pub fn postgres_config(text: &str) -> Result<tokio_postgres::Config, ConfigError> {
    let verified = |setting: &str| matches!(setting, "sslmode=verify-full" | "sslmode=verify-ca");
    if raw_at_in_user_info(text) {
        return Err(ConfigError::new(
            "a PostgreSQL URL whose user info holds a raw `@`: the client would end the password \
             at it and take the rest for the host; percent-encode it (`%40`). The URL is not \
             shown, as it may hold a password",
        ));
    }
    let read: Zeroizing<String> = if text.contains("://") {
        let after_user_info = text.rfind('@').unwrap_or(0);
        match text[after_user_info..].find('?') {
            Some(at) => {
                let (head, query) = text.split_at(after_user_info + at + 1);
                let query: Vec<&str> = query
                    .split('&')
                    .map(|setting| {
                        if verified(setting) {
                            "sslmode=require"
                        } else {
                            setting
                        }
                    })
                    .collect();
                Zeroizing::new(format!("{head}{}", query.join("&")))
            }
            None => Zeroizing::new(text.to_owned()),
        }
    } else {
        let words: Vec<&str> = text
            .split(' ')
            .map(|word| {
                if verified(word) {
                    "sslmode=require"
                } else {
                    word
                }
            })
            .collect();
        Zeroizing::new(words.join(" "))
    };
    read.parse().map_err(|_| {
        ConfigError::new(
            "not a valid PostgreSQL connection string (postgres://user:password@host:port/database?sslmode=require, or key=value settings); it is not shown, as it may hold a password",
        )
    })
}

/// Whether the URL `text` has two `@` with neither a `/` nor a `?`
/// between them: a raw `@` in its user info (a password with one), which
/// the client would read as the user info's end, sending the rest of the
/// password as a host name to the resolver. An `@` in the path or the
/// query (`?application_name=ops@host`) is not one.
fn raw_at_in_user_info(text: &str) -> bool {
    let Some((_, after_scheme)) = text.split_once("://") else {
        return false;
    };
    let (Some(first), Some(last)) = (after_scheme.find('@'), after_scheme.rfind('@')) else {
        return false;
    };
    first != last && !after_scheme[first..last].contains(['/', '?'])
}

/// Whether every host `config` names is this machine (a loopback address,
/// `localhost` or a Unix socket), and every `hostaddr` it gives (the
/// addresses connected to in their place) a loopback address, where a
/// plain connection crosses no network: a plain connection to anywhere
/// else is worth a warning. A configuration that names neither is not.
///
/// ```
/// use clink_webhooks::store::postgres_on_this_machine;
///
/// let here: tokio_postgres::Config = "postgres://app@127.0.0.1/clink".parse().unwrap();
/// let there: tokio_postgres::Config = "postgres://app@db.example/clink".parse().unwrap();
/// assert!(postgres_on_this_machine(&here));
/// assert!(!postgres_on_this_machine(&there));
/// ```
pub fn postgres_on_this_machine(config: &tokio_postgres::Config) -> bool {
    let (hosts, addresses) = (config.get_hosts(), config.get_hostaddrs());
    if hosts.is_empty() && addresses.is_empty() {
        return false;
    }
    let loopback = |ip: &std::net::IpAddr| ip.to_canonical().is_loopback();
    addresses.iter().all(loopback)
        && hosts.iter().all(|host| match host {
            Host::Tcp(name) => {
                name.eq_ignore_ascii_case("localhost")
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.to_canonical().is_loopback())
            }
            #[cfg(unix)]
            Host::Unix(_) => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> tokio_postgres::Config {
        url.parse().unwrap()
    }

    /// A raw `@` in a URL's user info is refused, and the URL's other
    /// `@` (in the path or the query) are not: before, the client read
    /// `app:p@ss@db.example` as the password `p` at the host `ss@db.example`.
    #[test]
    fn a_raw_at_in_the_user_info_is_refused() {
        for refused in [
            "postgres://app:p@ss@db.example/clink",
            "postgresql://a@b:pw@db.example",
            "postgres://app:p/w@x@db.example/clink",
        ] {
            let error = postgres_config(refused).unwrap_err().to_string();
            assert!(error.contains("raw `@`"), "{refused}: {error}");
            assert!(!error.contains("db.example"), "{error}");
        }
        for kept in [
            "postgres://app:p%40ss@db.example/clink",
            "postgres://app:pw@db.example/clink?application_name=ops@laptop",
            "postgres://db.example/clink",
            "host=db.example user=app password=p@ss@x",
        ] {
            assert!(postgres_config(kept).is_ok(), "{kept}");
        }
        assert_eq!(
            postgres_config("postgres://app:p%40ss@db.example/clink")
                .unwrap()
                .get_password(),
            Some(&b"p@ss"[..])
        );
    }

    #[test]
    fn libpq_verify_modes_are_read_as_require_where_they_are_settings() {
        use tokio_postgres::config::SslMode;
        for (text, mode) in [
            (
                "postgres://app@db.example/clink?sslmode=verify-full",
                SslMode::Require,
            ),
            (
                "postgres://app@db.example/clink?application_name=a&sslmode=verify-ca",
                SslMode::Require,
            ),
            (
                "host=db.example user=app sslmode=verify-full",
                SslMode::Require,
            ),
            ("postgres://app@db.example/clink", SslMode::Prefer),
            (
                "postgres://app@db.example/clink?sslmode=disable",
                SslMode::Disable,
            ),
        ] {
            assert_eq!(
                postgres_config(text).unwrap().get_ssl_mode(),
                mode,
                "{text}"
            );
        }
        // The same text in a password is the password's.
        let config =
            postgres_config("postgres://app:sslmode=verify-full@db.example/clink").unwrap();
        assert_eq!(config.get_password(), Some(&b"sslmode=verify-full"[..]));
        let error = postgres_config("host=db.example password=hunter2 port=x").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn hosts_on_this_machine_are_told_from_others() {
        for (url, here) in [
            ("postgres://app@127.0.0.1/clink", true),
            ("postgres://app@localhost:5433/clink", true),
            ("postgres://app@[::1]/clink", true),
            ("host=/var/run/postgresql user=app", true),
            ("postgres://app@db.example/clink", false),
            ("postgres://app@10.0.0.5/clink", false),
            ("host=127.0.0.1,db.example user=app", false),
            // The address connected to is the hostaddr's, whatever the
            // host; a host named elsewhere is still warned about.
            ("host=localhost hostaddr=10.0.0.5 user=app", false),
            ("host=localhost hostaddr=127.0.0.1 user=app", true),
            ("host=db.example hostaddr=127.0.0.1 user=app", false),
            ("hostaddr=10.0.0.5 user=app", false),
            ("hostaddr=127.0.0.1 user=app", true),
            ("user=app", false),
        ] {
            assert_eq!(postgres_on_this_machine(&config(url)), here, "{url}");
        }
    }
}
