//! The leak scan run after every run of the binary.
//!
//! - No secret (any secret access key ever stored or held, any PAT, `base64(":" + PAT)` as
//!   sent in the Basic header, the webhook URL and its secret part) in any run's stdout (the
//!   JSON output included) or stderr (`RUST_LOG=trace`, every crate), nor in any payload the
//!   Slack sink received.
//! - No full key id in stdout or in a Slack payload: only the masked form (`AKIA…WXYZ`).
//! - In the logs, a full key id may appear only in a line logged by the AWS SDK itself (it
//!   logs non-sensitive response bodies, such as `ListAccessKeys`, at trace level): never in
//!   a line of keyrotor's own crates.

use std::collections::BTreeSet;
use std::sync::Mutex;

use base64::Engine as _;

use super::{Output, TestEnv, masked};
use crate::slack::Post;

/// Secrets and key ids seen so far: everything the scan looks for.
#[derive(Debug, Default)]
pub struct Known {
    /// Secret values (shorter than 8 characters: not scanned for).
    pub secrets: BTreeSet<String>,
    /// Full access key ids.
    pub key_ids: BTreeSet<String>,
}

impl TestEnv {
    /// Scans stdout and stderr of every run so far, and every Slack post, for every known
    /// secret; and stdout and Slack for any full key id (logs: only in the AWS SDK's lines).
    /// Panics on the first leak found.
    pub fn assert_no_leaks(&self) {
        let known = self.lock_known();
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        check(&known, &history, &self.posts());
    }

    /// Panics if `text` (`what`: e.g. the Lambda payloads a test collected) holds a known
    /// secret, in any form the scan looks for.
    pub fn assert_text_clean(&self, text: &str, what: &str) {
        let known = self.lock_known();
        for needle in needles(&known) {
            assert!(
                !text.contains(&needle),
                "{what} holds a secret ({}): {}",
                hint(&needle),
                locate(text, &needle)
            );
        }
    }
}

/// Log lines of the AWS SDK that showed a full key id, for the report (`--nocapture`).
static SDK_LINES_WITH_IDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether the run under test should print what the SDK logged with full ids.
fn show_sdk_lines() -> bool {
    std::env::var_os("KEYROTOR_SHOW_SDK_ID_LINES").is_some()
}

/// A secret, shown in a failure message without giving it away.
fn hint(secret: &str) -> String {
    let n = secret.chars().count();
    let head: String = secret.chars().take(3).collect();
    format!("{head}… ({n} chars)")
}

/// Where `needle` first occurs in `text`, as `line N: <line shortened>` with the needle cut
/// out, for failure messages.
fn locate(text: &str, needle: &str) -> String {
    text.lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .map(|(i, l)| {
            let l = l.replace(needle, "<HERE>");
            let short: String = l.chars().take(400).collect();
            format!("line {}: {short}", i + 1)
        })
        .unwrap_or_default()
}

/// Every form of every secret the outputs must not contain.
fn needles(known: &Known) -> Vec<String> {
    let mut out = Vec::new();
    for s in &known.secrets {
        if s.len() < 8 {
            continue;
        }
        out.push(s.clone());
        // `Authorization: Basic base64(":" + PAT)`; without padding, so a prefix counts too.
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(":{s}"));
        out.push(basic.trim_end_matches('=').to_owned());
    }
    out
}

/// The tracing target of a log line of the default `fmt` format
/// (`TIME LEVEL span{..}:span: target::path: message`), if one can be told.
fn target_of(line: &str) -> Option<&str> {
    line.split_whitespace().find_map(|token| {
        let path = token.strip_suffix(':')?;
        let parts: Vec<&str> = path.split("::").collect();
        let ident = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !p.starts_with(|c: char| c.is_ascii_digit())
        };
        parts.iter().all(ident).then_some(path)
    })
}

/// Whether a log line was written by one of keyrotor's own crates.
fn is_keyrotors(line: &str) -> bool {
    // Lines of keyrotor's crates have a target `keyrotor…::module`; a line with no target
    // that can be told is counted as keyrotor's too (the strictest reading).
    match target_of(line) {
        Some(t) => t.starts_with("keyrotor"),
        None => true,
    }
}

