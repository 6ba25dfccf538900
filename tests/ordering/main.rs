//! Out-of-order delivery: for any arrival order, `skip_stale` leaves the newest
//! state applied, and without it every event runs once with stale ones flagged.

mod support;

use clink_webhooks::ordering::MemoryFreshnessStore;
use proptest::prelude::*;
use support::{check_arrival_order, Mode};

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn skip_stale_applies_the_newest_state_in_memory(order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle()) {
        check_arrival_order(std::sync::Arc::new(MemoryFreshnessStore::new()), &order, Mode::SkipStale);
    }

    #[test]
    fn without_skip_every_event_runs_once_and_stale_ones_are_flagged_in_memory(order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle()) {
        check_arrival_order(std::sync::Arc::new(MemoryFreshnessStore::new()), &order, Mode::FlagOnly);
    }
}

#[test]
fn a_failed_handler_does_not_record_its_version() {
    support::check_failed_handler_not_recorded(std::sync::Arc::new(MemoryFreshnessStore::new()));
}
