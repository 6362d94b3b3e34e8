//! One request to Azure DevOps, paced for its rate limit ([`crate::pacing`]), retried where a
//! later attempt may work, and its answer turned into JSON or into a [`PortError`] whose
//! message names no secret.
//!
//! Two budgets bound a request, kept apart so that waiting for the rate limit never uses up the
//! retries of real failures: failures (5xx, 408, timeouts, dropped connections) get
//! `max_attempts` attempts within `max_total`, not counting time held back by the rate limit;
//! refusals (429) get `max_rate_limited_attempts`, each waited out in full, and all waiting for
//! the rate limit together at most `rate_limit_max_wait`. `deadline`, when set, bounds both.

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use keyrotor_core::ports::{PortError, PortErrorKind, PortResult};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

use crate::AdoOptions;
use crate::pacing::{self, Pacer, RateSignal, TooLong};

/// What to check when Azure DevOps does not accept the PAT.
/// A clause, so every error stays one sentence.
const PAT_HINT: &str = "; check that the PAT is correct, has not expired or been revoked, is \
     valid for this organization, and has the scope 'Service Connections (Read, query & manage)'";

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The JSON body (`Null` for an empty one).
    pub(crate) body: Value,
    /// `x-ms-continuationtoken`, when there is more to list.
    pub(crate) continuation: Option<String>,
    /// When the attempt that got this answer went out: what it shows is no older than this.
    pub(crate) sent: Instant,
}

/// What [`Transport::send_while_fresh`] did.
#[derive(Debug)]
pub(crate) enum Sent {
    /// Sent, and answered.
    Answered(Answer),
    /// Not sent: by the time the request could go out (after waiting for the rate limit, or for
    /// a retry), what it was made from was older than it may be.
    Stale,
}

