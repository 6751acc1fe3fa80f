//! Hostile answers from the control plane: arbitrary bodies, statuses and JSON shapes. The
//! client must turn every one into `Ok` or a typed error — never a panic, never a loop — and a
//! non-idempotent action must never be reported as retryable unless HBR said it was not done.
//!
//! Bounded for CI: the case counts below (`PROPTEST_CASES` raises them for a longer run).
//! Failing inputs proptest finds are kept in `proptest-regressions/` and replayed first.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::super::*;
use super::{Reply, client, fake};

fn cases(n: u32) -> ProptestConfig {
    let from_env = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    ProptestConfig {
        cases: from_env.unwrap_or(n),
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON, a few levels deep, with the keys HBR's answers use mixed in so that the
/// interesting paths (Code, Success, DataSources, TotalCount, …) are reached often.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("Code".to_string()),
        Just("Success".to_string()),
        Just("Message".to_string()),
        Just("RequestId".to_string()),
        Just("DataSources".to_string()),
        Just("DataSource".to_string()),
        Just("DataSourceId".to_string()),
        Just("DataSourceName".to_string()),
        Just("TotalCount".to_string()),
        Just("PageSize".to_string()),
        Just("PageNumber".to_string()),
        Just("ConnectionInfo".to_string()),
        Just("UpdatedTime".to_string()),
        "[a-zA-Z]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("200")),
        Just(json!("Throttling.User")),
        Just(json!("ServiceUnavailable")),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(200u16),
        Just(400),
        Just(403),
        Just(404),
        Just(429),
        Just(500),
        Just(502),
        Just(503),
        100u16..600,
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..512),
        ".{0,200}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Every answer classifies without panic; an `AddDataSource` whose outcome is not known
    /// is never retried.
    #[test]
    fn classify_never_panics_and_never_retries_an_unknown_add(
        status in status(),
        body in body(),
        wait_ms in proptest::option::of(0u64..100_000),
    ) {
        let wait = wait_ms.map(Duration::from_millis);
        let _ = classify("DescribeDataSources", status, &body, None, wait, true);
        match classify("AddDataSource", status, &body, Some("HDR-RID".into()), wait, false) {
            Outcome::Done(v, _) => prop_assert!(v.is_object()),
            Outcome::Retry { err, .. } => {
                // Only a definite "not done" (throttling, an outage HBR reports in JSON) may
                // be retried for a non-idempotent action.
                prop_assert!(
                    !matches!(err, HbrError::OutcomeUnknown { .. } | HbrError::Decode { .. }),
                    "{err:?}"
                );
            }
            Outcome::Final(_) => {}
        }
    }

    /// Any JSON as a data source item: typed value or error, never a panic.
    #[test]
    fn a_data_source_item_of_any_shape_decodes_or_errs(v in json_value()) {
        let _ = serde_json::from_value::<RemoteDataSource>(v);
    }
}

proptest! {
    #![proptest_config(cases(48))]

    /// A whole DescribeDataSources against a server answering arbitrary pages: the call ends
    /// (within the client's own bounds) with a list or an error; listed ids are unique.
    #[test]
    fn describe_against_arbitrary_pages_ends(pages in prop::collection::vec((status(), body()), 1..5)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let pages = std::sync::Arc::new(pages);
            let (url, _seen) = fake(move |_, n| -> Reply {
                let (status, body) = &pages[n % pages.len()];
                (*status, vec![], String::from_utf8_lossy(body).into_owned())
            })
            .await;
            let c = client(&url, SignatureVersion::V3, false);
            let got = tokio::time::timeout(Duration::from_secs(60), c.describe_data_sources("cl-1"))
                .await
                .expect("describe must end");
            if let Ok(list) = got {
                let mut ids: Vec<_> = list.iter().map(|d| d.data_source_id.clone()).collect();
                ids.sort();
                let n = ids.len();
                ids.dedup();
                assert_eq!(ids.len(), n, "no data source listed twice");
            }
        });
    }
}
