//! The example configurations under `tests/configs/` load, and behave as
//! envoyproxy/ratelimit documents its examples, decided by a real `MemoryStore` on a
//! manual clock (so the clock-aligned windows are where the test puts them).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tollgate::{ManualClock, MemoryStore, Nanos};
use tollgate_envoy::proto::rate_limit_descriptor::Entry;
use tollgate_envoy::proto::rate_limit_response::Code;
use tollgate_envoy::proto::{
    RateLimitDescriptor, RateLimitRequest, RateLimitResponse, UInt64Value,
};
use tollgate_envoy::{EnvoyMetrics, LoadOptions, RateLimiter, load_dir};

const SECOND: u64 = 1_000_000_000;
/// A day boundary (2023-11-15T00:00:00Z) plus one second.
const START: u64 = 1_700_006_400 * SECOND + SECOND;

struct Fixture {
    limiter: RateLimiter<MemoryStore<ManualClock>>,
    clock: ManualClock,
    metrics: EnvoyMetrics,
}

fn fixture(shadow: bool) -> Fixture {
    let metrics = EnvoyMetrics::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs");
    let set = load_dir(&dir, &LoadOptions::default(), &metrics).expect("the examples load");
    let clock = ManualClock::new(Nanos::new(START));
    let store = Arc::new(MemoryStore::with_clock(clock.clone()));
    let limiter = RateLimiter::new(store, Arc::new(ArcSwap::from_pointee(set)), metrics.clone())
        .shadow_mode(shadow);
    Fixture {
        limiter,
        clock,
        metrics,
    }
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

fn request(domain: &str, descriptors: &[&[(&str, &str)]], hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: descriptors.iter().map(|d| descriptor(d)).collect(),
        hits_addend: hits,
    }
}

impl Fixture {
    async fn ask(&self, domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitResponse {
        self.limiter
            .decide(&request(domain, descriptors, 0))
            .await
            .expect("decided")
    }

    /// Sends `n` requests and returns how many were answered OK overall.
    async fn admitted(&self, n: usize, domain: &str, descriptors: &[&[(&str, &str)]]) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            if self.ask(domain, descriptors).await.overall_code == Code::Ok as i32 {
                ok += 1;
            }
        }
        ok
    }

    fn metrics_text(&self) -> String {
        let mut registry = Registry::default();
        self.metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        out
    }
}

fn code(r: &RateLimitResponse, i: usize) -> Code {
    Code::try_from(r.statuses[i].code).expect("a known code")
}

#[test]
fn every_example_loads() {
    let metrics = EnvoyMetrics::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs");
    let set = load_dir(&dir, &LoadOptions::default(), &metrics).expect("load");
    assert_eq!(
        set.domain_names(),
        [
            "algorithms",
            "backoffice",
            "db_ops",
            "detailed",
            "edge_ip",
            "replacing",
            "sms",
            "soft_launch",
            "two_levels",
            "wildcard"
        ]
    );
    assert_eq!(set.rules(), 19);
}

#[tokio::test]
async fn over_limit_after_requests_per_unit_until_the_next_window() {
    let f = fixture(false);
    let d: &[(&str, &str)] = &[("database", "default")];
    for i in 0..50u32 {
        let r = f.ask("db_ops", &[d]).await;
        assert_eq!(code(&r, 0), Code::Ok, "request {i}");
        let limit = r.statuses[0].current_limit.as_ref().expect("a limit");
        assert_eq!((limit.requests_per_unit, limit.unit), (50, 1));
        assert_eq!(r.statuses[0].limit_remaining, 49 - i);
        let reset = r.statuses[0].duration_until_reset.expect("a reset");
        assert_eq!(
            (reset.seconds, reset.nanos),
            (1, 0),
            "one second to the window's end"
        );
    }
    let r = f.ask("db_ops", &[d]).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(code(&r, 0), Code::OverLimit);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    // The other value has its own limit.
    assert_eq!(
        f.admitted(60, "db_ops", &[&[("database", "users")]]).await,
        60
    );
    // Windows are aligned to the clock: 0.5 s later the window has not ended, 1 s
    // later a new one starts.
    f.clock.advance(Nanos::new(SECOND / 2));
    assert_eq!(f.admitted(1, "db_ops", &[d]).await, 0);
    let r = f.ask("db_ops", &[d]).await;
    let reset = r.statuses[0].duration_until_reset.expect("a reset");
    assert_eq!((reset.seconds, reset.nanos), (0, 500_000_000));
    f.clock.advance(Nanos::new(SECOND / 2));
    assert_eq!(f.admitted(51, "db_ops", &[d]).await, 50);
}

