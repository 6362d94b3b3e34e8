//! What the CLI prints. Key ids are masked; no secret ever reaches these functions.

use std::fmt::Write as _;
use std::time::SystemTime;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use keyrotor_core::config::{Policy, Target};
use keyrotor_core::domain::KeyStatus;
use keyrotor_core::plan::{self, Snapshot, StageInfo};
use keyrotor_core::protocol::StepError;
use keyrotor_core::report::{NotificationStatus, Outcome, RunReport, TargetReport};
use keyrotor_core::secret_value::Content;
use serde_json::json;

/// The run report as one JSON document.
pub fn json(report: &RunReport) -> String {
    let mut s = serde_json::to_string_pretty(report).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

fn keys_line(t: &TargetReport) -> String {
    match (&t.old_key, &t.new_key) {
        (Some(o), Some(n)) => format!("{o} → {n}"),
        (Some(o), None) => o.clone(),
        (None, Some(n)) => format!("→ {n}"),
        (None, None) => String::new(),
    }
}

fn detail(out: &mut String, t: &TargetReport) {
    if let (Some(step), Some(e)) = (t.failed_step, &t.error) {
        let _ = writeln!(out, "    failed at {step}: {e}");
    } else if let Some(r) = &t.reason {
        let _ = writeln!(out, "    {r}");
    }
    if let Some(c) = &t.compensation {
        let _ = writeln!(out, "    what keyrotor did: {c}");
    }
    if let Some(n) = &t.next_step {
        let _ = writeln!(out, "    next: {n}");
    }
}

/// The report of `rotate`, for people.
pub fn report_text(report: &RunReport) -> String {
    let mut out = String::new();
    for t in &report.targets {
        let _ = writeln!(
            out,
            "{:<24} {:<12} {}  ({:.1}s)",
            t.name,
            t.outcome.name(),
            keys_line(t),
            t.duration().as_secs_f64()
        );
        if t.outcome == Outcome::Rotated {
            for e in &t.endpoints {
                let _ = writeln!(
                    out,
                    "    {} ({}) holds {}",
                    e.endpoint,
                    e.id,
                    e.key.as_deref().unwrap_or("no key")
                );
            }
        } else {
            detail(&mut out, t);
        }
    }
    match &report.notification {
        NotificationStatus::NotConfigured => {}
        NotificationStatus::Skipped => out.push_str("Slack: nothing to report, no message sent\n"),
        NotificationStatus::Sent => out.push_str("Slack: notified\n"),
        NotificationStatus::Failed(e) => {
            let _ = writeln!(
                out,
                "Slack: the notification FAILED ({e}); the rotation results above stand"
            );
        }
    }
    out
}

/// The report of `plan`, for people.
pub fn plan_text(report: &RunReport) -> String {
    let mut out = String::new();
    for t in &report.targets {
        let verdict = match t.outcome {
            Outcome::Rotated => "would rotate",
            Outcome::NothingDue => "nothing due",
            Outcome::Busy => "busy",
            Outcome::Refused => "would refuse",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "cannot plan",
        };
        let _ = writeln!(
            out,
            "{:<24} {:<13} {}",
            t.name,
            verdict,
            t.old_key.as_deref().unwrap_or("")
        );
        detail(&mut out, t);
    }
    out.push_str("(plan changes nothing)\n");
    out
}

fn age(now: SystemTime, t: SystemTime) -> String {
    plan::human(now.duration_since(t).unwrap_or_default())
}

fn stage_of(s: &Snapshot, id: &keyrotor_core::domain::AccessKeyId) -> String {
    let mut labels = Vec::new();
    for (l, st) in [
        ("AWSCURRENT", &s.current),
        ("AWSPENDING", &s.pending),
        ("AWSPREVIOUS", &s.previous),
    ] {
        if matches!(st, Some(StageInfo { content: Content::Key { id: i, .. }, .. }) if i == id) {
            labels.push(l);
        }
    }
    if labels.is_empty() {
        "-".into()
    } else {
        labels.join(", ")
    }
}

fn stage_summary(st: &Option<StageInfo>) -> String {
    match st.as_ref().map(|s| &s.content) {
        None => "-".into(),
        Some(Content::Key { id, .. }) => id.masked(),
        Some(Content::Intent { run_id, .. }) => format!("intent of run {run_id}"),
        Some(Content::Legacy) => "legacy value (bare secret key)".into(),
        Some(Content::Foreign) => "not an access key".into(),
    }
}

/// `status`, for people.
pub fn status_text(
    results: &[(Target, Result<Snapshot, StepError>)],
    now: SystemTime,
    policy: &Policy,
) -> String {
    let mut out = String::new();
    for (t, r) in results {
        let _ = writeln!(
            out,
            "{}  (IAM user {}, secret {})",
            t.name, t.iam_user, t.secret
        );
        let s = match r {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(
                    out,
                    "    error: {}\n",
                    keyrotor_core::domain::redact(&e.message)
                );
                continue;
            }
        };
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header([
            "key",
            "status",
            "age",
            "last used",
            "secret stage",
            "held by",
        ]);
        for k in &s.keys {
            let held: Vec<&str> = s
                .endpoints
                .iter()
                .filter(|e| e.key_id().as_ref() == Some(&k.id))
                .map(|e| e.name.as_str())
                .collect();
            let due = if k.status == KeyStatus::Active
                && now.duration_since(k.created).unwrap_or_default() >= policy.min_key_age
            {
                " (due)"
            } else {
                ""
            };
            table.add_row([
                k.id.masked(),
                k.status.to_string(),
                format!("{}{due}", age(now, k.created)),
                k.last_used
                    .map_or_else(|| "never".into(), |u| format!("{} ago", age(now, u))),
                stage_of(s, &k.id),
                if held.is_empty() {
                    "-".into()
                } else {
                    held.join(", ")
                },
            ]);
        }
        let _ = writeln!(out, "{table}");
        if !s.secret_exists {
            let _ = writeln!(
                out,
                "    secret: does not exist yet (the first rotation creates it)"
            );
        } else {
            let _ = writeln!(
                out,
                "    secret: AWSCURRENT {} · AWSPENDING {} · AWSPREVIOUS {}",
                stage_summary(&s.current),
                stage_summary(&s.pending),
                stage_summary(&s.previous)
            );
        }
        for e in &s.endpoints {
            let holds = e.key_id().map_or_else(|| "no key".into(), |k| k.masked());
            let mut notes = Vec::new();
            if e.uses_oidc {
                notes.push("uses OIDC");
            }
            if !e.is_ready {
                notes.push("not ready");
            }
            let _ = writeln!(
                out,
                "    connection {}/{} ({}) holds {holds}{}",
                e.handle.project,
                e.name,
                e.handle.id,
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", notes.join(", "))
                }
            );
        }
        out.push('\n');
    }
    out
}

