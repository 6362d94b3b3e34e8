//! `SlackNotifier` against the Slack sink: success, 429 with `Retry-After`, 5xx with backoff,
//! Slack's permanent errors, the bounds on retrying, and the webhook URL kept out of every
//! error, log line and `Debug` output.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyrotor_core::ports::{Notifier, PortError, PortErrorKind, WebhookProbe};
use keyrotor_core::report::{NotificationStatus, Outcome, RunReport, TargetReport};
use keyrotor_notify::{SlackNotifier, SlackOptions, render};
use keyrotor_testkit::slack::{Reply, SlackSink};
use secrecy::SecretString;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

const WAIT: Duration = Duration::from_secs(10);

/// Waits short enough for tests, long enough to tell a backoff from none.
fn fast() -> SlackOptions {
    SlackOptions {
        max_attempts: 4,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(40),
        retry_after_cap: Duration::from_secs(2),
        deadline: Duration::from_secs(10),
        request_timeout: Duration::from_secs(5),
    }
}

fn notifier(sink: &SlackSink, options: SlackOptions) -> SlackNotifier {
    SlackNotifier::with_options(SecretString::from(sink.webhook_url()), options).unwrap()
}

fn report() -> RunReport {
    let mut t = TargetReport::new("platform", Outcome::Rotated);
    t.old_key = Some("AKIA…KEY1".into());
    t.new_key = Some("AKIA…KEY2".into());
    t.duration_ms = 1200;
    RunReport {
        run_id: "run-1".into(),
        origin: "host-1".into(),
        targets: vec![t],
        notification: NotificationStatus::NotConfigured,
    }
}

#[tokio::test]
async fn a_report_is_posted_once_as_the_rendered_message() {
    let sink = SlackSink::start().await.unwrap();
    let n = notifier(&sink, fast());
    n.notify(&report()).await.unwrap();
    let posts = sink.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].json.as_ref(), Some(&render(&report())));
    assert_eq!(posts[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        posts[0].status, 200,
        "the sink judged it a valid Slack message"
    );
    sink.stop().await;
}

#[tokio::test]
async fn a_thousand_target_run_is_a_message_slack_accepts() {
    let sink = SlackSink::start().await.unwrap();
    let mut r = report();
    r.targets = (0..1000)
        .map(|i| {
            let mut t = r.targets[0].clone();
            t.name = format!("tgt-{i:04}");
            if i % 3 == 0 {
                t.outcome = Outcome::Failed;
                t.error = Some("Azure DevOps answered 401 Unauthorized ".repeat(40));
            }
            t
        })
        .collect();
    notifier(&sink, fast()).notify(&r).await.unwrap();
    assert_eq!(sink.posts()[0].status, 200);
}

#[tokio::test]
async fn a_429_is_retried_after_the_retry_after_slack_asked_for() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::rate_limited(1), 1);
    notifier(&sink, fast()).notify(&report()).await.unwrap();
    let posts = sink.posts();
    assert_eq!(
        posts.iter().map(|p| p.status).collect::<Vec<_>>(),
        [429, 200]
    );
    let gap = posts[1].at - posts[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "waited {gap:?}, not the second Slack asked for"
    );
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_waits_only_the_cap() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::rate_limited(3600), 1);
    let options = SlackOptions {
        retry_after_cap: Duration::from_millis(200),
        ..fast()
    };
    notifier(&sink, options).notify(&report()).await.unwrap();
    let posts = sink.posts();
    let gap = posts[1].at - posts[0].at;
    assert!(
        gap >= Duration::from_millis(200) && gap < Duration::from_secs(30),
        "{gap:?}"
    );
}

#[tokio::test]
async fn two_500s_then_ok_succeeds_after_backing_off() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::rollup_error(), 2);
    notifier(&sink, fast()).notify(&report()).await.unwrap();
    let posts = sink.posts();
    assert_eq!(
        posts.iter().map(|p| p.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    // Backoff: 10 ms, then 20 ms.
    assert!(posts[1].at - posts[0].at >= Duration::from_millis(10));
    assert!(posts[2].at - posts[1].at >= Duration::from_millis(20));
}

#[tokio::test]
async fn a_500_forever_fails_after_a_bounded_number_of_attempts() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::rollup_error(), 1000);
    let e = notifier(&sink, fast()).notify(&report()).await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Retryable);
    assert_eq!(sink.posts().len(), 4, "max_attempts");
    assert!(
        e.message.starts_with(
            "Slack answered HTTP 500 rollup_error on the last of 4 attempts; gave up after "
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_long_outage_is_bounded_in_time_too() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::rollup_error(), 1000);
    let options = SlackOptions {
        max_attempts: 1000,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(100),
        deadline: Duration::from_millis(300),
        ..fast()
    };
    let started = Instant::now();
    gives_up(&sink, options).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let attempts = sink.posts().len();
    assert!((2..20).contains(&attempts), "{attempts} attempts");
}