#[tokio::test]
async fn hits_addend_is_the_cost_and_a_descriptor_may_override_it() {
    let f = fixture(false);
    let d: &[(&str, &str)] = &[("database", "default")];
    let r = f
        .limiter
        .decide(&request("db_ops", &[d], 48))
        .await
        .expect("decided");
    assert_eq!(code(&r, 0), Code::Ok);
    assert_eq!(r.statuses[0].limit_remaining, 2);
    let r = f
        .limiter
        .decide(&request("db_ops", &[d], 3))
        .await
        .expect("decided");
    assert_eq!(code(&r, 0), Code::OverLimit, "48 + 3 > 50");
    let mut req = request("db_ops", &[d], 7);
    req.descriptors[0].hits_addend = Some(UInt64Value { value: 2 });
    let r = f.limiter.decide(&req).await.expect("decided");
    assert_eq!(
        code(&r, 0),
        Code::Ok,
        "the descriptor's 2 wins over the request's 7"
    );
    assert_eq!(r.statuses[0].limit_remaining, 0);
    // hits_addend 0 means 1.
    let r = f.ask("db_ops", &[d]).await;
    assert_eq!(code(&r, 0), Code::OverLimit);
}

#[tokio::test]
async fn nested_descriptors_each_count_and_all_or_nothing() {
    let f = fixture(false);
    let promo: &[(&str, &str)] = &[("message_type", "promo"), ("to_number", "5550100")];
    let any: &[(&str, &str)] = &[("to_number", "5550100")];
    for _ in 0..3 {
        let r = f.ask("sms", &[promo, any]).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(
            r.statuses[0]
                .current_limit
                .as_ref()
                .map(|l| l.requests_per_unit),
            Some(3)
        );
        assert_eq!(
            r.statuses[1]
                .current_limit
                .as_ref()
                .map(|l| l.requests_per_unit),
            Some(20)
        );
    }
    let r = f.ask("sms", &[promo, any]).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!((code(&r, 0), code(&r, 1)), (Code::OverLimit, Code::Ok));
    assert_eq!(
        r.statuses[1].limit_remaining, 17,
        "the denied request took nothing"
    );
    // Each number has its own counters.
    assert_eq!(
        f.admitted(
            4,
            "sms",
            &[&[("message_type", "promo"), ("to_number", "5550199")]]
        )
        .await,
        3
    );
    // The plain per-number limit: 17 left for the first number.
    assert_eq!(f.admitted(20, "sms", &[any]).await, 17);
}

#[tokio::test]
async fn the_most_specific_match_wins_and_zero_blocks() {
    let f = fixture(false);
    let blocked: &[(&str, &str)] = &[("remote_address", "192.0.2.66")];
    let r = f.ask("edge_ip", &[blocked]).await;
    assert_eq!(code(&r, 0), Code::OverLimit);
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit),
        Some(0)
    );
    assert_eq!(f.admitted(5, "edge_ip", &[blocked]).await, 0);
    assert_eq!(
        f.admitted(6, "edge_ip", &[&[("remote_address", "198.51.100.7")]])
            .await,
        4
    );
}

#[tokio::test]
async fn a_descriptor_matches_only_at_its_own_depth() {
    let f = fixture(false);
    let r = f.ask("two_levels", &[&[("route", "checkout")]]).await;
    assert_eq!(code(&r, 0), Code::Ok);
    assert_eq!(r.statuses[0].current_limit, None, "no limit at depth one");
    let r = f
        .ask(
            "two_levels",
            &[&[("route", "checkout"), ("customer", "c1"), ("x", "y")]],
        )
        .await;
    assert_eq!(r.statuses[0].current_limit, None, "none at depth three");
    assert_eq!(
        f.admitted(
            3,
            "two_levels",
            &[&[("route", "checkout"), ("customer", "c1")]]
        )
        .await,
        2
    );
}

#[tokio::test]
async fn unlimited_and_unknown_descriptors_are_ok() {
    let f = fixture(false);
    let ldap: &[(&str, &str)] = &[("service", "ldap")];
    for _ in 0..100 {
        let r = f.ask("backoffice", &[ldap]).await;
        assert_eq!(code(&r, 0), Code::Ok);
        assert_eq!(r.statuses[0].limit_remaining, u32::MAX);
    }
    assert_eq!(
        f.admitted(5, "backoffice", &[&[("service", "billing")]])
            .await,
        3
    );
    // Unknown value, unknown key, unknown domain: OK with no limit.
    for (domain, d) in [
        ("backoffice", [("service", "mail")]),
        ("backoffice", [("nothing", "here")]),
        ("no_such_domain", [("service", "billing")]),
    ] {
        let r = f.ask(domain, &[&d]).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].current_limit, None);
    }
    // A known descriptor beside an unknown one still counts.
    let r = f
        .ask(
            "backoffice",
            &[&[("nothing", "here")], &[("service", "billing")]],
        )
        .await;
    assert_eq!((code(&r, 0), code(&r, 1)), (Code::Ok, Code::OverLimit));
}

