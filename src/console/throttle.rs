//! How many wrong tokens a console takes: a few in a row, then one every
//! few seconds, from each client.
//!
//! Each client has a budget of [`BURST`] wrong tokens that refills at one
//! every [`REFILL`]. Once its budget is spent, every token it presents (in
//! the query or the header) is refused with `429` and `Retry-After`, the
//! right one too (checking it would tell a guess from the token), until the
//! budget has one again. Session cookies are never refused: they are
//! signed, not guessed, so browsers already in keep working, and a token
//! sent beside a session (a bookmarked `?token=` link, a header a proxy in
//! front adds) is neither refused nor counted.
//!
//! A client is the address its connection came from, as the app hands it
//! to the console (the crate's `Server` puts it on every request, and so
//! does axum's `into_make_service_with_connect_info::<SocketAddr>()`, as
//! [`ConnectInfo<SocketAddr>`]), an IPv6 address by its `/64` (one machine is usually given a
//! whole one). Without it, every client shares one budget, and a client
//! sending wrong tokens delays the logins of others until it stops;
//! behind a proxy, every client has the proxy's address, and shares its
//! budget the same way. At most [`CLIENTS`] clients are kept, each one
//! instant: once that many have budgets not yet whole, the clients after
//! them share one budget, so that a sender with many addresses cannot grow
//! the table, nor get more than one more budget by it.
//!
//! [`ConnectInfo<SocketAddr>`]: axum::extract::ConnectInfo

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How many wrong tokens a client takes in a row.
pub(super) const BURST: u32 = 10;

/// How long each wrong token takes to be made up for: once [`BURST`] came
/// in a row, one more is taken every `REFILL`.
pub(super) const REFILL: Duration = Duration::from_secs(6);

/// How many clients' budgets are kept apart at most.
pub(super) const CLIENTS: usize = 1_024;

/// Who a wrong token counts against: a client's address (an IPv6 address by
/// its `/64`), or `None` for the budget shared by clients the console
/// cannot tell apart.
type Client = Option<IpAddr>;

/// The client a connection from `address` is (`None`: not known).
pub(super) fn client(address: Option<IpAddr>) -> Client {
    Some(match address?.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
    })
}

/// The console's budgets of wrong tokens: for each client, until when its
/// budget is spent, [`REFILL`] for each wrong token not yet made up for
/// (absent, or a time past, when it is whole).
#[derive(Debug, Default)]
pub(super) struct Throttle {
    spent_until: Mutex<HashMap<Client, Instant>>,
}

/// How far ahead a budget may be spent before tokens are refused: all of
/// it but one wrong token.
fn allowance() -> Duration {
    REFILL * (BURST - 1)
}

/// How long tokens are refused for when a budget is spent until `until`.
fn wait(until: Instant, now: Instant) -> Option<Duration> {
    let ahead = until.saturating_duration_since(now);
    ahead
        .checked_sub(allowance())
        .filter(|wait| !wait.is_zero())
}

/// The budget `client` spends in `spent`: its own, or, when the table has
/// no room for it once the budgets whole again are forgotten, the one
/// shared with the clients it cannot tell apart.
fn budget(spent: &mut HashMap<Client, Instant>, client: Client, now: Instant) -> Client {
    if spent.contains_key(&client) || spent.len() < CLIENTS {
        return client;
    }
    spent.retain(|_, until| *until > now);
    if spent.len() < CLIENTS {
        client
    } else {
        None
    }
}

impl Throttle {
    /// How long to wait before a token from `client` is taken again, if
    /// its budget is spent.
    pub(super) fn refused_for(&self, client: Client, now: Instant) -> Option<Duration> {
        let mut spent = self
            .spent_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let client = budget(&mut spent, client, now);
        wait(*spent.get(&client)?, now)
    }

    /// Counts a wrong token from `client`; how long its tokens are refused
    /// for from now on, if this one spent its budget.
    pub(super) fn failed(&self, client: Client, now: Instant) -> Option<Duration> {
        let mut spent = self
            .spent_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let client = budget(&mut spent, client, now);
        let until = spent.get(&client).map_or(now, |until| (*until).max(now)) + REFILL;
        spent.insert(client, until);
        wait(until, now)
    }
}

