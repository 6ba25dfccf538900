//! TLS to PostgreSQL (feature `postgres-tls`): the connector the gateway,
//! `clink-webhook inbox --postgres` and the example use, asked for by
//! `sslmode=require` in the connection string or by a CA file, and then
//! always verified (the server's certificate against the CA file when one
//! is given, as libpq's `sslrootcert` replaces its default, else the
//! system's roots, for the host the string names): libpq's `verify-full`
//! rather than its `require`. Without either, the connection is plain, as
//! PostgreSQL's own default (`prefer`) is when the client has no TLS.

use std::path::Path;
use std::sync::Arc;

use tokio_postgres::config::{Host, SslMode};
pub use tokio_postgres_rustls::MakeRustlsConnect;

use crate::ConfigError;

/// The TLS connector `config` asks for, `None` for a plain connection:
/// TLS when `config`'s `sslmode` is `require` or `ca_file` is given (then
/// `config` is set to require it), except over Unix sockets alone (which
/// take no TLS, as libpq has it), the server's certificate verified
/// against the certificates in `ca_file` (PEM) when it is given, else
/// against the system's roots.
/// Hand it to the pool's manager, to the store's or the inbox's
/// `cancel_with` ([`PostgresStore::cancel_with`](crate::store::PostgresStore::cancel_with),
/// [`PostgresInbox::cancel_with`](crate::store::PostgresInbox::cancel_with)), and to
/// [`PostgresInbox::listen_with`](crate::store::PostgresInbox::listen_with).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use clink_webhooks::store::{postgres_tls, PostgresStore};
///
/// let mut config: tokio_postgres::Config =
///     "postgres://app@db.example/clink?sslmode=require".parse()?;
/// let tls = postgres_tls(&mut config, None)?;
/// let manager = match tls.clone() {
///     Some(tls) => deadpool_postgres::Manager::new(config, tls),
///     None => deadpool_postgres::Manager::new(config, tokio_postgres::NoTls),
/// };
/// let pool = deadpool_postgres::Pool::builder(manager).build()?;
/// // A statement that runs out of time is cancelled over a connection of
/// // its own: over TLS too, or the cancel fails and the statement goes on.
/// let store = match tls {
///     Some(tls) => PostgresStore::new(pool).cancel_with(tls),
///     None => PostgresStore::new(pool),
/// };
/// # let _ = store; Ok(()) }
/// ```
///
/// # Errors
///
/// A [`ConfigError`] naming the CA file (never the connection string)
/// when it cannot be read or holds no certificate, or when there is no
/// root certificate at all.
pub fn postgres_tls(
    config: &mut tokio_postgres::Config, ca_file: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, ConfigError> {
    if ca_file.is_none() && config.get_ssl_mode() != SslMode::Require {
        return Ok(None);
    }
    // A Unix socket is this machine's, and takes no TLS: libpq ignores
    // `sslmode` there too (unless a `hostaddr` sends it over TCP).
    #[cfg(unix)]
    if !config.get_hosts().is_empty()
        && config.get_hostaddrs().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|host| matches!(host, Host::Unix(_)))
    {
        // Plain, and not asked for TLS: a connection that requires it
        // asks the server for TLS first, which a socket refuses.
        config.ssl_mode(SslMode::Disable);
        return Ok(None);
    }
    config.ssl_mode(SslMode::Require);
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.is_none() {
        // A certificate of the system's that rustls cannot read is skipped.
        for certificate in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(certificate);
        }
    }
    if let Some(path) = ca_file {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::CertificateDer;
        let unreadable = |why: String| {
            ConfigError::new(format!(
                "the database CA file {:?}: {why}",
                path.display().to_string()
            ))
        };
        let mut added = 0;
        for certificate in
            CertificateDer::pem_file_iter(path).map_err(|e| unreadable(e.to_string()))?
        {
            let certificate = certificate.map_err(|e| unreadable(e.to_string()))?;
            roots
                .add(certificate)
                .map_err(|e| unreadable(format!("not a CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(unreadable("no PEM certificate in it".to_owned()));
        }
    }
    if roots.is_empty() {
        return Err(ConfigError::new(
            "TLS to PostgreSQL needs root certificates: the system has none; give a CA file",
        ));
    }
    // The process's default provider when one is set, else *ring*: never
    // rustls' automatic choice, which panics when two are enabled.
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("TLS settings for PostgreSQL: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> tokio_postgres::Config {
        url.parse().unwrap()
    }

    #[test]
    fn tls_is_asked_for_by_sslmode_require_or_a_ca_file() {
        let mut plain = config("postgres://app@db.example/clink");
        assert!(postgres_tls(&mut plain, None).unwrap().is_none());
        let mut prefer = config("postgres://app@db.example/clink?sslmode=prefer");
        assert!(postgres_tls(&mut prefer, None).unwrap().is_none());
        let mut socket = config("host=/var/run/postgresql user=app sslmode=require");
        assert!(postgres_tls(&mut socket, None).unwrap().is_none());
        // Plain over the socket, as libpq connects there: a connection
        // that still required TLS would ask for it and be refused.
        assert_eq!(socket.get_ssl_mode(), SslMode::Disable);
        // A hostaddr connects over TCP whatever the host: TLS as asked.
        let mut over_tcp =
            config("host=/var/run/postgresql hostaddr=10.0.0.5 user=app sslmode=require");
        assert!(postgres_tls(&mut over_tcp, None).unwrap().is_some());
        let mut tcp = config("postgres://app@db.example/clink?sslmode=require");
        assert!(postgres_tls(&mut tcp, None).unwrap().is_some());

        let dir = std::env::temp_dir().join(format!("clink-pg-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let mut with_file = config("postgres://app@db.example/clink");
        let error = postgres_tls(&mut with_file, Some(&empty)).err().unwrap();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        let missing = dir.join("missing.pem");
        let error = postgres_tls(&mut with_file, Some(&missing)).err().unwrap();
        assert!(error.to_string().contains("missing.pem"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
