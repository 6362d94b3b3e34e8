//! # keyrotor-notify
//!
//! Tells people what a run did: one Slack message per run, posted to an incoming webhook.
//!
//! [`render()`] turns a [`RunReport`](keyrotor_core::report::RunReport) into a Block Kit message
//! (a header that counts the outcomes, failures and refusals in full, the rest grouped and
//! compact, always within Slack's limits); [`render_text`] gives the same message as plain
//! text for a terminal (the CLI's sandbox preview). [`SlackNotifier`] implements the core's
//! [`Notifier`](keyrotor_core::ports::Notifier) port: it posts the rendered message, honours
//! `Retry-After` on 429, retries 5xx with bounded backoff, and turns Slack's plain-text error
//! codes into one-sentence [`PortError`](keyrotor_core::ports::PortError)s.
//!
//! The webhook URL is a secret (anyone holding it can post to the channel): it is kept as a
//! [`SecretString`](secrecy::SecretString) and appears in no error, log line or `Debug` output.
//!
//! # Layout
//!
//! - [`render`](mod@render): the message model, its Slack and plain-text forms, and the
//!   summarising that keeps any run (a thousand targets) within Slack's limits.
//! - [`webhook`]: [`SlackNotifier`] and its retry [`SlackOptions`].

#![warn(missing_docs)]

pub mod render;
pub mod webhook;

pub use render::{limits, render, render_text};
pub use webhook::{SlackNotifier, SlackOptions};