/// The outcome of one attempt.
enum Attempt {
    Done(Answer),
    Fatal(PortError),
    /// Refused for the rate limit (429); the pause is already on the pacer.
    RateLimited {
        reason: String,
    },
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Sends requests with the PAT, paced and retried.
pub(crate) struct Transport {
    http: reqwest::Client,
    pat: SecretString,
    pub(crate) options: AdoOptions,
    /// Shared by every request of this client (and so by every target of a run).
    pub(crate) pacer: Pacer,
}

impl Transport {
    pub(crate) fn new(pat: SecretString, options: AdoOptions) -> PortResult<Self> {
        let http = reqwest::Client::builder()
            // A redirect is Azure DevOps sending us to its sign-in page: see it, never follow.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("keyrotor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| {
                PortError::new(
                    PortErrorKind::Failed,
                    "could not set up the HTTP client for Azure DevOps (TLS initialisation failed)",
                )
            })?;
        Ok(Self {
            http,
            pat,
            options,
            pacer: Pacer::default(),
        })
    }

    /// `Authorization: Basic base64(":" + PAT)`, marked sensitive so that no debug output of a
    /// request shows it.
    fn authorization(&self) -> PortResult<HeaderValue> {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!(":{}", self.pat.expose_secret()));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| {
            PortError::new(
                PortErrorKind::Invalid,
                "the PAT cannot be sent in an HTTP header",
            )
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Sends one request: held back while the rate limit asks for it, then retried on 429, 5xx,
    /// timeouts and connection failures within the options' bounds (see the module docs).
    /// `secrets` are scrubbed from any message, besides the PAT.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&[u8]>,
        secrets: &[&str],
    ) -> PortResult<Answer> {
        match self.send_inner(method, url, body, secrets, None).await? {
            Sent::Answered(answer) => Ok(answer),
            // Without a bound nothing is ever stale: this arm is never taken.
            Sent::Stale => Err(PortError::new(
                PortErrorKind::Failed,
                "a request without a freshness bound was reported stale",
            )),
        }
    }

    /// [`send`](Self::send), but no attempt goes out after `fresh_until`: checked at the last
    /// moment, once the rate limit lets the attempt go (and before every retry), and then
    /// [`Sent::Stale`] without sending. For a PUT of an object read earlier: the object must not
    /// be older than that when it reaches the service.
    pub(crate) async fn send_while_fresh(
        &self,
        method: Method,
        url: &Url,
        body: &[u8],
        secrets: &[&str],
        fresh_until: Instant,
    ) -> PortResult<Sent> {
        self.send_inner(method, url, Some(body), secrets, Some(fresh_until))
            .await
    }

    async fn send_inner(
        &self,
        method: Method,
        url: &Url,
        body: Option<&[u8]>,
        secrets: &[&str],
        fresh_until: Option<Instant>,
    ) -> PortResult<Sent> {
        let what = format!("{method} {}", url.path());
        let o = &self.options;
        let started = Instant::now();
        let deadline = o.deadline.map(instant_of);
        let mut failures = 0u32;
        let mut refusals = 0u32;
        // Time spent held back by the rate limit: not part of the failures' budget.
        let mut held = Duration::ZERO;
        let mut last_reason: Option<String> = None;
        let give_up = |why: String, reason: Option<&str>, attempts: u32| {
            self.scrubbed(gave_up(&what, reason, attempts, started, &why), secrets)
        };
        loop {
            // Wait for the rate limit, no longer than its budget and the deadline allow.
            let rate_budget_end = Instant::now() + o.rate_limit_max_wait.saturating_sub(held);
            let latest = deadline.map_or(rate_budget_end, |d| d.min(rate_budget_end));
            let admission = match self.pacer.admit(latest).await {
                Ok(a) => a,
                Err(TooLong { pause }) => {
                    let limit = if deadline.is_some_and(|d| d < rate_budget_end) {
                        "the deadline".to_owned()
                    } else {
                        format!(
                            "the {} s this client waits for the rate limit per request",
                            o.rate_limit_max_wait.as_secs()
                        )
                    };
                    let why = match pause {
                        Some(p) => format!(
                            ": its rate limit holds requests back for another {:.0} s, past {limit}",
                            p.as_secs_f64()
                        ),
                        None => format!(
                            ": its rate limit lets one request through at a time and this one's \
                             turn did not come before {limit}"
                        ),
                    };
                    return Err(give_up(why, last_reason.as_deref(), failures + refusals));
                }
            };
            held += admission.waited;
            if fresh_until.is_some_and(|f| Instant::now() > f) {
                // Its turn is given up with the admission: the caller reads again first.
                return Ok(Sent::Stale);
            }
            let timeout = match deadline {
                None => o.request_timeout,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(give_up(
                            ": the deadline has passed".to_owned(),
                            last_reason.as_deref(),
                            failures + refusals,
                        ));
                    }
                    o.request_timeout.min(left)
                }
            };
            let outcome = self.attempt(&method, url, body, &what, timeout).await;
            // The answer has been observed: the next request in line may go.
            drop(admission);
            match outcome {
                Attempt::Done(answer) => return Ok(Sent::Answered(answer)),
                Attempt::Fatal(e) => return Err(self.scrubbed(e, secrets)),
                Attempt::RateLimited { reason } => {
                    refusals += 1;
                    if refusals >= o.max_rate_limited_attempts.max(1) {
                        return Err(give_up(String::new(), Some(&reason), failures + refusals));
                    }
                    tracing::warn!(
                        request = %what,
                        refusals,
                        "Azure DevOps: {}; retrying once its rate limit allows",
                        self.scrub(&reason, secrets)
                    );
                    last_reason = Some(reason);
                }
                Attempt::Retry {
                    reason,
                    retry_after,
                } => {
                    failures += 1;
                    let delay = retry_delay(o, failures, retry_after);
                    let failing_for = started.elapsed().saturating_sub(held);
                    let past_deadline = deadline.is_some_and(|d| Instant::now() + delay > d);
                    if failures >= o.max_attempts.max(1)
                        || failing_for + delay > o.max_total
                        || past_deadline
                    {
                        return Err(give_up(String::new(), Some(&reason), failures + refusals));
                    }
                    tracing::warn!(
                        request = %what,
                        attempt = failures,
                        retry_in_ms = delay.as_millis() as u64,
                        "Azure DevOps: {}; retrying",
                        self.scrub(&reason, secrets)
                    );
                    last_reason = Some(reason);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        what: &str,
        timeout: Duration,
    ) -> Attempt {
        let auth = match self.authorization() {
            Ok(a) => a,
            Err(e) => return Attempt::Fatal(e),
        };
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .header(AUTHORIZATION, auth)
            .header("X-TFS-FedAuthRedirect", "Suppress")
            .header(ACCEPT, "application/json")
            .timeout(timeout);
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let sent = Instant::now();
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                return Attempt::Fatal(PortError::new(
                    PortErrorKind::Invalid,
                    format!("could not build the request {what}"),
                ));
            }
            Err(e) => {
                return Attempt::Retry {
                    reason: describe(&e),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Retry {
                    reason: describe(&e),
                    retry_after: None,
                };
            }
        };
        tracing::debug!(request = %what, status = status.as_u16(), "Azure DevOps answered");
        self.pacer.observe(
            &RateSignal::read(status, &headers),
            self.options.max_retry_after,
            what,
        );
        classify(status, &headers, &bytes, what, sent)
    }

    fn scrub(&self, text: &str, secrets: &[&str]) -> String {
        let mut out = text.to_owned();
        let pat = self.pat.expose_secret();
        for s in secrets.iter().copied().chain([pat]) {
            if !s.is_empty() {
                out = out.replace(s, "[redacted]");
            }
        }
        out
    }

    fn scrubbed(&self, e: PortError, secrets: &[&str]) -> PortError {
        PortError::new(e.kind, self.scrub(&e.message, secrets))
    }
}

