//! One request to Azure DevOps, retried where a later attempt may work, and its answer turned
//! into JSON or into a [`PortError`] whose message names no secret.

use std::error::Error as _;
use std::time::Duration;

use base64::Engine as _;
use keyrotor_core::ports::{PortError, PortErrorKind, PortResult};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

use crate::AdoOptions;

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
}

/// The outcome of one attempt.
enum Attempt {
    Done(Answer),
    Fatal(PortError),
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Sends requests with the PAT and retries.
pub(crate) struct Transport {
    http: reqwest::Client,
    pat: SecretString,
    pub(crate) options: AdoOptions,
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
        Ok(Self { http, pat, options })
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

    /// Sends one request, retrying 429, 5xx, timeouts and connection failures within the
    /// options' bounds. `secrets` are scrubbed from any message, besides the PAT.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&[u8]>,
        secrets: &[&str],
    ) -> PortResult<Answer> {
        let what = format!("{method} {}", url.path());
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (reason, retry_after) = match self.attempt(&method, url, body, &what).await {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Fatal(e) => return Err(self.scrubbed(e, secrets)),
                Attempt::Retry {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            let delay = retry_delay(&self.options, attempts, retry_after);
            let give_up = attempts >= self.options.max_attempts.max(1)
                || started.elapsed() + delay > self.options.max_total;
            if give_up {
                let e = PortError::new(
                    PortErrorKind::Retryable,
                    format!(
                        "Azure DevOps kept failing {what}: {reason} (gave up after {attempts} \
                         attempt{} in {:.1} s)",
                        if attempts == 1 { "" } else { "s" },
                        started.elapsed().as_secs_f64()
                    ),
                );
                return Err(self.scrubbed(e, secrets));
            }
            tracing::warn!(
                request = %what,
                attempt = attempts,
                retry_in_ms = delay.as_millis() as u64,
                "Azure DevOps: {}; retrying",
                self.scrub(&reason, secrets)
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        what: &str,
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
            .timeout(self.options.request_timeout);
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
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
        if let Some(delay) = headers
            .get("x-ratelimit-delay")
            .and_then(|v| v.to_str().ok())
        {
            tracing::warn!(
                request = %what,
                "Azure DevOps is rate limiting this identity: the request was delayed {delay} s"
            );
        }
        classify(status, &headers, &bytes, what)
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

/// How long to wait before the next attempt, after `failures` failed ones: the server's
/// `Retry-After` (capped by `max_retry_after`), else `backoff_base · 2^(failures-1)` capped by
/// `backoff_cap`.
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

/// Turns one HTTP answer into JSON, an error, or a reason to retry.
fn classify(status: StatusCode, headers: &HeaderMap, bytes: &[u8], what: &str) -> Attempt {
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

    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(86_400.0)));
        return Attempt::Retry {
            reason: format!("HTTP {code}{server_message}"),
            retry_after,
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
            });
        }
        return match parsed {
            Some(body) => Attempt::Done(Answer {
                body,
                continuation: continuation(headers),
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
    let kind = if e.is_timeout() {
        "the request timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer was cut off"
    } else {
        "the request failed"
    };
    let mut cause = None;
    let mut source = e.source();
    while let Some(s) = source {
        cause = Some(s.to_string());
        source = s.source();
    }
    match cause {
        Some(c) if !c.contains("://") => format!("{kind} ({c})"),
        _ => kind.to_owned(),
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
    fn a_429_is_retried_after_the_seconds_it_names() {
        let h = headers(&[("retry-after", "12"), ("content-type", "application/json")]);
        match classify(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"message":"TF400733: blocked"}"#,
            "GET /x",
        ) {
            Attempt::Retry {
                reason,
                retry_after,
            } => {
                assert_eq!(retry_after, Some(Duration::from_secs(12)));
                assert!(reason.contains("TF400733"), "{reason}");
            }
            _ => panic!("429 must be retried"),
        }
    }

    #[test]
    fn an_html_page_with_200_is_an_unauthorized_pat() {
        let h = headers(&[("content-type", "text/html; charset=utf-8")]);
        match classify(StatusCode::OK, &h, b"<html>Sign in</html>", "GET /x") {
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