/// Panics on the first leak found.
fn check(known: &Known, history: &[Output], posts: &[Post]) {
    let needles = needles(known);
    for run in history {
        for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
            for s in &needles {
                assert!(
                    !text.contains(s.as_str()),
                    "LEAK: a secret ({}) is in the {name} of keyrotor {:?}: {}",
                    hint(s),
                    run.args,
                    locate(text, s)
                );
            }
        }
        for id in &known.key_ids {
            assert!(
                !run.stdout.contains(id.as_str()),
                "a full key id ({}) is in the stdout of keyrotor {:?}: {}",
                masked(id),
                run.args,
                locate(&run.stdout, id)
            );
            for line in run.stderr.lines().filter(|l| l.contains(id.as_str())) {
                assert!(
                    !is_keyrotors(line),
                    "a full key id ({}) is in a log line of keyrotor's own in keyrotor {:?}: {}",
                    masked(id),
                    run.args,
                    line.replace(id.as_str(), "<HERE>")
                );
                let mut seen = SDK_LINES_WITH_IDS.lock().unwrap();
                if seen.len() < 50 {
                    let at = line.find(id.as_str()).unwrap();
                    let from = line[..at]
                        .char_indices()
                        .rev()
                        .nth(150)
                        .map_or(0, |(i, _)| i);
                    let short: String = format!(
                        "{} … {}",
                        line.chars().take(200).collect::<String>(),
                        line[from..].chars().take(200).collect::<String>()
                    )
                    .replace(id.as_str(), "<ID>");
                    seen.push(short.clone());
                    if show_sdk_lines() {
                        eprintln!("SDK log line with a full key id: {short}");
                    }
                }
            }
        }
    }
    for (i, post) in posts.iter().enumerate() {
        for s in &needles {
            assert!(
                !post.body.contains(s.as_str()),
                "LEAK: a secret ({}) is in Slack post #{i}: {}",
                hint(s),
                locate(&post.body, s)
            );
        }
        for id in &known.key_ids {
            assert!(
                !post.body.contains(id.as_str()),
                "a full key id ({}) is in Slack post #{i}",
                masked(id)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_of_a_log_line_is_found_after_its_spans() {
        let line = "2026-01-01T00:00:00.000000Z TRACE invoke{service=iam operation=ListAccessKeys \
                    sdk_invocation_id=1}:try_op:try_attempt: aws_smithy_runtime::client::orchestrator: \
                    read HTTP response body";
        assert_eq!(
            target_of(line),
            Some("aws_smithy_runtime::client::orchestrator")
        );
        let own =
            "2026-01-01T00:00:00.000000Z  INFO keyrotor_ado::client: service connection updated";
        assert!(is_keyrotors(own));
        assert!(!is_keyrotors(line));
        assert!(is_keyrotors("no target at all"));
    }

    #[test]
    fn the_checks_find_a_secret_a_basic_header_and_a_full_key_id() {
        const SECRET: &str = "wJalrXUtnFEMIbinaryK7MDENGbPxRfiCYEXAMPLE";
        const ID: &str = "AKIAIOSFODNN7BINARY1";
        let known = Known {
            secrets: [SECRET.to_owned()].into(),
            key_ids: [ID.to_owned()].into(),
        };
        let run = |stdout: &str, stderr: &str| Output {
            args: vec!["rotate".into()],
            code: 0,
            killed: false,
            triggered: false,
            stdout: stdout.into(),
            stderr: stderr.into(),
            elapsed: std::time::Duration::ZERO,
        };
        let post = |body: &str| Post {
            path: "/services/T/B/x".into(),
            content_type: None,
            body: body.into(),
            json: None,
            status: 200,
            at: std::time::Duration::ZERO,
        };
        let caught = |runs: Vec<Output>, posts: Vec<Post>| {
            std::panic::catch_unwind(|| check(&known, &runs, &posts)).is_err()
        };
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(":{SECRET}"));
        let sdk = format!("T TRACE aws_smithy_runtime::client::orchestrator: body={ID}");
        let own = format!("T  INFO keyrotor_ado::client: key={ID}");

        assert!(caught(vec![run("", &format!("x {SECRET} y"))], vec![]));
        assert!(caught(vec![run(SECRET, "")], vec![]));
        assert!(caught(
            vec![run("", &format!("authorization: Basic {basic}"))],
            vec![]
        ));
        assert!(caught(
            vec![],
            vec![post(&format!("{{\"text\":\"{SECRET}\"}}"))]
        ));
        assert!(caught(vec![run(&format!("old {ID}"), "")], vec![]));
        assert!(caught(vec![], vec![post(ID)]));
        assert!(caught(vec![run("", &own)], vec![]));
        // Masked ids anywhere, and full ids in the SDK's own log lines, pass.
        assert!(!caught(
            vec![run("AKIA…ARY1", &sdk)],
            vec![post("AKIA…ARY1")]
        ));
    }
}
