//! How many wrong tokens a console takes: a few in a row, then one every
//! few seconds, from each client, and a bound on them all.
//!
//! Each client has a budget of [`BURST`] wrong tokens that refills at one
//! every [`REFILL`]. Once its budget is spent, every token it presents (in
//! the query or the header) is refused with `429` and `Retry-After`, the
//! right one too (checking it would tell a guess from the token), until the
//! budget has one again. Session cookies are never refused: they are
//! signed, not guessed, so browsers already in keep working, and a token
//! sent beside a session (a bookmarked `?token=` link, a header a proxy in
//! front adds) is not even checked: neither refused nor counted, nor told
//! apart from a wrong one.
//!
//! A client is the address its connection came from, as the app hands it
//! to the console (the crate's `Server` puts it on every request, and so
//! does axum's `into_make_service_with_connect_info::<SocketAddr>()`, as
//! [`ConnectInfo<SocketAddr>`]), an IPv6 address by its `/64` (one machine
//! is usually given a whole one). Without it, every client shares one
//! budget, and a client sending wrong tokens delays the logins of others
//! until it stops; behind a proxy, every client has the proxy's address,
//! and shares its budget the same way, unless the console is told the
//! header the proxy puts the client's address in
//! (`Console::client_address_header`), which then names the client.
//!
//! Guesses from many addresses at once are bounded too: all clients
//! together take [`BURST_ALL`] wrong tokens in a row, then one every
//! [`REFILL_ALL`] (ten times one client's rate). Once that is spent, a
//! token is refused from every client but those that presented the right
//! one in the last [`KNOWN_FOR`] (at most [`KNOWN`] of them, the latest
//! kept), which answer to their own budget alone: an attacker with many
//! addresses can keep new clients from logging in with the token while it
//! goes on, never one that logged in lately, nor a session.
//!
//! At most [`CLIENTS`] budgets are kept, one instant each (and one for
//! each client known to have the token): once that many are not yet whole,
//! the clients after them share one budget, so that a sender with many
//! addresses cannot grow the table. Budgets whole again are looked for at
//! most once every [`REFILL`], so that a full table costs no scan per
//! request.
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

/// How many wrong tokens all clients together take in a row.
pub(super) const BURST_ALL: u32 = 100;

/// How long each wrong token from any client takes to be made up for once
/// [`BURST_ALL`] came.
pub(super) const REFILL_ALL: Duration = Duration::from_millis(600);

/// How many clients' budgets are kept apart at most.
pub(super) const CLIENTS: usize = 1_024;

/// How many clients that presented the right token are remembered.
pub(super) const KNOWN: usize = 256;

/// How long a client that presented the right token is remembered.
pub(super) const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);

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

/// Which budget of wrong tokens a refusal comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spent {
    /// The client's own: [`BURST`] in a row, then one every [`REFILL`].
    Own,
    /// That of all clients together: [`BURST_ALL`] in a row, then one
    /// every [`REFILL_ALL`].
    All,
}

impl Spent {
    /// How many wrong tokens the budget takes in a row.
    pub(super) fn burst(self) -> u32 {
        self.rate().burst
    }

    /// How long each wrong token takes to be made up for.
    pub(super) fn refill(self) -> Duration {
        self.rate().refill
    }

    fn rate(self) -> Rate {
        match self {
            Self::Own => ONE,
            Self::All => ALL,
        }
    }
}

/// A budget of wrong tokens: `burst` in a row, then one every `refill`.
#[derive(Debug, Clone, Copy)]
struct Rate {
    burst: u32,
    refill: Duration,
}

const ONE: Rate = Rate {
    burst: BURST,
    refill: REFILL,
};

const ALL: Rate = Rate {
    burst: BURST_ALL,
    refill: REFILL_ALL,
};

impl Rate {
    /// How long tokens are refused for when a budget is spent until
    /// `until` (all of it but one wrong token may be spent ahead).
    fn wait(self, until: Option<Instant>, now: Instant) -> Option<Duration> {
        let ahead = until?.saturating_duration_since(now);
        ahead
            .checked_sub(self.refill * (self.burst - 1))
            .filter(|wait| !wait.is_zero())
    }

    /// A budget spent until `until`, charged one wrong token at `now`.
    fn charge(self, until: Option<Instant>, now: Instant) -> Instant {
        until.map_or(now, |until| until.max(now)) + self.refill
    }
}

/// The console's budgets of wrong tokens.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    budgets: Mutex<Budgets>,
}

#[derive(Debug, Default)]
struct Budgets {
    /// For each client, until when its budget is spent, a refill for each
    /// wrong token not yet made up for (absent, or a time past, when whole).
    clients: HashMap<Client, Instant>,
    /// When budgets whole again were last forgotten.
    swept_at: Option<Instant>,
    /// Until when the budget of all clients together is spent.
    all: Option<Instant>,
    /// The clients that presented the right token, and when they last did.
    known: HashMap<IpAddr, Instant>,
}