#[tokio::test]
async fn shadow_mode_counts_but_answers_ok() {
    let f = fixture(false);
    let trial: &[(&str, &str)] = &[("app", "shop"), ("user", "trial")];
    let paying: &[(&str, &str)] = &[("app", "shop"), ("user", "paying")];
    for _ in 0..5 {
        let r = f.ask("soft_launch", &[trial]).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(code(&r, 0), Code::Ok);
    }
    assert_eq!(f.admitted(5, "soft_launch", &[paying]).await, 3);
    // A shadow rule over its limit does not stop the enforced one from counting.
    f.clock.advance(Nanos::new(SECOND));
    assert_eq!(f.admitted(2, "soft_launch", &[trial]).await, 2);
    assert_eq!(f.admitted(4, "soft_launch", &[trial, paying]).await, 3);
    let text = f.metrics_text();
    assert!(
        text.contains("envoy_shadow_mode_total{domain=\"soft_launch\",rule=\"app.user_trial\"} 7"),
        "{text}"
    );
    assert!(
        text.contains("envoy_over_limit_total{domain=\"soft_launch\",rule=\"app.user_paying\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("envoy_total_hits_total{domain=\"soft_launch\",rule=\"app.user_trial\"} 11"),
        "{text}"
    );
}

#[tokio::test]
async fn global_shadow_mode_answers_ok_overall() {
    let f = fixture(true);
    let d: &[(&str, &str)] = &[("service", "billing")];
    for i in 0..5 {
        let r = f.ask("backoffice", &[d]).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "request {i}");
        let expected = if i < 3 { Code::Ok } else { Code::OverLimit };
        assert_eq!(code(&r, 0), expected, "the status still tells, request {i}");
    }
    let text = f.metrics_text();
    assert!(
        text.contains("envoy_shadow_mode_total{domain=\"backoffice\",rule=\"service_billing\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn replaces_drops_the_named_rule_for_the_request() {
    let f = fixture(false);
    let reads: &[(&str, &str)] = &[("tier", "reads"), ("user", "ada")];
    let hot: &[(&str, &str)] = &[("tier", "hot_path"), ("user", "ada")];
    for _ in 0..4 {
        let r = f.ask("replacing", &[reads, hot]).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].current_limit, None, "replaced");
        assert_eq!(
            r.statuses[1]
                .current_limit
                .as_ref()
                .map(|l| l.requests_per_unit),
            Some(4)
        );
    }
    assert_eq!(f.admitted(1, "replacing", &[reads, hot]).await, 0);
    // The replaced rule's own counter was not touched.
    assert_eq!(f.admitted(3, "replacing", &[reads]).await, 2);
    let r = f.ask("replacing", &[reads]).await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.name.as_str()),
        Some("reads_for_ada")
    );
}