/// A wait as `Retry-After` says it: whole seconds, rounded up.
pub(super) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: Client = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn a_burst_then_one_every_refill() {
        let throttle = Throttle::default();
        let now = Instant::now();
        assert_eq!(throttle.refused_for(HERE, now), None);
        for n in 1..BURST {
            assert_eq!(throttle.failed(HERE, now), None, "wrong token {n}");
            assert_eq!(throttle.refused_for(HERE, now), None);
        }
        assert_eq!(throttle.failed(HERE, now), Some(REFILL));
        assert_eq!(throttle.refused_for(HERE, now), Some(REFILL));
        assert_eq!(
            throttle.refused_for(HERE, now + REFILL / 2),
            Some(REFILL / 2)
        );
        // Once the wait is over, one more; then a wait again.
        let later = now + REFILL;
        assert_eq!(throttle.refused_for(HERE, later), None);
        assert_eq!(throttle.failed(HERE, later), Some(REFILL));
        // Long after, the whole budget again.
        let much_later = later + REFILL * BURST;
        for _ in 1..BURST {
            assert_eq!(throttle.failed(HERE, much_later), None);
        }
        assert_eq!(throttle.failed(HERE, much_later), Some(REFILL));
    }

    /// Each client spends its own budget; a client the console cannot
    /// tell apart spends the shared one.
    #[test]
    fn each_client_has_a_budget_of_its_own() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for _ in 0..BURST {
            throttle.failed(HERE, now);
            throttle.failed(None, now);
        }
        assert_eq!(throttle.refused_for(HERE, now), Some(REFILL));
        assert_eq!(throttle.refused_for(None, now), Some(REFILL));
        let other = client(Some("127.0.0.2".parse().unwrap()));
        assert_eq!(throttle.refused_for(other, now), None);
        assert_eq!(throttle.failed(other, now), None);
    }

    /// An IPv6 client is its `/64`; an IPv4 address mapped into IPv6 is
    /// that IPv4 address.
    #[test]
    fn a_client_is_its_address_an_ipv6_one_by_its_64() {
        let at = |text: &str| client(Some(text.parse().unwrap()));
        assert_eq!(at("2001:db8:1:2:aaaa::1"), at("2001:db8:1:2:bbbb::2"));
        assert_ne!(at("2001:db8:1:2::1"), at("2001:db8:1:3::1"));
        assert_eq!(at("::ffff:10.0.0.1"), at("10.0.0.1"));
        assert_ne!(at("10.0.0.1"), at("10.0.0.2"));
        assert_eq!(client(None), None);
    }

    /// The table holds at most `CLIENTS` budgets: once it is full of
    /// spent ones, new clients share one budget; budgets whole again make
    /// room.
    #[test]
    fn the_table_is_bounded_and_new_clients_then_share_a_budget() {
        let throttle = Throttle::default();
        let now = Instant::now();
        let nth = |n: usize| client(Some(IpAddr::V4(u32::try_from(n).unwrap().into())));
        for n in 0..CLIENTS {
            throttle.failed(nth(n), now);
        }
        assert_eq!(throttle.spent_until.lock().unwrap().len(), CLIENTS);
        // Past the table: one budget between them all.
        for n in CLIENTS..CLIENTS + BURST as usize - 1 {
            assert_eq!(throttle.failed(nth(n), now), None);
        }
        let last = nth(CLIENTS + 100);
        assert_eq!(throttle.failed(last, now), Some(REFILL));
        assert_eq!(throttle.refused_for(nth(CLIENTS + 200), now), Some(REFILL));
        assert_eq!(throttle.refused_for(nth(0), now), None, "its own budget");
        assert!(throttle.spent_until.lock().unwrap().len() <= CLIENTS + 1);
        // Once the first ones are whole again, a new client has its own.
        let later = now + REFILL * (BURST + 1);
        assert_eq!(throttle.failed(nth(CLIENTS + 300), later), None);
        assert_eq!(throttle.refused_for(nth(CLIENTS + 300), later), None);
        assert!(throttle.spent_until.lock().unwrap().len() <= CLIENTS + 1);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(5_001)), 6);
        assert_eq!(retry_after_secs(Duration::from_secs(6)), 6);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    }
}