/// How long to wait before the next attempt after `failures` failed ones (not 429: the pacer
/// handles those): the server's `Retry-After` (capped by `max_retry_after`), else
/// `backoff_base · 2^(failures-1)` capped by `backoff_cap`.
pub(crate) fn retry_delay(
    options: &AdoOptions,
    failures: u32,
    retry_after: Option<Duration>,
) -> Duration {
    match retry_after {
        Some(wait) => wait.min(options.max_retry_after),
        None => {
            let doublings = failures.saturating_sub(1).min(30);
            options
                .backoff_base
                .saturating_mul(1u32 << doublings)
                .min(options.backoff_cap)
        }
    }
}

/// The error of a request that is given up: retryable, since a later run may well succeed.
fn gave_up(
    what: &str,
    reason: Option<&str>,
    attempts: u32,
    started: Instant,
    why: &str,
) -> PortError {
    let elapsed = started.elapsed().as_secs_f64();
    let message = match reason {
        Some(reason) => format!(
            "Azure DevOps kept failing {what}: {reason} (gave up after {attempts} attempt{} in \
             {elapsed:.1} s{why})",
            if attempts == 1 { "" } else { "s" },
        ),
        None => format!("Azure DevOps: {what} was not sent (gave up after {elapsed:.1} s{why})"),
    };
    PortError::new(PortErrorKind::Retryable, message)
}

/// A wall-clock deadline as an instant of the (possibly paused) tokio clock; one that has
/// passed is now.
fn instant_of(deadline: SystemTime) -> Instant {
    let now = Instant::now();
    match deadline.duration_since(SystemTime::now()) {
        Ok(left) => now + left,
        Err(_) => now,
    }
}