#[tokio::test]
async fn detailed_metric_labels_with_the_value_and_wildcards_match_prefixes() {
    let f = fixture(false);
    assert_eq!(f.admitted(3, "detailed", &[&[("tenant", "acme")]]).await, 2);
    assert_eq!(f.admitted(6, "detailed", &[&[("tenant", "big")]]).await, 5);
    let text = f.metrics_text();
    assert!(
        text.contains("envoy_total_hits_total{domain=\"detailed\",rule=\"tenant_acme\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("envoy_total_hits_total{domain=\"detailed\",rule=\"tenant_big\"} 6"),
        "{text}"
    );
    assert_eq!(
        f.admitted(3, "wildcard", &[&[("path", "/api/users")]])
            .await,
        2
    );
    assert_eq!(
        f.admitted(3, "wildcard", &[&[("path", "/api/orders")]])
            .await,
        2
    );
    let r = f.ask("wildcard", &[&[("path", "/web/home")]]).await;
    assert_eq!(r.statuses[0].current_limit, None);
    let text = f.metrics_text();
    assert!(
        text.contains("envoy_total_hits_total{domain=\"wildcard\",rule=\"path_/api/*\"} 6"),
        "{text}"
    );
}

#[tokio::test]
async fn the_algorithm_extension_decides_with_that_algorithm() {
    let f = fixture(false);
    // gcra 10/s, burst 2: two at once, then one per 100 ms.
    let bursty: &[(&str, &str)] = &[("plan", "bursty")];
    assert_eq!(f.admitted(3, "algorithms", &[bursty]).await, 2);
    let r = f.ask("algorithms", &[bursty]).await;
    let reset = r.statuses[0].duration_until_reset.expect("a retry time");
    assert_eq!(
        (reset.seconds, reset.nanos),
        (0, 100_000_000),
        "retry after T"
    );
    f.clock.advance(Nanos::new(SECOND / 10));
    assert_eq!(f.admitted(2, "algorithms", &[bursty]).await, 1);
    // sliding_window_log 3/min: no reset at the minute boundary.
    let smooth: &[(&str, &str)] = &[("plan", "smooth")];
    f.clock.set(Nanos::new(START + 59 * SECOND));
    assert_eq!(f.admitted(4, "algorithms", &[smooth]).await, 3);
    f.clock.advance(Nanos::new(2 * SECOND));
    assert_eq!(
        f.admitted(1, "algorithms", &[smooth]).await,
        0,
        "a fixed window would have reset here"
    );
    f.clock.advance(Nanos::new(58 * SECOND));
    assert_eq!(f.admitted(4, "algorithms", &[smooth]).await, 3);
    // leaky_bucket 1/s, burst 3.
    assert_eq!(
        f.admitted(4, "algorithms", &[&[("plan", "queue")]]).await,
        3
    );
}

#[tokio::test]
async fn the_same_descriptor_twice_adds_up() {
    let f = fixture(false);
    let d: &[(&str, &str)] = &[("service", "billing")];
    let r = f.ask("backoffice", &[d, d]).await;
    assert_eq!((code(&r, 0), code(&r, 1)), (Code::Ok, Code::Ok));
    assert_eq!(r.statuses[0].limit_remaining, 1);
    let r = f.ask("backoffice", &[d, d]).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32, "2 + 2 > 3");
    assert_eq!(f.admitted(2, "backoffice", &[d]).await, 1);
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let f = fixture(false);
    let cases = [
        request("", &[&[("a", "b")]], 0),
        request("db_ops", &[], 0),
        request("db_ops", &[&[]], 0),
    ];
    for req in cases {
        let e = f.limiter.decide(&req).await.expect_err("invalid");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{req:?}");
    }
    let mut req = request("db_ops", &[&[("database", "users")]], 0);
    req.descriptors[0].hits_addend = Some(UInt64Value { value: 1 << 40 });
    let e = f.limiter.decide(&req).await.expect_err("too many hits");
    assert!(e.message().contains("hits_addend"), "{e:?}");
    let long = "x".repeat(10_000);
    let e = f
        .limiter
        .decide(&request(
            "db_ops",
            &[&[("database", "users")], &[("database", long.as_str())]],
            0,
        ))
        .await;
    assert!(e.is_ok(), "an unknown long value matches nothing: {e:?}");
    let e = f
        .limiter
        .decide(&request(
            "edge_ip",
            &[&[("remote_address", long.as_str())]],
            0,
        ))
        .await
        .expect_err("too long for a key");
    assert!(e.message().contains("bytes long"), "{e:?}");
}

#[tokio::test]
async fn a_limit_carried_by_the_descriptor_takes_the_place_of_the_file() {
    use tollgate_envoy::proto::rate_limit_descriptor::RateLimitOverride;
    let f = fixture(false);
    let with_limit = |domain: &str, unit: i32| {
        let mut req = request(domain, &[&[("database", "users")]], 0);
        req.descriptors[0].limit = Some(RateLimitOverride {
            requests_per_unit: 2,
            unit,
        });
        req
    };
    for i in 0..3 {
        let r = f
            .limiter
            .decide(&with_limit("db_ops", 2))
            .await
            .expect("decided");
        let want = if i < 2 { Code::Ok } else { Code::OverLimit };
        assert_eq!(code(&r, 0), want, "call {i}");
        let limit = r.statuses[0].current_limit.as_ref().expect("limit");
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (2, 2),
            "2 per MINUTE"
        );
    }
    // The file's 500 per second for the same descriptor is counted apart.
    assert_eq!(
        f.admitted(3, "db_ops", &[&[("database", "users")]]).await,
        3
    );
    // A descriptor with its own limit counts even where the file has no rule for it.
    let mut req = request("db_ops", &[&[("anything", "else")]], 0);
    req.descriptors[0].limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 3,
    });
    let r = f.limiter.decide(&req).await.expect("decided");
    assert_eq!(code(&r, 0), Code::Ok);
    let r = f.limiter.decide(&req).await.expect("decided");
    assert_eq!(code(&r, 0), Code::OverLimit);
    let e = f
        .limiter
        .decide(&with_limit("db_ops", 0))
        .await
        .expect_err("UNKNOWN unit");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("descriptors[0].limit"), "{e:?}");
}
