//! Prometheus metrics of the agent (DESIGN.md §7), one registry for the process. The daemon
//! publishes per-source results after each pass; the HBR client counts each attempt. Label
//! values are bounded: source names come from the config, codes from the probe catalogue,
//! actions from the client's fixed set, HBR codes are sanitised and capped in length.
//!
//! Never put a secret, a reason text or anything a server chose freely into a label.

use std::collections::BTreeSet;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::reconcile::{Outcome, SourceResult};

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct SourceKind {
    source: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct SourceLayer {
    source: String,
    layer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct SourceCode {
    source: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct SourceOnly {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionCode {
    action: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionOnly {
    action: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The label sets published last, so that a source that left the config (or a code that no
/// longer applies) disappears from the output instead of staying at its last value.
#[derive(Default)]
struct Published {
    success: BTreeSet<SourceKind>,
    duration: BTreeSet<SourceLayer>,
    failure: BTreeSet<SourceCode>,
    in_sync: BTreeSet<SourceOnly>,
    unreachable: BTreeSet<SourceOnly>,
}

pub struct Metrics {
    registry: Registry,
    probe_success: Family<SourceKind, Gauge>,
    probe_duration: Family<SourceLayer, FloatGauge>,
    probe_failure: Family<SourceCode, Gauge>,
    source_in_sync: Family<SourceOnly, Gauge>,
    unreachable_members: Family<SourceOnly, Gauge>,
    reload_ok: Gauge,
    reload_time: FloatGauge,
    hbr_requests: Family<ActionCode, Counter>,
    hbr_duration: Family<ActionOnly, Histogram>,
    published: Mutex<Published>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let probe_success = Family::<SourceKind, Gauge>::default();
        let probe_duration = Family::<SourceLayer, FloatGauge>::default();
        let probe_failure = Family::<SourceCode, Gauge>::default();
        let source_in_sync = Family::<SourceOnly, Gauge>::default();
        let unreachable_members = Family::<SourceOnly, Gauge>::default();
        let reload_ok = Gauge::default();
        let reload_time = FloatGauge::default();
        let hbr_requests = Family::<ActionCode, Counter>::default();
        let hbr_duration = Family::<ActionOnly, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.01, 2.0, 12))) as fn() -> Histogram,
        );
        registry.register(
            "probe_success",
            "1 if the last probe of the source passed, 0 if it failed",
            probe_success.clone(),
        );
        registry.register(
            "probe_duration_seconds",
            "Duration of each layer of the last probe of the source",
            probe_duration.clone(),
        );
        registry.register(
            "probe_failure",
            "1 for the failure code of the source's last probe (absent while it passes)",
            probe_failure.clone(),
        );
        registry.register(
            "source_in_sync",
            "1 if HBR holds the source as configured, 0 otherwise",
            source_in_sync.clone(),
        );
        registry.register(
            "hbr_source_unreachable_members",
            "Fleet strict mode, on the source's owner: live members whose last probe of the \
             source failed (PARTIAL_REACHABILITY when above 0 while the source is reachable)",
            unreachable_members.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 if the last configuration load succeeded, 0 if the agent runs an older config",
            reload_ok.clone(),
        );
        registry.register(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last configuration load (at start or reload), successful or not",
            reload_time.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "hbr_requests",
            "HBR API requests (each attempt) by action and HBR Code (200 = success)",
            hbr_requests.clone(),
        );
        registry.register(
            "hbr_request_duration_seconds",
            "Duration of HBR API attempts",
            hbr_duration.clone(),
        );
        Metrics {
            registry,
            probe_success,
            probe_duration,
            probe_failure,
            source_in_sync,
            unreachable_members,
            reload_ok,
            reload_time,
            hbr_requests,
            hbr_duration,
            published: Mutex::new(Published::default()),
        }
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A configuration load finished, at start or on reload.
    pub fn config_loaded(&self, ok: bool) {
        self.reload_ok.set(i64::from(ok));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.reload_time.set(now.as_secs_f64());
    }

    /// One HBR attempt ended: `code` is HBR's `Code` ("200" on success) or the client's word
    /// for what happened without one (`Transport`, `Timeout`, `Decode`).
    pub fn hbr_request(&self, action: &str, code: &str, elapsed: Duration) {
        let action = bounded(action);
        self.hbr_requests
            .get_or_create(&ActionCode {
                action: action.clone(),
                code: bounded(code),
            })
            .inc();
        self.hbr_duration
            .get_or_create(&ActionOnly { action })
            .observe(elapsed.as_secs_f64());
    }

    /// Publish the latest result of every source the daemon knows; sources not in `results`
    /// are dropped from the output.
    pub fn publish<'a>(&self, results: impl IntoIterator<Item = &'a SourceResult>) {
        let mut now = Published::default();
        for r in results {
            if r.outcome == Outcome::Orphaned {
                continue;
            }
            let source = r.name.clone();
            let in_sync = matches!(
                r.outcome,
                Outcome::InSync | Outcome::Added | Outcome::Updated
            );
            let labels = SourceOnly {
                source: source.clone(),
            };
            // Fleet: whether another member's source is in sync is that member's to say.
            if r.outcome != Outcome::OtherOwner {
                self.source_in_sync
                    .get_or_create(&labels)
                    .set(i64::from(in_sync));
                now.in_sync.insert(labels);
            }
            if let Some(reach) = &r.reach {
                let labels = SourceOnly {
                    source: source.clone(),
                };
                self.unreachable_members
                    .get_or_create(&labels)
                    .set(i64::try_from(reach.unreachable.len()).unwrap_or(i64::MAX));
                now.unreachable.insert(labels);
            }
            let Some(probe) = &r.probe else { continue };
            let labels = SourceKind {
                source: source.clone(),
                kind: r.kind.to_string(),
            };
            self.probe_success
                .get_or_create(&labels)
                .set(i64::from(probe.passed()));
            now.success.insert(labels);
            for l in &probe.layers {
                let labels = SourceLayer {
                    source: source.clone(),
                    layer: l.layer.as_str().to_string(),
                };
                self.probe_duration
                    .get_or_create(&labels)
                    .set(l.duration.as_secs_f64());
                now.duration.insert(labels);
            }
            if let Some(f) = &probe.failure {
                let labels = SourceCode {
                    source,
                    code: f.code.as_str().to_string(),
                };
                self.probe_failure.get_or_create(&labels).set(1);
                now.failure.insert(labels);
            }
        }
        let mut old = self.published.lock().unwrap_or_else(|p| p.into_inner());
        for l in old.success.difference(&now.success) {
            self.probe_success.remove(l);
        }
        for l in old.duration.difference(&now.duration) {
            self.probe_duration.remove(l);
        }
        for l in old.failure.difference(&now.failure) {
            self.probe_failure.remove(l);
        }
        for l in old.in_sync.difference(&now.in_sync) {
            self.source_in_sync.remove(l);
        }
        for l in old.unreachable.difference(&now.unreachable) {
            self.unreachable_members.remove(l);
        }
        *old = now;
    }
}

/// A label value from outside the agent's own vocabulary (HBR's `Code`): letters, digits and
/// `._-` only, at most 64 characters, so that no answer can blow up the label space or the
/// exposition format.
fn bounded(v: &str) -> String {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { v.to_string() } else { "Other".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hbr_codes_are_bounded_label_values() {
        assert_eq!(bounded("Throttling.User"), "Throttling.User");
        assert_eq!(bounded("200"), "200");
        assert_eq!(bounded("a\"b"), "Other");
        assert_eq!(bounded(""), "Other");
        assert_eq!(bounded(&"x".repeat(65)), "Other");
    }

    #[test]
    fn unreachable_members_follow_the_owner_s_reach_and_disappear_with_it() {
        let m = Metrics::new();
        let mut r = SourceResult {
            name: "lake".into(),
            kind: "filesystem",
            data_source_type: "COMMON_FILE_SYSTEM".into(),
            outcome: Outcome::InSync,
            data_source_id: None,
            detail: String::new(),
            request_id: None,
            probe: None,
            params: None,
            credential: false,
            reach: Some(crate::fleet::reach::Reach {
                code: Some("PARTIAL_REACHABILITY".into()),
                unreachable: [("c-b".to_string(), "TCP_TIMEOUT".to_string())].into(),
                reachable: vec!["c-a".into()],
                unknown: vec![],
            }),
        };
        m.publish([&r]);
        assert!(
            m.encode()
                .contains("hbr_source_unreachable_members{source=\"lake\"} 1"),
            "{}",
            m.encode()
        );
        r.reach = None;
        m.publish([&r]);
        assert!(!m.encode().contains("hbr_source_unreachable_members{"));
    }

    #[test]
    fn exposition_names_match_the_documented_ones() {
        let m = Metrics::new();
        m.config_loaded(true);
        m.hbr_request("DescribeDataSources", "200", Duration::from_millis(20));
        let text = m.encode();
        for name in [
            "config_last_reload_successful 1",
            "config_last_reload_timestamp_seconds ",
            "hbr_requests_total{action=\"DescribeDataSources\",code=\"200\"} 1",
            "hbr_request_duration_seconds_count{action=\"DescribeDataSources\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
