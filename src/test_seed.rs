//! Seeds for the randomised tests: one seed per test, printed with the test's
//! output (which the test harness shows when the test fails), taken from
//! `CLINK_TEST_SEED` when it is set, so that a failure seen once is seen
//! again with the same seed.
//!
//! Compiled into the library's unit tests and, by path, into the
//! integration suite, so both read the same variable the same way.
//!
//! Failures found earlier are kept as `cc` lines in `proptest-regressions/`
//! (the library's unit tests) and `tests/proptest-regressions/` (the
//! suite), beside the source file they belong to, and run first on every
//! run. Tests only read them: a new failure is printed with the line to add,
//! never written into the source tree.

use std::any::Any;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use proptest::test_runner::{
    Config, FailurePersistence, FileFailurePersistence, PersistedSeed, RngSeed,
};

/// The variable that fixes the seed of every randomised test.
pub(crate) const SEED_VARIABLE: &str = "CLINK_TEST_SEED";

/// The seed for this test: `CLINK_TEST_SEED` when set, else a fresh one.
/// Printed either way, so a failing run says how to repeat it.
///
/// # Panics
///
/// When `CLINK_TEST_SEED` is set to something other than a `u64`: a seed
/// that is silently replaced would not reproduce anything.
pub(crate) fn seed() -> u64 {
    let seed = match std::env::var(SEED_VARIABLE) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            panic!("{SEED_VARIABLE}={text:?} is not a seed (an unsigned 64-bit integer)")
        }),
        Err(_) => {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            hasher.finish()
        }
    };
    eprintln!("random seed {seed}; repeat with {SEED_VARIABLE}={seed}");
    seed
}

/// A proptest configuration with [`seed`] as its seed and the committed
/// regression files read but never written; the number of cases is
/// proptest's (256, or `PROPTEST_CASES`).
pub(crate) fn config() -> Config {
    Config {
        rng_seed: RngSeed::Fixed(seed()),
        failure_persistence: Some(Box::new(ReadOnly(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        )))),
        ..Config::default()
    }
}

/// [`config`] with `cases` cases, unless `PROPTEST_CASES` says otherwise.
#[allow(dead_code)] // the library's own tests take proptest's number
pub(crate) fn config_with_cases(cases: u32) -> Config {
    let config = config();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        config
    } else {
        Config { cases, ..config }
    }
}

/// Regression files, read and never written.
#[derive(Debug, Clone, PartialEq)]
struct ReadOnly(FileFailurePersistence);

impl FailurePersistence for ReadOnly {
    fn load_persisted_failures2(&self, source_file: Option<&'static str>) -> Vec<PersistedSeed> {
        self.0.load_persisted_failures2(source_file)
    }

    fn save_persisted_failure2(
        &mut self, source_file: Option<&'static str>, seed: PersistedSeed,
        shrunken_value: &dyn fmt::Debug,
    ) {
        eprintln!(
            "to run this case first on every run, add this line to the file for {} under \
             proptest-regressions/ (tests/proptest-regressions/ for the suite):\n\
             {seed} # shrinks to {shrunken_value:?}",
            source_file.unwrap_or("the test's source file"),
        );
    }

    fn box_clone(&self) -> Box<dyn FailurePersistence> {
        Box::new(self.clone())
    }

    fn eq(&self, other: &dyn FailurePersistence) -> bool {
        other.as_any().downcast_ref::<Self>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
