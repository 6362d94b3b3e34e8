//! Pacing: how one [`AdoClient`](crate::AdoClient) keeps within Azure DevOps' rate limit.
//!
//! Azure DevOps allows each identity (here: the PAT) 200 TSTUs in a sliding five-minute window.
//! Past that it *delays* requests (answered normally, with `X-RateLimit-Delay`,
//! `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset`: the epoch second at which the identity's
//! usage would be back at zero if it stopped now); further on it *refuses* them: HTTP 429
//! `TF400733` with `Retry-After`.
//!
//! Every request a client sends passes one [`Pacer`], shared by all of them: the CLI rotates
//! several targets at once through one client per run, so what one request learns holds every
//! other one back too. The policy, in full:
//!
//! 1. **Refused (429).** Nobody sends before its `Retry-After` has passed (without one: before
//!    `X-RateLimit-Reset`; without either: 1 s). Requests in flight or queued wait too, instead of
//!    each spending its own attempts on the same refusal.
//! 2. **Budget spent** (a delayed answer, or `X-RateLimit-Remaining: 0`). Nobody sends before
//!    `X-RateLimit-Reset` (without one: for as long as the request was delayed), and never
//!    sooner than 1 s. The client spends the undelayed budget at full speed, then waits for it
//!    to come back; it never pushes on through the delays towards the refusals.
//! 3. **One at a time while throttled.** While the latest answer said either of the above, one
//!    request is sent at a time: after a pause one request goes first, and only an answer
//!    without a rate-limit signal lets the others go at once again.
//!
//! A pause is capped at `AdoOptions::max_retry_after` (310 s by default: the five-minute window
//! and a margin). Waiting is not a failed attempt: it is bounded on its own, by
//! `AdoOptions::rate_limit_max_wait` per request (15 minutes by default), by
//! `AdoOptions::max_rate_limited_attempts` refusals per request, and by `AdoOptions::deadline`.
//! A wait that would end past one of these is not started: the request fails at once as
//! retryable. The arithmetic is [`RateSignal::pause`], a pure function.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use tokio::time::Instant;

/// The shortest pause after a spent budget: Azure DevOps' reset times are whole seconds, and a
/// clock that runs ahead of the service's must not turn the pause into none.
pub(crate) const MIN_PAUSE: Duration = Duration::from_secs(1);

/// What one answer says about the identity's rate limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RateSignal {
    /// HTTP 429.
    pub(crate) refused: bool,
    /// `Retry-After`, in seconds.
    pub(crate) retry_after: Option<Duration>,
    /// `X-RateLimit-Delay`: how long the service held this request.
    pub(crate) delay: Option<Duration>,
    /// `X-RateLimit-Remaining`: TSTUs left before requests are delayed.
    pub(crate) remaining: Option<f64>,
    /// `X-RateLimit-Reset`, as time since the Unix epoch.
    pub(crate) reset: Option<Duration>,
}

/// A header as a non-negative, finite number of seconds (at most a day).
fn seconds(headers: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<Duration> {
    number(headers, name)
        .filter(|s| *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

fn number(headers: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<f64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|n| n.is_finite())
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Azure DevOps).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    seconds(headers, RETRY_AFTER)
}

impl RateSignal {
    /// Reads the answer's status and rate-limit headers.
    pub(crate) fn read(status: StatusCode, headers: &HeaderMap) -> Self {
        Self {
            refused: status == StatusCode::TOO_MANY_REQUESTS,
            retry_after: retry_after(headers),
            delay: seconds(headers, "x-ratelimit-delay"),
            remaining: number(headers, "x-ratelimit-remaining"),
            reset: number(headers, "x-ratelimit-reset")
                .filter(|s| *s >= 0.0 && *s < 1e12)
                .map(Duration::from_secs_f64),
        }
    }

    /// The identity's budget is spent: the request was refused or delayed, or nothing remains.
    pub(crate) fn spent(&self) -> bool {
        self.refused || self.delay.is_some() || self.remaining.is_some_and(|r| r <= 0.0)
    }

    /// How long every request must be held back after this answer, `now` being the time since
    /// the Unix epoch; `None` when the answer asks for no pause. Capped at `cap`.
    pub(crate) fn pause(&self, now: Duration, cap: Duration) -> Option<Duration> {
        if !self.spent() {
            return None;
        }
        let until_reset = self.reset.map(|r| r.saturating_sub(now));
        let pause = if self.refused {
            // The service said how long: honour it exactly, zero included.
            match self.retry_after {
                Some(wait) => wait,
                None => until_reset.unwrap_or(MIN_PAUSE).max(MIN_PAUSE),
            }
        } else {
            until_reset
                .or(self.delay)
                .unwrap_or(MIN_PAUSE)
                .max(MIN_PAUSE)
        };
        Some(pause.min(cap))
    }

    /// The pause's reason, for the log.
    fn describe(&self) -> String {
        if self.refused {
            match self.retry_after {
                Some(r) => format!("HTTP 429 with Retry-After {} s", r.as_secs_f64()),
                None => "HTTP 429".to_owned(),
            }
        } else if let Some(d) = self.delay {
            format!(
                "a request was delayed {:.3} s: this PAT's budget is spent until it resets",
                d.as_secs_f64()
            )
        } else {
            "X-RateLimit-Remaining is 0: this PAT's budget is spent until it resets".to_owned()
        }
    }
}

/// What the pacer knows.
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    /// No request is sent before this.
    until: Option<Instant>,
    /// The latest answer carried a rate-limit signal: one request at a time.
    throttled: bool,
}

