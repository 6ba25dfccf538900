//! Whether a PostgreSQL connection stays on this machine.

use tokio_postgres::config::Host;

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
