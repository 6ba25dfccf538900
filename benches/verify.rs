//! `Verifier::verify_at` against the physical limit for the same work.
//!
//! The limit is HMAC-SHA256 over `timestamp + "." + body` with the same
//! `hmac`/`sha2` crates, keyed once, the keyed state cloned per call, with no
//! parsing and no comparison. What `verify_at` costs above it is parsing the
//! timestamp, the window check, decoding the hex and the constant-time
//! compare.
//!
//! ```text
//! cargo bench -p clink-webhooks-benches --bench verify
//! ```
//!
//! After criterion has run, its medians (read back from
//! `target/criterion/verify/*/*/new/estimates.json`) are printed as a table of
//! ours/limit per body size, next to the same ratio from a short interleaved
//! pass, which holds up better when other processes load the machine.
#![allow(clippy::print_stdout)]

mod support;

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use clink_webhooks::signature::{sign, Verifier};
use criterion::{BenchmarkId, Criterion, Throughput};
use support::{format_ns, Estimates, SECRET, SIZES, TIMESTAMP};

const GROUP: &str = "verify";

fn bench(c: &mut Criterion, verifier: &Verifier) {
    let keyed = support::keyed();
    let mut group = c.benchmark_group(GROUP);
    for (len, label) in SIZES {
        let body = support::body(len);
        let signature = sign(SECRET, TIMESTAMP, &body);
        assert!(verifier
            .verify_at(TIMESTAMP, &signature, &body, support::now())
            .is_ok());
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("limit", label), &body, |b, body| {
            b.iter(|| support::limit(&keyed, black_box(body)));
        });
        let now = support::now();
        group.bench_with_input(BenchmarkId::new("ours", label), &body, |b, body| {
            b.iter(|| {
                verifier.verify_at(
                    black_box(TIMESTAMP),
                    black_box(&signature),
                    black_box(body),
                    now,
                )
            });
        });
    }
    group.finish();
}

fn print_ratios(estimates: &Estimates, verifier: &Verifier) {
    let keyed = support::keyed();
    println!();
    println!("Signature verification: ours = Verifier::verify_at, limit = keyed HMAC-SHA256 cloned per call");
    println!(
        "{:<6} | {:^29} | {:^29}",
        "", "criterion medians", "interleaved pass"
    );
    println!(
        "{:<6} | {:>10} {:>10} {:>7} | {:>10} {:>10} {:>7}",
        "size", "limit", "ours", "ratio", "limit", "ours", "ratio"
    );
    for (len, label) in SIZES {
        let criterion = match (
            estimates.median_ns(GROUP, "limit", label),
            estimates.median_ns(GROUP, "ours", label),
        ) {
            (Some(limit), Some(ours)) => format!(
                "{:>10} {:>10} {:>7.3}",
                format_ns(limit),
                format_ns(ours),
                ours / limit
            ),
            _ => format!("{:>29}", "(not run)"),
        };
        let body = support::body(len);
        let signature = sign(SECRET, TIMESTAMP, &body);
        let now = support::now();
        let medians = support::interleaved(
            len,
            Duration::from_millis(1500),
            &mut [
                &mut || {
                    black_box(support::limit(&keyed, black_box(&body)));
                },
                &mut || {
                    let _ = black_box(verifier.verify_at(
                        black_box(TIMESTAMP),
                        black_box(&signature),
                        black_box(&body),
                        now,
                    ));
                },
            ],
        );
        println!(
            "{label:<6} | {criterion} | {:>10} {:>10} {:>7.3}",
            format_ns(medians[0]),
            format_ns(medians[1]),
            medians[1] / medians[0]
        );
    }
}

fn main() {
    let estimates = Estimates {
        dir: support::output_directory(),
        since: SystemTime::now(),
    };
    let verifier = Verifier::new(SECRET).expect("non-empty secret");
    let mut criterion = support::criterion(&estimates.dir);
    bench(&mut criterion, &verifier);
    criterion.final_summary();
    if support::measuring() {
        print_ratios(&estimates, &verifier);
    }
}
