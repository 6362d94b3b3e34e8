//! The Slack sink: what it records, how it answers (as Slack does, or as scripted), its
//! `/_sink/` API, and the `slack-sink` binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use keyrotor_standins::slack::{Reply, SlackSink};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

async fn post_json(url: &str, body: &Value) -> (u16, Option<String>, String) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, r.text().await.unwrap())
}

fn message(text: &str) -> Value {
    json!({ "text": text, "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": text } }] })
}

#[tokio::test]
async fn a_post_is_recorded_with_its_body_and_content_type_and_answered_ok() {
    let sink = SlackSink::start().await.unwrap();
    assert!(sink.webhook_url().starts_with("http://127.0.0.1:"));
    assert!(
        sink.webhook_url()
            .contains("/services/T00000000/B00000000/")
    );
    assert!(sink.webhook_url().ends_with(sink.webhook_secret()));
    assert_eq!(sink.webhook_secret().len(), 32);

    let (status, _, body) = post_json(&sink.webhook_url(), &message("hello")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let posts = sink.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].json, Some(message("hello")));
    assert_eq!(posts[0].text(), Some("hello"));
    assert_eq!(posts[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(posts[0].status, 200);
    assert!(posts[0].path.ends_with(sink.webhook_secret()));
    sink.stop().await;
}

#[tokio::test]
async fn two_sinks_have_different_secrets() {
    let (a, b) = (
        SlackSink::start().await.unwrap(),
        SlackSink::start().await.unwrap(),
    );
    assert_ne!(a.webhook_secret(), b.webhook_secret());
    assert_ne!(a.base_url(), b.base_url());
}

#[tokio::test]
async fn unscripted_posts_are_judged_as_slack_would() {
    let sink = SlackSink::start().await.unwrap();
    let client = reqwest::Client::new();

    let r = client
        .post(sink.webhook_url())
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.text().await.unwrap(), "invalid_payload");

    let (status, _, body) = post_json(&sink.webhook_url(), &json!({ "username": "x" })).await;
    assert_eq!((status, body.as_str()), (400, "no_text"));

    let too_many: Vec<Value> = (0..51)
        .map(
            |i| json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("b{i}") } }),
        )
        .collect();
    let (status, _, body) = post_json(
        &sink.webhook_url(),
        &json!({ "text": "t", "blocks": too_many }),
    )
    .await;
    assert_eq!((status, body.as_str()), (400, "invalid_blocks"));

    let long = json!({ "text": "t", "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": "x".repeat(3001) } }] });
    assert_eq!(post_json(&sink.webhook_url(), &long).await.0, 400);
    let header = json!({ "text": "t", "blocks": [{ "type": "header", "text": { "type": "plain_text", "text": "h".repeat(151) } }] });
    assert_eq!(post_json(&sink.webhook_url(), &header).await.0, 400);
    let at_limits = json!({ "text": "t", "blocks": [
        { "type": "header", "text": { "type": "plain_text", "text": "h".repeat(150) } },
        { "type": "section", "text": { "type": "mrkdwn", "text": "…".repeat(3000) } },
    ] });
    assert_eq!(post_json(&sink.webhook_url(), &at_limits).await.0, 200);

    let posts = sink.posts();
    assert_eq!(posts.len(), 6, "every post is recorded, refused or not");
    assert_eq!(posts[0].body, "hello");
    assert_eq!(posts[0].json, None);
    assert_eq!(posts[0].content_type.as_deref(), Some("text/plain"));
    let statuses: Vec<u16> = posts.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [400, 400, 400, 400, 400, 200]);
}

#[tokio::test]
async fn a_post_to_another_webhook_gets_no_service_and_leaves_the_script_alone() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::rollup_error(), 1);
    let wrong = format!(
        "{}/services/T00000000/B00000000/wrongsecret",
        sink.base_url()
    );
    let (status, _, body) = post_json(&wrong, &message("hi")).await;
    assert_eq!((status, body.as_str()), (404, "no_service"));
    let (status, _, body) = post_json(&sink.webhook_url(), &message("hi")).await;
    assert_eq!(
        (status, body.as_str()),
        (500, "rollup_error"),
        "the script was still there"
    );
    let posts = sink.posts();
    assert_eq!(posts[0].path, "/services/T00000000/B00000000/wrongsecret");
    assert_eq!(posts[0].status, 404);
}

#[tokio::test]
async fn scripts_answer_the_next_posts_in_order_then_expire() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::rate_limited(3), 2);
    sink.script(Reply::rollup_error(), 1);
    sink.script(Reply::channel_is_archived(), 0); // answers no post at all

    let mut got = Vec::new();
    for i in 0..5 {
        got.push(post_json(&sink.webhook_url(), &message(&format!("m{i}"))).await);
    }
    let expect = |s: u16, ra: Option<&str>, b: &str| (s, ra.map(str::to_owned), b.to_owned());
    assert_eq!(
        got,
        vec![
            expect(429, Some("3"), "rate_limited"),
            expect(429, Some("3"), "rate_limited"),
            expect(500, None, "rollup_error"),
            expect(200, None, "ok"),
            expect(200, None, "ok"),
        ]
    );
    assert_eq!(sink.posts().len(), 5);
}

#[tokio::test]
async fn each_of_slacks_errors_can_be_scripted() {
    let sink = SlackSink::start().await.unwrap();
    let replies = [
        Reply::invalid_payload(),
        Reply::no_text(),
        Reply::action_prohibited(),
        Reply::channel_not_found(),
        Reply::no_service(),
        Reply::channel_is_archived(),
        Reply::rollup_error(),
    ];
    for r in &replies {
        sink.script(r.clone(), 1);
    }
    for r in &replies {
        let (status, _, body) = post_json(&sink.webhook_url(), &message("x")).await;
        assert_eq!((status, body.as_str()), (r.status, r.body.as_str()));
    }
}

