//! `clink-webhooks` next to svix's `Webhook::verify` and the physical limit,
//! on the same body sizes in one run.
//!
//! ```text
//! cd benches/peer && cargo bench --bench peer
//! ```
//!
//! - limit: HMAC-SHA256 over `timestamp + "." + body`, keyed once, the keyed
//!   state cloned per call, no parsing and no comparison;
//! - ours: `Verifier::verify_at` with a fixed clock reading;
//! - svix: `Webhook::verify` over `svix-id`, `svix-timestamp` and
//!   `svix-signature` headers made by svix's own `Webhook::sign` (it reads the
//!   system clock, so the headers are made fresh before each measurement).
//!
//! After criterion has run, its medians are printed as ratios to the limit,
//! next to the same ratios from a short interleaved pass.
#![allow(clippy::print_stdout)]

#[path = "../../support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clink_webhooks::signature::{sign, Verifier};
use criterion::{BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue};
use support::{format_ns, Estimates, SECRET, SIZES, TIMESTAMP};
use svix::webhooks::Webhook;

const GROUP: &str = "peer";

/// Headers for `body` as svix sends them, signed now.
fn svix_headers(webhook: &Webhook, body: &[u8]) -> HeaderMap {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let timestamp = i64::try_from(now).expect("seconds fit an i64");
    let id = "msg_2rJ2kD9vYq8Xz1bQmNcW4tLhPaE";
    let signature = webhook.sign(id, timestamp, body).expect("UTF-8 body");
    let mut headers = HeaderMap::new();
    headers.insert("svix-id", HeaderValue::from_static(id));
    headers.insert("svix-timestamp", HeaderValue::from(timestamp));
    headers.insert(
        "svix-signature",
        HeaderValue::from_str(&signature).expect("v1,<base64>"),
    );
    webhook
        .verify(body, &headers)
        .expect("svix accepts its own signature");
    headers
}

fn bench(c: &mut Criterion, verifier: &Verifier, webhook: &Webhook) {
    let keyed = support::keyed();
    let now = support::now();
    let mut group = c.benchmark_group(GROUP);
    for (len, label) in SIZES {
        let body = support::body(len);
        let signature = sign(SECRET, TIMESTAMP, &body);
        assert!(verifier
            .verify_at(TIMESTAMP, &signature, &body, now)
            .is_ok());
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("limit", label), &body, |b, body| {
            b.iter(|| support::limit(&keyed, black_box(body)));
        });
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
        group.bench_with_input(BenchmarkId::new("svix", label), &body, |b, body| {
            let headers = svix_headers(webhook, body);
            b.iter(|| webhook.verify(black_box(body), black_box(&headers)));
        });
    }
    group.finish();
}

fn print_ratios(estimates: &Estimates, verifier: &Verifier, webhook: &Webhook) {
    let keyed = support::keyed();
    let now = support::now();
    println!();
    println!(
        "Signature verification: limit = keyed HMAC-SHA256 cloned per call, \
         ours = Verifier::verify_at, svix = Webhook::verify"
    );
    for pass in ["criterion medians", "interleaved pass"] {
        println!();
        println!("{pass}");
        println!(
            "{:<6} {:>10} {:>10} {:>7} {:>10} {:>10}",
            "size", "limit", "ours", "ratio", "svix", "svix/limit"
        );
        for (len, label) in SIZES {
            let medians = if pass == "criterion medians" {
                ["limit", "ours", "svix"]
                    .map(|function| estimates.median_ns(GROUP, function, label))
                    .into_iter()
                    .collect::<Option<Vec<f64>>>()
            } else {
                let body = support::body(len);
                let signature = sign(SECRET, TIMESTAMP, &body);
                let headers = svix_headers(webhook, &body);
                Some(support::interleaved(
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
                        &mut || {
                            let _ =
                                black_box(webhook.verify(black_box(&body), black_box(&headers)));
                        },
                    ],
                ))
            };
            match medians.as_deref() {
                Some(&[limit, ours, svix]) => println!(
                    "{label:<6} {:>10} {:>10} {:>7.3} {:>10} {:>10.2}",
                    format_ns(limit),
                    format_ns(ours),
                    ours / limit,
                    format_ns(svix),
                    svix / limit,
                ),
                _ => println!("{label:<6} (not measured in this run)"),
            }
        }
    }
}

fn main() {
    let estimates = Estimates {
        dir: support::output_directory(),
        since: SystemTime::now(),
    };
    let verifier = Verifier::new(SECRET).expect("non-empty secret");
    let webhook = Webhook::new(SECRET).expect("whsec_<base64> secret");
    let mut criterion = support::criterion(&estimates.dir);
    bench(&mut criterion, &verifier, &webhook);
    criterion.final_summary();
    if support::measuring() {
        print_ratios(&estimates, &verifier, &webhook);
    }
}
