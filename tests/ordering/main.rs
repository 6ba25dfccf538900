//! Out-of-order delivery: for any arrival order, `skip_stale` leaves the newest
//! state applied, and without it every event runs once with stale ones flagged.
//!
//! The same properties hold with every freshness store: in memory, and with
//! their features `RedisStore` (needs `REDIS_URL`) and `PostgresStore` (needs
//! `DATABASE_URL`) on real servers. A test whose server URL is missing fails;
//! it never passes without its server.

#[allow(dead_code)]
#[path = "../stores/support.rs"]
mod stores;
mod support;

use proptest::prelude::*;
use support::{check_arrival_order, check_failed_handler_not_recorded, Mode};

/// Every arrival order of six events about one object.
fn arrival_orders() -> impl Strategy<Value = Vec<usize>> {
    Just((0..6usize).collect::<Vec<_>>()).prop_shuffle()
}

/// Instantiates the properties for one store; `$open` gives the store, and
/// `$cases` is how many arrival orders each property tries.
macro_rules! properties {
    ($store:ident, $open:path, $cases:expr) => {
        mod $store {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig { cases: $cases, ..ProptestConfig::default() })]

                #[test]
                fn skip_stale_applies_the_newest_state(order in arrival_orders()) {
                    check_arrival_order($open(), &order, Mode::SkipStale);
                }

                #[test]
                fn without_skip_every_event_runs_once_and_stale_ones_are_flagged(order in arrival_orders()) {
                    check_arrival_order($open(), &order, Mode::FlagOnly);
                }
            }

            #[test]
            fn a_failed_handler_does_not_record_its_version() {
                check_failed_handler_not_recorded($open());
            }
        }
    };
}

properties!(memory, support::memory, 64);

#[cfg(feature = "redis")]
properties!(redis, support::redis, 24);

#[cfg(feature = "postgres")]
properties!(postgres, support::postgres, 24);