impl Budgets {
    /// Whether `client` presented the right token within [`KNOWN_FOR`].
    fn is_known(&self, client: Client, now: Instant) -> bool {
        client
            .and_then(|address| self.known.get(&address))
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_FOR)
    }

    /// The budget `client` spends: its own, or, when the table has no room
    /// for it even once the budgets whole again are forgotten, the one
    /// shared with the clients it cannot tell apart. A client known to
    /// have the token always has its own.
    fn budget(&mut self, client: Client, now: Instant) -> Client {
        if self.clients.contains_key(&client) || self.clients.len() < CLIENTS {
            return client;
        }
        if self.is_known(client, now) {
            return client;
        }
        let sweep = self
            .swept_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REFILL);
        if sweep {
            self.swept_at = Some(now);
            self.clients.retain(|_, until| *until > now);
        }
        if self.clients.len() < CLIENTS {
            client
        } else {
            None
        }
    }

    /// How long tokens from `client` are refused for, and the budget
    /// spent: of the two, the one that refuses them longer (its own on a
    /// tie).
    fn refused_for(&mut self, client: Client, now: Instant) -> Option<(Duration, Spent)> {
        let own = self.budget(client, now);
        let own = ONE
            .wait(self.clients.get(&own).copied(), now)
            .map(|wait| (wait, Spent::Own));
        if self.is_known(client, now) {
            return own;
        }
        let all = ALL.wait(self.all, now).map(|wait| (wait, Spent::All));
        match (own, all) {
            (Some(own), Some(all)) if all.0 > own.0 => Some(all),
            (own @ Some(_), _) => own,
            (None, all) => all,
        }
    }
}

impl Throttle {
    fn budgets(&self) -> std::sync::MutexGuard<'_, Budgets> {
        self.budgets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long to wait before a token from `client` is taken again, if
    /// its budget, or that of all clients, is spent.
    pub(super) fn refused_for(&self, client: Client, now: Instant) -> Option<Duration> {
        self.budgets()
            .refused_for(client, now)
            .map(|(wait, _)| wait)
    }

    /// Counts a wrong token from `client`; how long its tokens are refused
    /// for from now on, and which budget is spent (the client's own, or
    /// that of all clients), if this one spent one.
    pub(super) fn failed(&self, client: Client, now: Instant) -> Option<(Duration, Spent)> {
        let mut budgets = self.budgets();
        let own = budgets.budget(client, now);
        let until = ONE.charge(budgets.clients.get(&own).copied(), now);
        budgets.clients.insert(own, until);
        budgets.all = Some(ALL.charge(budgets.all, now));
        budgets.refused_for(client, now)
    }

    /// Remembers that `client` presented the right token: it is refused
    /// for its own budget alone from now on, for [`KNOWN_FOR`]. The budget
    /// stays as it is: clients behind one address (a proxy) share it, and
    /// one of them holding the token must not give the others more tries.
    pub(super) fn succeeded(&self, client: Client, now: Instant) {
        let Some(address) = client else {
            return;
        };
        let mut budgets = self.budgets();
        if !budgets.known.contains_key(&address) && budgets.known.len() >= KNOWN {
            // The one that presented it longest ago makes room.
            let oldest = budgets
                .known
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(address, _)| *address);
            if let Some(oldest) = oldest {
                budgets.known.remove(&oldest);
            }
        }
        budgets.known.insert(address, now);
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
        assert_eq!(throttle.failed(HERE, now), Some((REFILL, Spent::Own)));
        assert_eq!(throttle.refused_for(HERE, now), Some(REFILL));
        assert_eq!(
            throttle.refused_for(HERE, now + REFILL / 2),
            Some(REFILL / 2)
        );
        // Once the wait is over, one more; then a wait again.
        let later = now + REFILL;
        assert_eq!(throttle.refused_for(HERE, later), None);
        assert_eq!(throttle.failed(HERE, later), Some((REFILL, Spent::Own)));
        // Long after, the whole budget again.
        let much_later = later + REFILL * BURST;
        for _ in 1..BURST {
            assert_eq!(throttle.failed(HERE, much_later), None);
        }
        assert_eq!(
            throttle.failed(HERE, much_later),
            Some((REFILL, Spent::Own))
        );
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

    fn nth(n: usize) -> Client {
        client(Some(IpAddr::V4(u32::try_from(n).unwrap().into())))
    }

