//! Shared by `benches/verify.rs` and the svix comparison in `benches/peer`:
//! the bodies, the limit, criterion's settings, reading criterion's medians
//! back, and an interleaved pass that measures ratios under noisy load.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::Criterion;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// A secret in the `whsec_<base64>` form; Clink uses the whole string as the
/// key, svix base64-decodes the part after the prefix.
pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub(crate) const TIMESTAMP: &str = "1736942400000";

/// Body sizes, with the label used as criterion's parameter (and directory name).
pub(crate) const SIZES: [(usize, &str); 4] = [
    (256, "256B"),
    (1024, "1KiB"),
    (64 * 1024, "64KiB"),
    (1024 * 1024, "1MiB"),
];

/// A JSON-looking, ASCII body of exactly `len` bytes.
pub(crate) fn body(len: usize) -> Vec<u8> {
    let pattern = br#"{"id":"evt_bench","object":"event","type":"order.succeeded","data":{"amountTotal":19.99}}"#;
    pattern.iter().copied().cycle().take(len).collect()
}

/// The instant [`TIMESTAMP`] denotes, so verification happens inside the window.
pub(crate) fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_736_942_400_000)
}

/// The key schedule, done once.
pub(crate) fn keyed() -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key")
}

/// The limit: HMAC-SHA256 over `timestamp + "." + body` from a cloned keyed
/// state, with no parsing and no comparison.
#[inline]
pub(crate) fn limit(keyed: &HmacSha256, body: &[u8]) -> impl Sized {
    let mut mac = keyed.clone();
    mac.update(black_box(TIMESTAMP).as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes()
}

/// Short runs: the whole comparison takes a few minutes on two cores.
pub(crate) fn criterion(output_directory: &Path) -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .output_directory(output_directory)
        .configure_from_args()
}

/// Whether criterion is measuring and writing estimates. Without `--bench`
/// (as under `cargo test --benches`) it only checks that each benchmark runs
/// once; `--profile-time`, `--list` and `--test` measure nothing either.
pub(crate) fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|arg| arg == "--bench")
        && !args
            .iter()
            .any(|arg| arg == "--list" || arg == "--test" || arg.starts_with("--profile-time"))
}

/// Where criterion writes its results: `$CRITERION_HOME`, else `criterion/`
/// in this build's target directory (criterion's own default).
pub(crate) fn output_directory() -> PathBuf {
    std::env::var_os("CRITERION_HOME").map_or_else(
        || {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap_or(Path::new("target"))
                .join("criterion")
        },
        PathBuf::from,
    )
}

/// Criterion's results of this run, as written to its output directory.
pub(crate) struct Estimates {
    pub(crate) dir: PathBuf,
    pub(crate) since: SystemTime,
}

impl Estimates {
    /// The median time per call, in ns, that criterion wrote during this run
    /// for `group/function/label`; `None` when it did not run (filtered out).
    pub(crate) fn median_ns(&self, group: &str, function: &str, label: &str) -> Option<f64> {
        let path = self
            .dir
            .join(group)
            .join(function)
            .join(label)
            .join("new")
            .join("estimates.json");
        if std::fs::metadata(&path).ok()?.modified().ok()? < self.since {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        json["median"]["point_estimate"].as_f64()
    }
}

/// Median time per call, in ns, of each contestant, measured in short
/// batches that take turns (in rotating order) for about `budget`, so that
/// load from other processes falls on all of them alike.
pub(crate) fn interleaved(
    len: usize, budget: Duration, contestants: &mut [&mut dyn FnMut()],
) -> Vec<f64> {
    // About 50 µs of hashing per batch, and at least one call.
    let batch = u32::try_from(100_000 / len.max(1)).map_or(1000, |b| b.clamp(1, 1000));
    let mut samples = vec![Vec::new(); contestants.len()];
    let start = Instant::now();
    let mut round = 0;
    while round < 20 || start.elapsed() < budget {
        for k in 0..contestants.len() {
            let i = (k + round) % contestants.len();
            let t = Instant::now();
            for _ in 0..batch {
                (contestants[i])();
            }
            samples[i].push(t.elapsed().as_secs_f64() * 1e9 / f64::from(batch));
        }
        round += 1;
    }
    samples.into_iter().map(median).collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len().is_multiple_of(2) {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

pub(crate) fn format_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}