/// `status` as JSON.
pub fn status_json(results: &[(Target, Result<Snapshot, StepError>)], now: SystemTime) -> String {
    let targets: Vec<serde_json::Value> = results
        .iter()
        .map(|(t, r)| match r {
            Err(e) => json!({"name": t.name.as_str(), "error": e.message}),
            Ok(s) => json!({
                "name": t.name.as_str(),
                "iam_user": t.iam_user.as_str(),
                "secret": t.secret.as_str(),
                "secret_exists": s.secret_exists,
                "keys": s.keys.iter().map(|k| json!({
                    "key": k.id.masked(),
                    "status": k.status.to_string(),
                    "age_seconds": now.duration_since(k.created).unwrap_or_default().as_secs(),
                    "last_used_seconds_ago": k.last_used.map(|u| now.duration_since(u).unwrap_or_default().as_secs()),
                    "stage": stage_of(s, &k.id),
                })).collect::<Vec<_>>(),
                "stages": {
                    "AWSCURRENT": stage_summary(&s.current),
                    "AWSPENDING": stage_summary(&s.pending),
                    "AWSPREVIOUS": stage_summary(&s.previous),
                },
                "endpoints": s.endpoints.iter().map(|e| json!({
                    "project": e.handle.project.as_str(),
                    "name": e.name,
                    "id": e.handle.id,
                    "key": e.key_id().map(|k| k.masked()),
                    "uses_oidc": e.uses_oidc,
                    "is_ready": e.is_ready,
                })).collect::<Vec<_>>(),
            }),
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&json!({ "targets": targets })).unwrap_or_default();
    s.push('\n');
    s
}