/// The pacing state one client shares between all its requests.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    hold: Mutex<Hold>,
    /// Held by the one request in flight while throttled (fair: first come, first served).
    gate: tokio::sync::Mutex<()>,
}

/// Leave to send one request: keep it until its answer has been [`Pacer::observe`]d.
pub(crate) struct Admission<'a> {
    _turn: Option<tokio::sync::MutexGuard<'a, ()>>,
    /// How long the request was held back.
    pub(crate) waited: Duration,
}

/// A request that would have had to wait past the latest instant it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong {
    /// The pause still ahead; `None` when the request was queued behind others for its turn.
    pub(crate) pause: Option<Duration>,
}

impl Pacer {
    fn hold(&self) -> MutexGuard<'_, Hold> {
        // Plain data: a panic elsewhere while it was held leaves nothing half-done.
        self.hold.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pause still ahead of every request, if any.
    pub(crate) fn pause_left(&self) -> Option<Duration> {
        let until = self.hold().until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Waits until a request may be sent: past every pause, and its turn when throttled. Fails
    /// without waiting when a pause would end after `latest`, and when the turn does not come
    /// by then.
    pub(crate) async fn admit(&self, latest: Instant) -> Result<Admission<'_>, TooLong> {
        let started = Instant::now();
        let mut turn = None;
        loop {
            let hold = *self.hold();
            if hold.throttled && turn.is_none() {
                let guard = tokio::time::timeout_at(latest, self.gate.lock())
                    .await
                    .map_err(|_| TooLong { pause: None })?;
                turn = Some(guard);
                // The pause may have moved while this request waited for its turn.
                continue;
            }
            let now = Instant::now();
            match hold.until {
                Some(until) if until > now => {
                    if until > latest {
                        return Err(TooLong {
                            pause: Some(until - now),
                        });
                    }
                    tokio::time::sleep_until(until).await;
                }
                _ => {
                    return Ok(Admission {
                        _turn: turn,
                        waited: started.elapsed(),
                    });
                }
            }
        }
    }

