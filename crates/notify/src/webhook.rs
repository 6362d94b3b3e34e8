//! Posting to a Slack incoming webhook.
//!
//! Slack answers `200 ok`, or a status with a plain-text code (`400 invalid_payload`,
//! `404 no_service`, `410 channel_is_archived`, `500 rollup_error`, …). Only 429 and 5xx (and a
//! connection that failed before an answer) are worth another attempt: 429 after the
//! `Retry-After` Slack asks for, 5xx after an exponential backoff; both bounded in attempts and
//! in time, so a Slack outage cannot hold up a run. Every other answer is final at once.
//!
//! The webhook URL is a credential. It is held as a [`SecretString`], handed to reqwest only to
//! send, and never formatted: errors and log lines use keyrotor's own words (reqwest's errors
//! carry the URL), and `Debug` is written by hand.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use keyrotor_core::ports::{Notifier, PortError, PortErrorKind, PortResult, WebhookProbe};
use keyrotor_core::report::RunReport;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

use crate::render::render;

/// How [`SlackNotifier`] retries. The defaults suit Slack; tests shrink the waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackOptions {
    /// Attempts in all, the first one included (at least one is always made).
    pub max_attempts: u32,
    /// The wait after the first 5xx or failed connection; it doubles with each attempt.
    pub backoff_base: Duration,
    /// The longest wait between two attempts after a 5xx or failed connection.
    pub backoff_cap: Duration,
    /// The longest `Retry-After` honoured on a 429 (Slack asks for seconds).
    pub retry_after_cap: Duration,
    /// No wait is started that would end later than this after the first attempt began.
    pub deadline: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
}

impl Default for SlackOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            retry_after_cap: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
            request_timeout: Duration::from_secs(15),
        }
    }
}

impl SlackOptions {
    /// The wait after the `attempt`-th attempt (1-based) failed with a 5xx.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_cap)
    }
}

/// Posts run reports to a Slack incoming webhook; implements the core's [`Notifier`].
pub struct SlackNotifier {
    webhook: SecretString,
    client: reqwest::Client,
    options: SlackOptions,
}

impl fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackNotifier")
            .field("webhook", &"[redacted]")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// How one attempt went, when it did not succeed.
enum Attempt {
    /// Final: return this error.
    Fatal(PortError),
    /// Worth another attempt, after Slack's `Retry-After` if it gave one.
    Again {
        what: String,
        retry_after: Option<Duration>,
    },
}

impl SlackNotifier {
    /// A notifier posting to `webhook` (read by the caller from SSM, Secrets Manager or the
    /// environment) with the default [`SlackOptions`].
    ///
    /// The URL must be `https`, or `http` to a loopback address (a local sink in tests);
    /// `Invalid` otherwise, with a message that does not repeat it.
    pub fn new(webhook: SecretString) -> PortResult<Self> {
        Self::with_options(webhook, SlackOptions::default())
    }

    /// A notifier with these retry options.
    pub fn with_options(webhook: SecretString, options: SlackOptions) -> PortResult<Self> {
        let url = reqwest::Url::parse(webhook.expose_secret()).map_err(|_| {
            PortError::new(
                PortErrorKind::Invalid,
                "the Slack webhook URL is not a valid URL",
            )
        })?;
        let loopback = url.host_str().is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(PortError::new(
                PortErrorKind::Invalid,
                "the Slack webhook URL must use https (http only to a loopback address)",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(options.request_timeout)
            // A webhook does not redirect; never send the report (or the URL) elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keyrotor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| {
                PortError::new(
                    PortErrorKind::Failed,
                    "could not set up an HTTP client for Slack",
                )
            })?;
        Ok(Self {
            webhook,
            client,
            options,
        })
    }

    /// The retry options.
    pub fn options(&self) -> &SlackOptions {
        &self.options
    }