/// Turns one HTTP answer into JSON, an error, or a reason to retry.
fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    bytes: &[u8],
    what: &str,
    sent: Instant,
) -> Attempt {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let json_type = content_type.starts_with("application/json") || content_type.contains("+json");
    let parsed: Option<Value> = if json_type || content_type.is_empty() {
        serde_json::from_slice(bytes).ok()
    } else {
        None
    };
    // Only the service's own `message` ever reaches an error: never a body we sent, never HTML.
    let server_message = parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str)
        .map(|m| format!(": {}", m.trim().trim_end_matches('.')))
        .unwrap_or_default();
    let code = status.as_u16();
    let fatal = |kind, message: String| Attempt::Fatal(PortError::new(kind, message));

    if status == StatusCode::TOO_MANY_REQUESTS {
        // How long to wait is the pacer's business (it has seen the headers already).
        return Attempt::RateLimited {
            reason: format!("HTTP {code}{server_message}"),
        };
    }
    if status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        return Attempt::Retry {
            reason: format!("HTTP {code}{server_message}"),
            retry_after: pacing::retry_after(headers),
        };
    }
    if status.is_redirection() {
        return fatal(
            PortErrorKind::Unauthorized,
            format!(
                "Azure DevOps did not accept the PAT: it redirected {what} to its sign-in page \
                 (HTTP {code}){PAT_HINT}"
            ),
        );
    }
    if status == StatusCode::NON_AUTHORITATIVE_INFORMATION {
        return fatal(
            PortErrorKind::Unauthorized,
            format!(
                "Azure DevOps did not accept the PAT: it answered {what} with its sign-in page \
                 (HTTP 203) instead of JSON{PAT_HINT}"
            ),
        );
    }
    if status.is_success() {
        if status == StatusCode::NO_CONTENT || bytes.iter().all(u8::is_ascii_whitespace) {
            return Attempt::Done(Answer {
                body: Value::Null,
                continuation: continuation(headers),
                sent,
            });
        }
        return match parsed {
            Some(body) => Attempt::Done(Answer {
                body,
                continuation: continuation(headers),
                sent,
            }),
            None => fatal(
                PortErrorKind::Unauthorized,
                format!(
                    "Azure DevOps did not accept the PAT: it answered {what} with something \
                     other than JSON (HTTP {code}, {}), which is how it shows a sign-in page\
                     {PAT_HINT}",
                    if content_type.is_empty() {
                        "no content type"
                    } else {
                        content_type.as_str()
                    }
                ),
            ),
        };
    }
    match status {
        StatusCode::UNAUTHORIZED => fatal(
            PortErrorKind::Unauthorized,
            format!(
                "Azure DevOps did not accept the PAT for {what} (HTTP 401{server_message}){PAT_HINT}"
            ),
        ),
        StatusCode::FORBIDDEN => fatal(
            PortErrorKind::Forbidden,
            format!("Azure DevOps refused {what} (HTTP 403){server_message}"),
        ),
        StatusCode::NOT_FOUND => fatal(
            PortErrorKind::NotFound,
            format!("Azure DevOps found nothing at {what} (HTTP 404){server_message}"),
        ),
        s if s.is_client_error() => fatal(
            PortErrorKind::Invalid,
            format!("Azure DevOps rejected {what} (HTTP {code}){server_message}"),
        ),
        _ => fatal(
            PortErrorKind::Failed,
            format!("Azure DevOps answered {what} with an unexpected HTTP {code}"),
        ),
    }
}

fn continuation(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-ms-continuationtoken")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|t| !t.is_empty())
}

