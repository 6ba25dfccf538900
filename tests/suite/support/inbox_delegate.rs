//! [`delegate_inbox!`]: the methods of an `Inbox` of a test's own that pass
//! through to an inbox it wraps.

/// Writes, inside an `impl Inbox for ..`, each named method as a call of
/// the same method of `self.<field>`: `delegate_inbox!(inner: insert, get)`.
/// The wrapper writes the methods it changes itself, and any method named
/// neither here nor there keeps the trait's default.
macro_rules! delegate_inbox {
    ($field:tt: $($method:ident),+ $(,)?) => {
        $( $crate::support::inbox_delegate::delegate_inbox!(@one $field $method); )+
    };
    (@one $field:tt insert) => {
        fn insert<'a>(
            &'a self, event: &'a clink_webhooks::store::NewEvent,
        ) -> clink_webhooks::BoxFuture<
            'a,
            Result<clink_webhooks::store::Inserted, clink_webhooks::store::StoreError>,
        > {
            self.$field.insert(event)
        }
    };
    (@one $field:tt insert_dead) => {
        fn insert_dead<'a>(
            &'a self, event: &'a clink_webhooks::store::NewEvent, error: &'a str,
        ) -> clink_webhooks::BoxFuture<
            'a,
            Result<clink_webhooks::store::Inserted, clink_webhooks::store::StoreError>,
        > {
            self.$field.insert_dead(event, error)
        }
    };
    (@one $field:tt claim) => {
        fn claim(
            &self, lease: std::time::Duration, reorder_window: std::time::Duration,
        ) -> clink_webhooks::BoxFuture<
            '_,
            Result<Option<clink_webhooks::store::InboxClaim>, clink_webhooks::store::StoreError>,
        > {
            self.$field.claim(lease, reorder_window)
        }
    };
    (@one $field:tt complete) => {
        fn complete<'a>(
            &'a self, claim: &'a clink_webhooks::store::InboxClaim,
        ) -> clink_webhooks::BoxFuture<
            'a,
            Result<clink_webhooks::store::Settle, clink_webhooks::store::StoreError>,
        > {
            self.$field.complete(claim)
        }
    };
    (@one $field:tt fail) => {
        fn fail<'a>(
            &'a self, claim: &'a clink_webhooks::store::InboxClaim, error: &'a str,
            retry_at: Option<clink_webhooks::Timestamp>,
        ) -> clink_webhooks::BoxFuture<
            'a,
            Result<clink_webhooks::store::Settle, clink_webhooks::store::StoreError>,
        > {
            self.$field.fail(claim, error, retry_at)
        }
    };
    (@one $field:tt release) => {
        fn release<'a>(
            &'a self, claim: &'a clink_webhooks::store::InboxClaim,
        ) -> clink_webhooks::BoxFuture<
            'a,
            Result<clink_webhooks::store::Settle, clink_webhooks::store::StoreError>,
        > {
            self.$field.release(claim)
        }
    };
    (@one $field:tt list) => {
        fn list<'a>(
            &'a self, filter: &'a clink_webhooks::store::InboxFilter, limit: usize,
        ) -> clink_webhooks::BoxFuture<
            'a,
            Result<Vec<clink_webhooks::store::InboxEntry>, clink_webhooks::store::StoreError>,
        > {
            self.$field.list(filter, limit)
        }
    };
    (@one $field:tt page_summaries) => {
        fn page_summaries<'a>(
            &'a self, filter: &'a clink_webhooks::store::InboxFilter,
            start: clink_webhooks::store::PageStart, limit: usize,
        ) -> clink_webhooks::BoxFuture<
            'a,
            Result<Vec<clink_webhooks::store::InboxSummary>, clink_webhooks::store::StoreError>,
        > {
            self.$field.page_summaries(filter, start, limit)
        }
    };
    (@one $field:tt count) => {
        fn count<'a>(
            &'a self, filter: &'a clink_webhooks::store::InboxFilter,
        ) -> clink_webhooks::BoxFuture<'a, Result<u64, clink_webhooks::store::StoreError>> {
            self.$field.count(filter)
        }
    };
    (@one $field:tt activity) => {
        fn activity(
            &self, since: clink_webhooks::Timestamp, interval: std::time::Duration,
            intervals: usize,
        ) -> clink_webhooks::BoxFuture<
            '_,
            Result<clink_webhooks::store::InboxActivity, clink_webhooks::store::StoreError>,
        > {
            self.$field.activity(since, interval, intervals)
        }
    };
    (@one $field:tt get) => {
        fn get(
            &self, seq: i64,
        ) -> clink_webhooks::BoxFuture<
            '_,
            Result<Option<clink_webhooks::store::InboxEntry>, clink_webhooks::store::StoreError>,
        > {
            self.$field.get(seq)
        }
    };
    (@one $field:tt replay) => {
        fn replay(
            &self, seq: i64, force: bool,
        ) -> clink_webhooks::BoxFuture<
            '_,
            Result<clink_webhooks::store::Replayed, clink_webhooks::store::StoreError>,
        > {
            self.$field.replay(seq, force)
        }
    };
    (@one $field:tt replay_if) => {
        fn replay_if<'a>(
            &'a self, seq: i64, pin: &'a clink_webhooks::store::ReplayPin,
        ) -> clink_webhooks::BoxFuture<
            'a,
            Result<clink_webhooks::store::Replayed, clink_webhooks::store::StoreError>,
        > {
            self.$field.replay_if(seq, pin)
        }
    };
    (@one $field:tt replay_matching) => {
        fn replay_matching<'a>(
            &'a self, filter: &'a clink_webhooks::store::InboxFilter, force: bool,
        ) -> clink_webhooks::BoxFuture<'a, Result<Vec<i64>, clink_webhooks::store::StoreError>>
        {
            self.$field.replay_matching(filter, force)
        }
    };
    (@one $field:tt purge) => {
        fn purge(
            &self, before: clink_webhooks::Timestamp,
        ) -> clink_webhooks::BoxFuture<'_, Result<u64, clink_webhooks::store::StoreError>> {
            self.$field.purge(before)
        }
    };
    (@one $field:tt stats) => {
        fn stats(
            &self,
        ) -> clink_webhooks::BoxFuture<
            '_,
            Result<clink_webhooks::store::InboxStats, clink_webhooks::store::StoreError>,
        > {
            self.$field.stats()
        }
    };
    (@one $field:tt check_writable) => {
        fn check_writable(
            &self,
        ) -> clink_webhooks::BoxFuture<'_, Result<(), clink_webhooks::store::StoreError>> {
            self.$field.check_writable()
        }
    };
    (@one $field:tt wait) => {
        fn wait(&self, timeout: std::time::Duration) -> clink_webhooks::BoxFuture<'_, ()> {
            self.$field.wait(timeout)
        }
    };
}

pub(crate) use delegate_inbox;