    /// Posts one message (a [`render`] result, or any Slack payload), retrying 429 and 5xx
    /// within the options' bounds.
    ///
    /// Errors: `Invalid` (400: `invalid_payload`, `no_text`, …), `Unauthorized` (401),
    /// `Forbidden` (403: `action_prohibited`), `NotFound` (404: `channel_not_found`,
    /// `no_service`; 410: `channel_is_archived`), `Retryable` when 429s, 5xx or failed
    /// connections outlasted the attempts or the deadline, `Failed` for anything else. The
    /// message is one sentence naming the HTTP status and Slack's code.
    pub async fn post(&self, payload: &Value) -> PortResult<()> {
        let body = serde_json::to_vec(payload).map_err(|_| {
            PortError::new(
                PortErrorKind::Invalid,
                "the Slack message could not be encoded as JSON",
            )
        })?;
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (what, retry_after) = match self.attempt(&body).await {
                Ok(()) => {
                    tracing::info!(attempt, "slack notification posted");
                    return Ok(());
                }
                Err(Attempt::Fatal(e)) => {
                    tracing::warn!(attempt, error = %e.message, "slack notification refused");
                    return Err(e);
                }
                Err(Attempt::Again { what, retry_after }) => (what, retry_after),
            };
            let wait = retry_after.map_or_else(
                || self.options.backoff(attempt),
                |d| d.min(self.options.retry_after_cap),
            );
            let elapsed = started.elapsed();
            if attempt >= self.options.max_attempts.max(1) || elapsed + wait > self.options.deadline
            {
                let tries = if attempt == 1 {
                    "on the only attempt".to_owned()
                } else {
                    format!("on the last of {attempt} attempts")
                };
                let e = PortError::new(
                    PortErrorKind::Retryable,
                    format!(
                        "{what} {tries}; gave up after {:.1} s",
                        elapsed.as_secs_f64()
                    ),
                );
                tracing::warn!(attempt, error = %e.message, "slack notification gave up");
                return Err(e);
            }
            tracing::warn!(
                attempt,
                wait_ms = wait.as_millis() as u64,
                "{what}; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Checks the webhook without posting a message: one POST of an empty JSON object, which
    /// Slack never shows. A live webhook refuses it as a message (`400 no_text` or
    /// `400 invalid_payload`); a disabled, removed or mistyped one answers `404 no_service`,
    /// `403 invalid_token`, `410 channel_is_archived`, ….
    ///
    /// `Ok(Valid)` for the first, an error naming the problem and its fix for the second
    /// (`NotFound`, `Forbidden`, …; `Retryable` when Slack could not be reached), and
    /// `Ok(Unverifiable)` for any other answer (429, 5xx, an unexpected body).
    pub async fn probe(&self) -> PortResult<WebhookProbe> {
        let response = self
            .client
            .post(self.webhook.expose_secret())
            .header(CONTENT_TYPE, "application/json")
            .body("{}")
            .send()
            .await
            .map_err(|e| match self.transport(&e) {
                Attempt::Again { what, .. } | Attempt::Fatal(PortError { message: what, .. }) => {
                    PortError::new(PortErrorKind::Retryable, what)
                }
            })?;
        let status = response.status();
        let answer = response.text().await.unwrap_or_default();
        let code = slack_code(&answer);
        let n = status.as_u16();
        match (n, code) {
            (400, Some("no_text" | "invalid_payload")) => Ok(WebhookProbe::Valid),
            (401 | 403 | 404 | 410, Some(c)) => {
                let kind = match n {
                    401 => PortErrorKind::Unauthorized,
                    403 => PortErrorKind::Forbidden,
                    _ => PortErrorKind::NotFound,
                };
                let message = match meaning(c) {
                    Some(m) => format!("Slack answered the webhook with HTTP {n} {c}: {m}"),
                    None => format!("Slack answered the webhook with HTTP {n} {c}"),
                };
                Err(PortError::new(kind, message))
            }
            (401 | 403 | 404 | 410, None) => Err(PortError::new(
                PortErrorKind::NotFound,
                format!(
                    "the webhook URL answered HTTP {n} and not as Slack does: it is not a Slack incoming webhook, or no longer one"
                ),
            )),
            _ => Ok(WebhookProbe::Unverifiable(format!(
                "the webhook answered an empty message with HTTP {n} {}, which tells neither way",
                code.unwrap_or("and an unexpected body")
            ))),
        }
    }

    async fn attempt(&self, body: &[u8]) -> Result<(), Attempt> {
        let response = self
            .client
            .post(self.webhook.expose_secret())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let answer = response.text().await.map_err(|e| self.transport(&e))?;
        let code = slack_code(&answer);
        if status.is_success() && answer.trim() == "ok" {
            return Ok(());
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Attempt::Again {
                what: "Slack rate-limited the webhook (HTTP 429)".into(),
                retry_after,
            });
        }
        if status.is_server_error() {
            let what = match code {
                Some(c) => format!("Slack answered HTTP {} {c}", status.as_u16()),
                None => format!("Slack answered HTTP {}", status.as_u16()),
            };
            return Err(Attempt::Again {
                what,
                retry_after: None,
            });
        }
        Err(Attempt::Fatal(refusal(status, code)))
    }

    /// A failed connection, in keyrotor's words: reqwest's own wording carries the URL.
    fn transport(&self, e: &reqwest::Error) -> Attempt {
        let what = if e.is_timeout() {
            format!(
                "Slack did not answer within {:.1} s",
                self.options.request_timeout.as_secs_f64()
            )
        } else if e.is_connect() {
            "could not connect to Slack".to_owned()
        } else {
            "the connection to Slack failed before an answer arrived".to_owned()
        };
        Attempt::Again {
            what,
            retry_after: None,
        }
    }
}

/// Slack's error code, if the body is one (`invalid_payload`); anything else is not echoed.
fn slack_code(body: &str) -> Option<&str> {
    let b = body.trim();
    let token = (1..=64).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    token.then_some(b)
}

/// What a code means, and what to do about it.
fn meaning(code: &str) -> Option<&'static str> {
    Some(match code {
        "invalid_payload" => "the message was not JSON Slack accepts",
        "no_text" => "the message had no text",
        "invalid_blocks" | "invalid_blocks_format" => "Slack did not accept the message's blocks",
        "too_many_attachments" => "the message had too many attachments",
        "action_prohibited" => "a workspace admin has restricted posting with this webhook",
        "posting_to_general_channel_denied" => "only admins may post to the webhook's channel",
        "channel_not_found" => "the webhook's channel no longer exists; create a new webhook",
        "channel_is_archived" => {
            "the webhook's channel is archived; unarchive it or create a new webhook"
        }
        "no_service" | "no_service_id" | "invalid_token" | "invalid_auth" => {
            "the webhook was disabled or removed; create a new one and store its URL where keyrotor reads it"
        }
        "no_team" | "team_disabled" => "the webhook's workspace is gone or disabled",
        "user_not_found" => "the webhook's owner no longer exists; create a new webhook",
        _ => return None,
    })
}