/// A transport failure in our own words: reqwest's display carries the URL, so only the kind
/// and the innermost cause (such as "Connection refused") are used.
fn describe(e: &reqwest::Error) -> String {
    // The host (and port) it tried, never the URL: that names what to fix, and carries nothing
    // secret.
    let host = e
        .url()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_else(|| "Azure DevOps".to_owned());
    let kind = if e.is_timeout() {
        format!("the request to {host} timed out")
    } else if e.is_connect() {
        format!("could not connect to {host}")
    } else if e.is_body() || e.is_decode() {
        "the answer was cut off".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut cause = None;
    let mut source = e.source();
    while let Some(s) = source {
        cause = Some(s.to_string());
        source = s.source();
    }
    match cause {
        Some(c) if !c.contains("://") => format!("{kind} ({c})"),
        _ => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> AdoOptions {
        AdoOptions {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(700),
            max_retry_after: Duration::from_secs(60),
            ..AdoOptions::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let o = opts();
        let d: Vec<u128> = (1..=6)
            .map(|n| retry_delay(&o, n, None).as_millis())
            .collect();
        assert_eq!(d, vec![100, 200, 400, 700, 700, 700]);
        assert_eq!(retry_delay(&o, 1000, None), Duration::from_millis(700));
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        let o = opts();
        assert_eq!(
            retry_delay(&o, 1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry_delay(&o, 3, Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_429_is_rate_limited_and_its_retry_after_read_by_the_pacer() {
        let h = headers(&[("retry-after", "12"), ("content-type", "application/json")]);
        match classify(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"message":"TF400733: blocked"}"#,
            "GET /x",
            Instant::now(),
        ) {
            Attempt::RateLimited { reason } => {
                assert!(reason.contains("TF400733"), "{reason}");
            }
            _ => panic!("429 must be waited out and retried"),
        }
        let signal = RateSignal::read(StatusCode::TOO_MANY_REQUESTS, &h);
        assert!(signal.refused);
        assert_eq!(signal.retry_after, Some(Duration::from_secs(12)));
    }

    #[test]
    fn a_503_is_a_failure_whose_retry_after_is_honoured() {
        let h = headers(&[("retry-after", "3")]);
        match classify(
            StatusCode::SERVICE_UNAVAILABLE,
            &h,
            b"",
            "GET /x",
            Instant::now(),
        ) {
            Attempt::Retry { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
            }
            _ => panic!("503 must be retried as a failure"),
        }
    }

    #[test]
    fn a_deadline_becomes_an_instant_and_a_past_one_is_now() {
        let now = Instant::now();
        let later = instant_of(SystemTime::now() + Duration::from_secs(40));
        assert!(later >= now + Duration::from_secs(39), "{:?}", later - now);
        assert!(later <= Instant::now() + Duration::from_secs(40));
        let past = instant_of(SystemTime::now() - Duration::from_secs(5));
        assert!(past <= Instant::now() && past >= now);
    }

    #[test]
    fn an_html_page_with_200_is_an_unauthorized_pat() {
        let h = headers(&[("content-type", "text/html; charset=utf-8")]);
        match classify(
            StatusCode::OK,
            &h,
            b"<html>Sign in</html>",
            "GET /x",
            Instant::now(),
        ) {
            Attempt::Fatal(e) => {
                assert_eq!(e.kind, PortErrorKind::Unauthorized);
                assert!(e.message.contains("did not accept the PAT"), "{e}");
                assert!(!e.message.contains("<html>"), "{e}");
            }
            _ => panic!("an HTML answer is an authentication failure"),
        }
    }

    #[test]
    fn client_errors_map_to_what_the_caller_decides() {
        let h = headers(&[("content-type", "application/json")]);
        let kind = |s: u16| match classify(
            StatusCode::from_u16(s).unwrap(),
            &h,
            br#"{"message":"m"}"#,
            "GET /x",
            Instant::now(),
        ) {
            Attempt::Fatal(e) => e.kind,
            _ => panic!("{s} is not retried"),
        };
        assert_eq!(kind(401), PortErrorKind::Unauthorized);
        assert_eq!(kind(403), PortErrorKind::Forbidden);
        assert_eq!(kind(404), PortErrorKind::NotFound);
        assert_eq!(kind(400), PortErrorKind::Invalid);
        assert_eq!(kind(409), PortErrorKind::Invalid);
        assert_eq!(kind(302), PortErrorKind::Unauthorized);
    }
}
