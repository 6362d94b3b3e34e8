//! CloudWatch metrics in the embedded metric format (EMF): a JSON log line with an `_aws`
//! member, which CloudWatch Logs turns into a metric without any API call (and so without any
//! permission beyond the function's log group).
//!
//! One metric: [`NOTIFICATIONS_FAILED`], written by `report` when the Slack message did not go
//! out. A failed notification never fails the rotation, so without it a person would learn of a
//! rotation (or of a failure) only by reading logs; `deploy/template.yaml` alarms on it.

use serde_json::json;

/// The namespace of keyrotor's metrics (the alarm in `deploy/template.yaml` reads it).
pub const NAMESPACE: &str = "keyrotor";

/// The metric a failed Slack notification counts in (1 per failed report).
pub const NOTIFICATIONS_FAILED: &str = "NotificationsFailed";

/// The dimension the metric is kept under: the notifier function's name, so stacks in one
/// account and region do not share it.
pub const DIMENSION: &str = "FunctionName";

/// The EMF line for one failed notification of run `run_id` by function `function`, at
/// `timestamp_ms` (epoch milliseconds). Ids only: the error itself is in the summary and the
/// logs (redacted), never in the metric.
pub fn notification_failed(function: &str, run_id: &str, timestamp_ms: u128) -> String {
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[DIMENSION]],
                "Metrics": [{"Name": NOTIFICATIONS_FAILED, "Unit": "Count"}],
            }],
        },
        DIMENSION: function,
        NOTIFICATIONS_FAILED: 1,
        "run_id": run_id,
    })
    .to_string()
}

/// Writes the EMF line for a failed notification to stdout (where Lambda collects the
/// function's log lines), as one line.
pub fn emit_notification_failed(run_id: &str) {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    println!("{}", notification_failed(&function, run_id, now));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_notification_is_one_emf_line_counting_one_under_the_function_s_name() {
        let line = notification_failed("keyrotor-notifier", "run-1", 1_796_000_000_000);
        assert!(!line.contains('\n'), "one line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let m = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(m["Namespace"], NAMESPACE);
        assert_eq!(m["Dimensions"], json!([[DIMENSION]]));
        assert_eq!(m["Metrics"][0]["Name"], NOTIFICATIONS_FAILED);
        assert_eq!(v["_aws"]["Timestamp"], 1_796_000_000_000u64);
        // Every dimension and metric named in `_aws` is a member of the line (EMF's rule).
        assert_eq!(v[DIMENSION], "keyrotor-notifier");
        assert_eq!(v[NOTIFICATIONS_FAILED], 1);
    }
}