fn refusal(status: StatusCode, code: Option<&str>) -> PortError {
    let kind = match status.as_u16() {
        400 => PortErrorKind::Invalid,
        401 => PortErrorKind::Unauthorized,
        403 => PortErrorKind::Forbidden,
        404 | 410 => PortErrorKind::NotFound,
        _ => PortErrorKind::Failed,
    };
    let n = status.as_u16();
    let message = match (code, code.and_then(meaning)) {
        _ if status.is_success() => format!(
            "Slack answered HTTP {n} {} instead of ok, so the notification may not have been posted",
            code.unwrap_or("with an unexpected body")
        ),
        (Some(c), Some(m)) => format!("Slack refused the notification with HTTP {n} {c}: {m}"),
        (Some(c), None) => format!("Slack refused the notification with HTTP {n} {c}"),
        (None, _) => format!("Slack refused the notification with HTTP {n} and an unexpected body"),
    };
    PortError::new(kind, message)
}

#[async_trait]
impl Notifier for SlackNotifier {
    async fn notify(&self, report: &RunReport) -> PortResult<()> {
        self.post(&render(report)).await
    }

    async fn probe(&self) -> PortResult<WebhookProbe> {
        SlackNotifier::probe(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let o = SlackOptions {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(500),
            ..SlackOptions::default()
        };
        assert_eq!(o.backoff(1), Duration::from_millis(100));
        assert_eq!(o.backoff(2), Duration::from_millis(200));
        assert_eq!(o.backoff(3), Duration::from_millis(400));
        assert_eq!(o.backoff(4), Duration::from_millis(500));
        assert_eq!(o.backoff(60), Duration::from_millis(500));
    }

    #[test]
    fn only_code_shaped_bodies_are_echoed() {
        assert_eq!(slack_code("invalid_payload\n"), Some("invalid_payload"));
        assert_eq!(slack_code("<html>Bad Gateway</html>"), None);
        assert_eq!(slack_code(""), None);
        assert_eq!(slack_code(&"a".repeat(65)), None);
    }

    #[test]
    fn a_refusal_is_one_sentence_naming_status_and_code() {
        let e = refusal(StatusCode::NOT_FOUND, Some("no_service"));
        assert_eq!(e.kind, PortErrorKind::NotFound);
        assert!(
            e.message
                .starts_with("Slack refused the notification with HTTP 404 no_service: ")
        );
        assert_eq!(
            refusal(StatusCode::BAD_REQUEST, Some("invalid_payload")).kind,
            PortErrorKind::Invalid
        );
        assert_eq!(
            refusal(StatusCode::FORBIDDEN, Some("action_prohibited")).kind,
            PortErrorKind::Forbidden
        );
        assert_eq!(
            refusal(StatusCode::GONE, Some("channel_is_archived")).kind,
            PortErrorKind::NotFound
        );
        let e = refusal(StatusCode::IM_A_TEAPOT, None);
        assert_eq!(
            e.message,
            "Slack refused the notification with HTTP 418 and an unexpected body"
        );
    }

    #[test]
    fn only_https_or_loopback_http_is_accepted() {
        let ok = |u: &str| SlackNotifier::new(SecretString::from(u.to_owned())).is_ok();
        assert!(ok("https://hooks.slack.com/services/T0/B0/x"));
        assert!(ok("http://127.0.0.1:9/services/T0/B0/x"));
        assert!(ok("http://localhost:9/services/T0/B0/x"));
        assert!(!ok("http://hooks.slack.com/services/T0/B0/x"));
        assert!(!ok("not a url"));
    }
}