#[tokio::test]
async fn rate_limiting_forever_gives_up_too() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::rate_limited(0), 1000);
    let e = notifier(&sink, fast()).notify(&report()).await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Retryable);
    assert!(e.message.contains("HTTP 429"), "{e}");
    assert_eq!(sink.posts().len(), 4);
}

#[tokio::test]
async fn slacks_permanent_errors_fail_at_once_naming_code_and_status() {
    let cases = [
        (Reply::invalid_payload(), PortErrorKind::Invalid),
        (Reply::no_text(), PortErrorKind::Invalid),
        (Reply::action_prohibited(), PortErrorKind::Forbidden),
        (Reply::channel_not_found(), PortErrorKind::NotFound),
        (Reply::no_service(), PortErrorKind::NotFound),
        (Reply::channel_is_archived(), PortErrorKind::NotFound),
        (
            Reply::new(418, "<html>teapot</html>"),
            PortErrorKind::Failed,
        ),
        (Reply::new(200, "not_ok"), PortErrorKind::Failed),
    ];
    for (reply, kind) in cases {
        let sink = SlackSink::start().await.unwrap();
        sink.script(reply.clone(), 5);
        let e = notifier(&sink, fast()).notify(&report()).await.unwrap_err();
        assert_eq!(e.kind, kind, "{reply:?}: {e}");
        assert_eq!(sink.posts().len(), 1, "{reply:?}: no retry");
        assert!(e.message.contains(&format!("HTTP {}", reply.status)), "{e}");
        if !reply.body.starts_with('<') {
            assert!(e.message.contains(&reply.body), "{e}");
        } else {
            assert!(
                !e.message.contains("teapot"),
                "an odd body is not echoed: {e}"
            );
        }
        assert!(
            !e.message.contains('\n') && !e.message.contains(". "),
            "one sentence: {e}"
        );
        sink.stop().await;
    }
}

/// The error of a notification through `sink` with `options`, which must be retryable.
async fn gives_up(sink: &SlackSink, options: SlackOptions) -> PortError {
    let e = notifier(sink, options).notify(&report()).await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Retryable, "{e}");
    e
}

/// A sink, and a notifier for a webhook it does not know (one Slack revoked).
async fn revoked_webhook() -> (SlackSink, SlackNotifier) {
    let sink = SlackSink::start().await.unwrap();
    let url = format!(
        "{}/services/T00000000/B00000000/revokedsecret",
        sink.base_url()
    );
    let n = SlackNotifier::with_options(SecretString::from(url), fast()).unwrap();
    (sink, n)
}

#[tokio::test]
async fn a_webhook_slack_does_not_know_gets_no_service() {
    let (_sink, n) = revoked_webhook().await;
    let e = n.notify(&report()).await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::NotFound);
    assert!(e.message.contains("HTTP 404 no_service"), "{e}");
    assert!(!e.message.contains("revokedsecret"), "{e}");
}

#[tokio::test]
async fn a_slack_that_does_not_answer_in_time_is_retried_then_given_up() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::ok().delayed(Duration::from_secs(1)), 2);
    let options = SlackOptions {
        max_attempts: 2,
        request_timeout: Duration::from_millis(100),
        ..fast()
    };
    let e = gives_up(&sink, options).await;
    assert!(
        e.message
            .starts_with("Slack did not answer within 0.1 s on the last of 2 attempts"),
        "{e}"
    );
    sink.wait_for_posts(2, WAIT).await.unwrap();
}

#[tokio::test]
async fn a_webhook_url_that_is_not_https_or_not_a_url_is_refused_without_being_echoed() {
    for url in [
        "http://hooks.slack.com/services/T0/B0/sekrit",
        "hooks.slack.com/services/T0/B0/sekrit",
        "https//hooks.slack.com/services/T0/B0/sekrit",
    ] {
        let e = SlackNotifier::new(SecretString::from(url)).unwrap_err();
        assert_eq!(e.kind, PortErrorKind::Invalid, "{url}");
        assert!(
            !e.message.contains("sekrit") && !format!("{e:?}").contains("sekrit"),
            "{e:?}"
        );
    }
}