    /// The table holds at most `CLIENTS` budgets: once it is full of spent
    /// ones, new clients share one budget, but a client known to have the
    /// token keeps its own; budgets whole again make room, looked for at
    /// most once every `REFILL`.
    #[test]
    fn the_table_is_bounded_and_new_clients_then_share_a_budget() {
        let now = Instant::now();
        let mut budgets = Budgets::default();
        for n in 0..CLIENTS {
            budgets
                .clients
                .insert(nth(n), now + REFILL * u32::try_from(n % 2 + 1).unwrap());
        }
        assert_eq!(budgets.budget(nth(CLIENTS), now), None, "shares one");
        assert_eq!(budgets.budget(nth(0), now), nth(0), "its own");
        budgets.known.insert(nth(CLIENTS + 1).unwrap(), now);
        assert_eq!(budgets.budget(nth(CLIENTS + 1), now), nth(CLIENTS + 1));
        // Half the budgets are whole at `REFILL`, but the table was looked
        // through at `now`: not again until `REFILL` after it.
        let soon = now + REFILL;
        budgets.swept_at = Some(now + Duration::from_millis(1));
        assert_eq!(budgets.budget(nth(CLIENTS + 2), soon), None);
        assert_eq!(budgets.clients.len(), CLIENTS);
        let later = now + REFILL + Duration::from_millis(1);
        assert_eq!(budgets.budget(nth(CLIENTS + 2), later), nth(CLIENTS + 2));
        assert_eq!(budgets.clients.len(), CLIENTS / 2);
    }

    /// A sender with more addresses than the table holds cannot keep out a
    /// client that logged in lately: with the table full and the shared
    /// budget spent, a new client is refused, one known to have the token
    /// is not; the table stays bounded.
    #[test]
    fn a_full_table_refuses_new_clients_but_not_known_ones() {
        let throttle = Throttle::default();
        let now = Instant::now();
        let admin = client(Some("192.0.2.1".parse().unwrap()));
        throttle.succeeded(admin, now);
        let later = now + Duration::from_secs(60);
        for n in 0..CLIENTS + BURST as usize {
            throttle.failed(nth(1_000 + n), later);
        }
        assert!(throttle.refused_for(nth(5_000), later).is_some());
        assert_eq!(throttle.refused_for(admin, later), None);
        assert_eq!(throttle.failed(admin, later), None, "its own budget");
        assert!(throttle.budgets().clients.len() <= CLIENTS + 2);
    }

    /// All clients together take `BURST_ALL` wrong tokens in a row: from
    /// then on a token is refused from every client but those known to
    /// have it, until one is made up for.
    #[test]
    fn all_clients_together_have_a_budget() {
        let throttle = Throttle::default();
        let now = Instant::now();
        let admin = client(Some("192.0.2.1".parse().unwrap()));
        throttle.succeeded(admin, now);
        let guessers = usize::try_from(BURST_ALL / BURST).unwrap();
        for n in 0..guessers {
            for _ in 0..BURST - 1 {
                throttle.failed(nth(n), now);
            }
        }
        let fresh = nth(9_999);
        assert_eq!(throttle.refused_for(fresh, now), None);
        for n in 0..guessers {
            throttle.failed(nth(n), now);
        }
        assert_eq!(throttle.refused_for(fresh, now), Some(REFILL_ALL));
        assert_eq!(throttle.refused_for(admin, now), None, "known to have it");
        assert_eq!(throttle.refused_for(fresh, now + REFILL_ALL), None);
        // Known for `KNOWN_FOR` only.
        let next_day = now + KNOWN_FOR;
        for n in 0..guessers {
            for _ in 0..BURST {
                throttle.failed(nth(n + 100), next_day);
            }
        }
        assert!(throttle.refused_for(admin, next_day).is_some());
    }

    /// A refusal says which budget is spent: the 100th client's first
    /// wrong token spends no budget of its own, but the one of all clients
    /// together; a client's tenth, its own.
    #[test]
    fn a_refusal_says_which_budget_is_spent() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for n in 1..BURST_ALL {
            let n = usize::try_from(n).unwrap();
            assert_eq!(throttle.failed(nth(n), now), None, "client {n}");
        }
        let hundredth = nth(usize::try_from(BURST_ALL).unwrap());
        assert_eq!(
            throttle.failed(hundredth, now),
            Some((REFILL_ALL, Spent::All))
        );
        assert_eq!(Spent::All.burst(), BURST_ALL);
        assert_eq!(Spent::All.refill(), REFILL_ALL);
        // Much later, both budgets whole: a client's tenth in a row spends
        // its own.
        let later = now + REFILL * BURST;
        for _ in 1..BURST {
            assert_eq!(throttle.failed(HERE, later), None);
        }
        assert_eq!(throttle.failed(HERE, later), Some((REFILL, Spent::Own)));
        assert_eq!((Spent::Own.burst(), Spent::Own.refill()), (BURST, REFILL));
    }

    /// At most `KNOWN` clients are remembered, the latest kept.
    #[test]
    fn the_known_clients_are_bounded() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for n in 0..=KNOWN {
            throttle.succeeded(nth(n), now + Duration::from_secs(u64::try_from(n).unwrap()));
        }
        let budgets = throttle.budgets();
        assert_eq!(budgets.known.len(), KNOWN);
        assert!(
            !budgets.known.contains_key(&nth(0).unwrap()),
            "the oldest went"
        );
        assert!(budgets.known.contains_key(&nth(KNOWN).unwrap()));
        drop(budgets);
        throttle.succeeded(None, now);
        assert_eq!(throttle.budgets().known.len(), KNOWN);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(5_001)), 6);
        assert_eq!(retry_after_secs(Duration::from_secs(6)), 6);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    }
}