    /// Takes in what an answer to `what` said (before its [`Admission`] is dropped).
    pub(crate) fn observe(&self, signal: &RateSignal, cap: Duration, what: &str) {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let pause = signal.pause(since_epoch, cap);
        let mut hold = self.hold();
        hold.throttled = signal.spent();
        let Some(pause) = pause else {
            return;
        };
        let until = Instant::now() + pause;
        if hold.until.is_some_and(|u| u >= until) {
            return;
        }
        hold.until = Some(until);
        drop(hold);
        if pause >= MIN_PAUSE {
            tracing::warn!(
                request = %what,
                pause_ms = pause.as_millis() as u64,
                "Azure DevOps rate limit: holding every request back for {:.1} s ({})",
                pause.as_secs_f64(),
                signal.describe()
            );
        } else {
            tracing::debug!(
                request = %what,
                pause_ms = pause.as_millis() as u64,
                "Azure DevOps rate limit: {}",
                signal.describe()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    const CAP: Duration = Duration::from_secs(310);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// 2026-11-26 12:00:00 UTC, as time since the epoch.
    const NOW: u64 = 1_795_694_400;

    #[test]
    fn an_answer_within_the_budget_asks_for_no_pause() {
        let s = RateSignal::read(StatusCode::OK, &HeaderMap::new());
        assert!(!s.spent());
        assert_eq!(s.pause(secs(NOW), CAP), None);
        // Some budget left is no reason to wait either.
        let s = RateSignal::read(
            StatusCode::OK,
            &headers(&[
                ("x-ratelimit-remaining", "12"),
                ("x-ratelimit-reset", &(NOW + 200).to_string()),
            ]),
        );
        assert!(!s.spent());
        assert_eq!(s.pause(secs(NOW), CAP), None);
    }

    #[test]
    fn a_delayed_answer_pauses_until_the_reset() {
        let s = RateSignal::read(
            StatusCode::OK,
            &headers(&[
                ("x-ratelimit-delay", "0.500"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-limit", "200"),
                ("x-ratelimit-reset", &(NOW + 297).to_string()),
            ]),
        );
        assert!(s.spent());
        assert_eq!(s.delay, Some(Duration::from_millis(500)));
        assert_eq!(s.pause(secs(NOW), CAP), Some(secs(297)));
        // Measured from a clock half a second later.
        assert_eq!(
            s.pause(secs(NOW) + Duration::from_millis(500), CAP),
            Some(Duration::from_millis(296_500))
        );
    }

    #[test]
    fn nothing_remaining_pauses_like_a_delay() {
        let s = RateSignal::read(
            StatusCode::OK,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &(NOW + 40).to_string()),
            ]),
        );
        assert_eq!(s.pause(secs(NOW), CAP), Some(secs(40)));
    }

    #[test]
    fn a_delay_without_a_reset_pauses_as_long_as_the_delay_and_at_least_a_second() {
        let delayed =
            |d: &str| RateSignal::read(StatusCode::OK, &headers(&[("x-ratelimit-delay", d)]));
        assert_eq!(
            delayed("4.25").pause(secs(NOW), CAP),
            Some(Duration::from_millis(4250))
        );
        assert_eq!(delayed("0.000").pause(secs(NOW), CAP), Some(MIN_PAUSE));
    }

    #[test]
    fn a_reset_in_the_past_still_pauses_a_second() {
        // Our clock runs ahead of the service's.
        let s = RateSignal::read(
            StatusCode::OK,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &(NOW - 3).to_string()),
            ]),
        );
        assert_eq!(s.pause(secs(NOW), CAP), Some(MIN_PAUSE));
    }

    #[test]
    fn a_refusal_honours_retry_after_in_full_up_to_the_cap() {
        let refused = |pairs: &[(&'static str, &str)]| {
            RateSignal::read(StatusCode::TOO_MANY_REQUESTS, &headers(pairs))
        };
        let reset = (NOW + 280).to_string();
        // Retry-After wins over the reset: it is the service's answer to this very request.
        let s = refused(&[
            ("retry-after", "245"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &reset),
        ]);
        assert!(s.spent());
        assert_eq!(s.pause(secs(NOW), CAP), Some(secs(245)));
        // The real window is 300 s; the cap keeps a bogus answer from stalling a run.
        assert_eq!(
            refused(&[("retry-after", "3600")]).pause(secs(NOW), CAP),
            Some(CAP)
        );
        // Zero means zero.
        assert_eq!(
            refused(&[("retry-after", "0")]).pause(secs(NOW), CAP),
            Some(Duration::ZERO)
        );
        // Without Retry-After: the reset, else a second.
        assert_eq!(
            refused(&[("x-ratelimit-reset", &reset)]).pause(secs(NOW), CAP),
            Some(secs(280))
        );
        assert_eq!(refused(&[]).pause(secs(NOW), CAP), Some(MIN_PAUSE));
    }

    #[test]
    fn unreadable_headers_are_ignored() {
        let s = RateSignal::read(
            StatusCode::OK,
            &headers(&[
                ("x-ratelimit-remaining", "lots"),
                ("x-ratelimit-reset", "-5"),
                ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ]),
        );
        assert_eq!(s, RateSignal::default());
        assert_eq!(s.pause(secs(NOW), CAP), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_back_every_request_and_throttling_lets_one_go_at_a_time() {
        let pacer = Pacer::default();
        let latest = Instant::now() + secs(3600);
        // No signal yet: admitted at once, without taking a turn.
        let a = pacer.admit(latest).await.unwrap();
        assert_eq!(a.waited, Duration::ZERO);
        drop(a);

        let refused = RateSignal {
            refused: true,
            retry_after: Some(secs(30)),
            ..RateSignal::default()
        };
        pacer.observe(&refused, CAP, "GET /x");
        assert_eq!(pacer.pause_left(), Some(secs(30)));

        // Throttled: the first request waits out the pause and holds the turn…
        let t0 = Instant::now();
        let first = pacer.admit(latest).await.unwrap();
        assert_eq!(Instant::now() - t0, secs(30));
        assert_eq!(first.waited, secs(30));
        // …so a second one cannot go until the first one's answer is in.
        assert!(
            tokio::time::timeout(secs(60), pacer.admit(latest))
                .await
                .is_err(),
            "a second request went while the first was in flight"
        );
        // The answer is clean: throttling ends, everyone goes at once.
        pacer.observe(&RateSignal::default(), CAP, "GET /x");
        drop(first);
        let b = pacer.admit(latest).await.unwrap();
        let c = pacer.admit(latest).await.unwrap();
        drop((b, c));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_past_the_latest_instant_is_refused_without_waiting() {
        let pacer = Pacer::default();
        let delayed = RateSignal {
            delay: Some(Duration::from_millis(500)),
            remaining: Some(0.0),
            reset: Some(SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + secs(250)),
            ..RateSignal::default()
        };
        pacer.observe(&delayed, CAP, "PUT /x");
        let left = pacer.pause_left().unwrap();
        assert!(left > secs(248) && left <= secs(250), "{left:?}");
        let t0 = Instant::now();
        let e = pacer.admit(Instant::now() + secs(60)).await.err().unwrap();
        assert_eq!(Instant::now(), t0, "no time was spent waiting");
        assert!(e.pause.is_some_and(|p| p > secs(248)), "{e:?}");
        // A shorter pause never shortens a longer one already set.
        pacer.observe(
            &RateSignal {
                refused: true,
                retry_after: Some(secs(5)),
                ..RateSignal::default()
            },
            CAP,
            "GET /y",
        );
        assert!(pacer.pause_left().unwrap() > secs(248));
    }
}