// ----- the webhook URL never leaks -----

/// Records every tracing event and span field as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = format!("span {}", span.metadata().name());
        span.record(&mut Fields(&mut line));
        self.0.lock().unwrap().push(line);
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut line = String::from("record");
        values.record(&mut Fields(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = format!("{} {}", event.metadata().level(), event.metadata().target());
        event.record(&mut Fields(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn assert_clean(what: &str, sink_url: &str, secret: &str, text: &str) {
    for needle in [sink_url, secret, "/services/"] {
        assert!(!text.contains(needle), "{what} contains {needle:?}: {text}");
    }
}

#[tokio::test]
async fn the_webhook_url_appears_in_no_error_log_line_or_debug_output() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let sink = SlackSink::start().await.unwrap();
    let (url, secret) = (sink.webhook_url(), sink.webhook_secret().to_owned());
    let slow = SlackOptions {
        max_attempts: 2,
        request_timeout: Duration::from_millis(100),
        ..fast()
    };
    let scenarios: Vec<(&str, Option<Reply>, SlackOptions)> = vec![
        ("success", None, fast()),
        ("500 forever", Some(Reply::rollup_error()), fast()),
        ("429 forever", Some(Reply::rate_limited(0)), fast()),
        ("400", Some(Reply::invalid_payload()), fast()),
        ("404", Some(Reply::no_service()), fast()),
        ("410", Some(Reply::channel_is_archived()), fast()),
        (
            "timeout",
            Some(Reply::ok().delayed(Duration::from_secs(1))),
            slow,
        ),
    ];
    let mut errors: Vec<PortError> = Vec::new();
    for (what, reply, options) in scenarios {
        sink.reset();
        if let Some(r) = reply {
            sink.script(r, 1000);
        }
        let n = notifier(&sink, options);
        assert_clean(what, &url, &secret, &format!("{n:?}"));
        match n.notify(&report()).await {
            Ok(()) => assert_eq!(what, "success"),
            Err(e) => errors.push(e),
        }
    }

    // Nobody listening: a connection error, whose reqwest wording would carry the URL.
    let n = notifier(&sink, fast());
    sink.stop().await;
    let e = n.notify(&report()).await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Retryable);
    assert!(
        e.message
            .starts_with("could not connect to Slack on the last of 4 attempts"),
        "{e}"
    );
    errors.push(e);

    assert_eq!(errors.len(), 7);
    for e in &errors {
        assert_clean("an error", &url, &secret, &e.to_string());
        assert_clean("an error's Debug", &url, &secret, &format!("{e:?}"));
    }
    let lines = capture.0.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("retrying")),
        "logs were captured: {lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("gave up")), "{lines:?}");
    for line in &lines {
        assert_clean("a log line", &url, &secret, line);
    }
}

#[tokio::test]
async fn a_probe_of_a_live_webhook_posts_no_message() {
    let sink = SlackSink::start().await.unwrap();
    let n = notifier(&sink, fast());
    assert_eq!(n.probe().await.unwrap(), WebhookProbe::Valid);
    let posts = sink.posts();
    assert_eq!(posts.len(), 1, "one probe");
    assert_eq!(
        posts[0].body, "{}",
        "an empty object, which Slack never shows"
    );
    assert_eq!(
        posts[0].status, 400,
        "Slack refuses it as a message (no_text)"
    );
}

#[tokio::test]
async fn a_probe_of_a_dead_webhook_names_the_fix() {
    let (sink, n) = revoked_webhook().await;
    let e = n.probe().await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::NotFound);
    assert_eq!(
        e.message,
        "Slack answered the webhook with HTTP 404 no_service: the webhook was disabled or removed; create a new one and store its URL where keyrotor reads it"
    );
    sink.script(Reply::invalid_token(), 1);
    let e = notifier(&sink, fast()).probe().await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Forbidden);
    assert!(e.message.contains("HTTP 403 invalid_token"), "{e}");
}

#[tokio::test]
async fn a_probe_answered_in_no_known_way_is_unverifiable() {
    let sink = SlackSink::start().await.unwrap();
    for reply in [Reply::ok(), Reply::rollup_error(), Reply::rate_limited(1)] {
        sink.script(reply.clone(), 1);
        let got = notifier(&sink, fast()).probe().await.unwrap();
        assert!(
            matches!(&got, WebhookProbe::Unverifiable(why) if why.contains(&reply.status.to_string())),
            "{reply:?}: {got:?}"
        );
    }
    assert_eq!(sink.posts().len(), 3, "one attempt each, no retry");
}