#[tokio::test]
async fn reset_forgets_posts_and_scripts() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::rollup_error(), 3);
    assert_eq!(post_json(&sink.webhook_url(), &message("x")).await.0, 500);
    sink.reset();
    assert!(sink.posts().is_empty());
    assert_eq!(post_json(&sink.webhook_url(), &message("x")).await.0, 200);
    assert_eq!(sink.posts().len(), 1);
}

#[tokio::test]
async fn waiting_for_posts_returns_once_they_arrive_and_fails_when_they_do_not() {
    let sink = SlackSink::start().await.unwrap();
    let url = sink.webhook_url();
    let poster = tokio::spawn(async move {
        for i in 0..3 {
            post_json(&url, &message(&format!("m{i}"))).await;
        }
    });
    let posts = sink.wait_for_posts(3, WAIT).await.unwrap();
    assert_eq!(posts.len(), 3);
    poster.await.unwrap();
    let err = sink
        .wait_for_posts(4, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("got 3 posts, not 4"), "{err}");
}

#[tokio::test]
async fn the_sink_api_lists_posts_scripts_replies_and_resets() {
    let sink = SlackSink::start().await.unwrap();
    let api = sink.api_url();
    let client = reqwest::Client::new();

    let r = client
        .post(format!("{api}/script"))
        .json(&json!([
            { "status": 429, "body": "rate_limited", "retry_after": 2, "times": 1 },
            { "status": 404, "body": "no_service" },
        ]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = client
        .post(format!("{api}/script"))
        .json(&json!({ "status": 410, "body": "channel_is_archived", "times": 2 }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let mut got = Vec::new();
    for i in 0..5 {
        got.push(post_json(&sink.webhook_url(), &message(&format!("m{i}"))).await);
    }
    let statuses: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(statuses, [429, 404, 410, 410, 200]);
    assert_eq!(got[0].1.as_deref(), Some("2"));

    let r = client.get(format!("{api}/posts")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let posts: Value = r.json().await.unwrap();
    let posts = posts.as_array().unwrap();
    assert_eq!(posts.len(), 5);
    assert_eq!(posts[4]["json"]["text"], "m4");
    assert_eq!(posts[4]["status"], 200);
    assert_eq!(posts[4]["content_type"], "application/json");
    assert!(posts[4]["at_ms"].as_u64().unwrap() >= posts[0]["at_ms"].as_u64().unwrap());

    let r = client.post(format!("{api}/reset")).send().await.unwrap();
    assert!(r.status().is_success());
    assert!(sink.posts().is_empty());
    let posts: Value = json_of(client.get(format!("{api}/posts"))).await;
    assert_eq!(posts, json!([]));
}

#[tokio::test]
async fn the_sink_api_waits_for_a_number_of_posts() {
    let sink = SlackSink::start().await.unwrap();
    let client = reqwest::Client::new();
    let waiting = client
        .get(format!("{}/posts?min=2&timeout_ms=10000", sink.api_url()))
        .send();
    let url = sink.webhook_url();
    let posting = async {
        post_json(&url, &message("a")).await;
        post_json(&url, &message("b")).await;
    };
    let (r, ()) = tokio::join!(waiting, posting);
    let r = r.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let posts: Vec<Value> = r.json().await.unwrap();
    assert_eq!(posts.len(), 2);

    let r = client
        .get(format!("{}/posts?min=3&timeout_ms=50", sink.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        408,
        "not enough posts: a timeout, with what there is"
    );
    let posts: Vec<Value> = r.json().await.unwrap();
    assert_eq!(posts.len(), 2);
}

#[tokio::test]
async fn a_stopped_sink_no_longer_listens() {
    let sink = SlackSink::start().await.unwrap();
    let url = sink.webhook_url();
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .post(&url)
            .json(&message("x"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    sink.stop().await;
    let err = reqwest::Client::new()
        .post(&url)
        .json(&message("x"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
}

#[tokio::test]
async fn a_delayed_reply_arrives_after_its_delay() {
    let sink = SlackSink::start().await.unwrap();
    sink.script(Reply::ok().delayed(Duration::from_millis(200)), 1);
    let started = std::time::Instant::now();
    assert_eq!(post_json(&sink.webhook_url(), &message("x")).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

/// The sink binary, started with its stdin piped, and the webhook URL it printed first.
fn start_binary() -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slack-sink"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

/// How `child` exited, waited for off the async threads.
async fn exit_status(mut child: Child) -> ExitStatus {
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap()
}

/// The binary: the webhook URL on the first line, a working sink, gone when stdin closes.
#[tokio::test]
async fn the_binary_prints_its_webhook_url_serves_and_exits_when_stdin_closes() {
    let (mut child, url) = start_binary();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/services/T00000000/"),
        "{url:?}"
    );

    let (status, _, body) = post_json(&url, &message("from another process")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let api = format!("{}/_sink", &url[..url.find("/services/").unwrap()]);
    let posts: Vec<Value> = reqwest::get(format!("{api}/posts?min=1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0]["json"]["text"], "from another process");

    drop(child.stdin.take());
    let status = exit_status(child).await;
    assert!(status.success(), "{status}");
    assert!(
        reqwest::Client::new()
            .post(&url)
            .json(&message("x"))
            .send()
            .await
            .is_err()
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_binary_exits_cleanly_on_sigterm() {
    let (child, _) = start_binary();
    let status = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let status = exit_status(child).await;
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
}

/// The JSON answer to `request`, which must succeed.
async fn json_of<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> T {
    request.send().await.unwrap().json().await.unwrap()
}
