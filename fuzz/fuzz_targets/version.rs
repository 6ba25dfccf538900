//! The freshness `Version` order is a total order: antisymmetric,
//! transitive, consistent with `Eq` (and `Hash`), and `Freshness::of`
//! follows it.

#![no_main]

use std::cmp::Ordering;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use clink_webhooks::events::{Freshness, Version};
use clink_webhooks::Timestamp;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

fn version(u: &mut Unstructured<'_>) -> Result<Version> {
    // Small values make ties, where the id decides, common.
    let created = if u.arbitrary()? {
        i64::from(u.int_in_range(-2i8..=2)?)
    } else {
        u.arbitrary::<i64>()?
    };
    let id = if u.arbitrary()? {
        ["", "a", "b", "evt_1", "evt_10", "evt_2", "é"][u.choose_index(7)?].to_owned()
    } else {
        u.arbitrary::<String>()?
    };
    Ok(Version::new(Timestamp::from_millis(created), id))
}

fn hash(v: &Version) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let vs = [version(&mut u)?, version(&mut u)?, version(&mut u)?];
    for a in &vs {
        assert_eq!(a.cmp(a), Ordering::Equal);
        for b in &vs {
            let ab = a.cmp(b);
            // Antisymmetric.
            assert_eq!(ab, b.cmp(a).reverse(), "{a:?} {b:?}");
            // Consistent with Eq, PartialOrd and Hash.
            assert_eq!(ab == Ordering::Equal, a == b, "{a:?} {b:?}");
            assert_eq!(a.partial_cmp(b), Some(ab));
            if a == b {
                assert_eq!(hash(a), hash(b));
            }
            // The order is created, then id.
            assert_eq!(
                ab,
                (a.created(), a.event_id()).cmp(&(b.created(), b.event_id()))
            );
            // Freshness follows the order.
            let stale = Freshness::of(a, Some(b.clone())).is_stale();
            assert_eq!(stale, ab == Ordering::Less, "{a:?} {b:?}");
            for c in &vs {
                // Transitive.
                if ab != Ordering::Greater && b.cmp(c) != Ordering::Greater {
                    assert_ne!(a.cmp(c), Ordering::Greater, "{a:?} {b:?} {c:?}");
                }
                if ab == Ordering::Equal && b.cmp(c) == Ordering::Equal {
                    assert_eq!(a.cmp(c), Ordering::Equal);
                }
            }
        }
    }
    assert_eq!(Freshness::of(&vs[0], None), Freshness::Fresh);
    Ok(())
}
