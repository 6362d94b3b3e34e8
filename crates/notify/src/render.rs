//! One message for a whole run, in two forms: Slack Block Kit ([`render`]) and plain text
//! ([`render_text`]).
//!
//! Both come from the same model, built once: lines of spans (plain text, bold, code, an icon)
//! grouped into sections. Every decision about what to show and where to cut is taken on the
//! model, measured in the characters Slack will count (after escaping), so the plain-text form
//! shows exactly what Slack shows.
//!
//! What goes in, in order: a header counting the outcomes; the run id and origin; failures and
//! refusals in full (which step failed, the error, what keyrotor did about it, which connection
//! holds which key, what to do next); then every other target as one line, grouped by outcome;
//! then "…and N more" for whatever did not fit. Long texts are shortened at a word boundary,
//! with an ellipsis; a word is never cut.
//!
//! The renderer adds nothing that could be a secret: it shows only what the report holds, with
//! key ids masked again (`mask_key_ids`) and secret-shaped tokens in free text (a 40-character
//! secret access key, a PAT, a webhook URL) replaced by `[redacted]`, in case a service echoed
//! one into an error message.
//!
//! (One file on purpose: the message's limits — 50 blocks, 3,000 characters a section, the
//! fallback text — are budgeted across all its parts at once.)

use std::time::Duration;

use keyrotor_core::domain::mask_key_ids;
use keyrotor_core::report::{EndpointReport, Outcome, RunReport, Step, TargetReport};
use serde_json::{Value, json};

/// Slack's limits for one message, which [`render`] always keeps.
pub mod limits {
    /// Blocks in one message.
    pub const MAX_BLOCKS: usize = 50;
    /// Characters in the text of a section (and of a context element).
    pub const MAX_SECTION_CHARS: usize = 3000;
    /// Characters in the text of a header.
    pub const MAX_HEADER_CHARS: usize = 150;
}

use limits::{MAX_BLOCKS, MAX_HEADER_CHARS, MAX_SECTION_CHARS};

/// Failures and refusals shown in full; the rest of them get one line each.
const FULL_PROBLEMS: usize = 10;
/// Characters of all sections together: a message people can still read.
const BODY_CHARS: usize = 16_000;
/// The notification text (`text`), shown in notifications and where blocks are not.
const FALLBACK_CHARS: usize = 300;
const ERROR_CHARS: usize = 600;
const COMPENSATION_CHARS: usize = 600;
const NEXT_CHARS: usize = 300;
const NAME_CHARS: usize = 80;
const ENDPOINT_CHARS: usize = 200;
const KEY_CHARS: usize = 40;
/// Connections listed by name in a failure.
const ENDPOINTS_LISTED: usize = 10;
const ORIGIN_CHARS: usize = 200;
const COMPACT_TEXT_CHARS: usize = 200;
const COMPACT_LINE_CHARS: usize = 600;
/// Connections listed by name in a rotated target's line.
const ROTATED_NAMES: usize = 5;

const ELLIPSIS: &str = "…";

/// What kind of target a line is about, shown as an emoji in Slack and a glyph in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Icon {
    Rotated,
    Failed,
    Refused,
    Invalid,
    Busy,
    NothingDue,
}

impl Icon {
    fn slack(self) -> &'static str {
        match self {
            Icon::Rotated => ":white_check_mark:",
            Icon::Failed => ":x:",
            Icon::Refused => ":no_entry:",
            Icon::Invalid => ":warning:",
            Icon::Busy => ":hourglass_flowing_sand:",
            Icon::NothingDue => ":zzz:",
        }
    }

    fn glyph(self) -> &'static str {
        match self {
            Icon::Rotated => "✓",
            Icon::Failed => "✗",
            Icon::Refused => "⊘",
            Icon::Invalid => "!",
            Icon::Busy => "~",
            Icon::NothingDue => "-",
        }
    }
}

/// A piece of a line. The strings are what people read (unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Span {
    Text(String),
    Bold(String),
    Code(String),
    Icon(Icon),
}

type Line = Vec<Span>;

fn text(s: impl Into<String>) -> Span {
    Span::Text(s.into())
}

fn bold(s: impl Into<String>) -> Span {
    let s = s.into();
    if s.is_empty() {
        Span::Text(s)
    } else {
        Span::Bold(s)
    }
}

/// Code spans cannot hold a backtick in mrkdwn.
fn code(s: impl Into<String>) -> Span {
    let s = s.into().replace('`', "'");
    if s.is_empty() {
        Span::Text(s)
    } else {
        Span::Code(s)
    }
}

/// Characters Slack counts for one character of user text once escaped.
fn char_len(c: char) -> usize {
    match c {
        '&' => 5,
        '<' | '>' => 4,
        _ => 1,
    }
}

fn escaped_len(s: &str) -> usize {
    s.chars().map(char_len).sum()
}

/// mrkdwn's only escapes: `&`, `<` and `>` (so user text cannot become a link or a mention).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

impl Span {
    /// Characters of its mrkdwn form.
    fn len(&self) -> usize {
        match self {
            Span::Text(s) => escaped_len(s),
            Span::Bold(s) | Span::Code(s) => escaped_len(s) + 2,
            Span::Icon(i) => i.slack().chars().count(),
        }
    }

    fn mrkdwn(&self, out: &mut String) {
        match self {
            Span::Text(s) => out.push_str(&escape(s)),
            Span::Bold(s) => {
                out.push('*');
                out.push_str(&escape(s));
                out.push('*');
            }
            Span::Code(s) => {
                out.push('`');
                out.push_str(&escape(s));
                out.push('`');
            }
            Span::Icon(i) => out.push_str(i.slack()),
        }
    }

    fn plain(&self, out: &mut String) {
        match self {
            Span::Text(s) | Span::Bold(s) | Span::Code(s) => out.push_str(s),
            Span::Icon(i) => out.push_str(i.glyph()),
        }
    }

    /// The same kind of span around other text.
    fn with(&self, s: &str) -> Span {
        match self {
            Span::Text(_) => text(s),
            Span::Bold(_) => bold(s),
            Span::Code(_) => code(s),
            Span::Icon(i) => Span::Icon(*i),
        }
    }
}

fn line_len(line: &[Span]) -> usize {
    line.iter().map(Span::len).sum()
}

fn lines_len(lines: &[Line]) -> usize {
    lines.iter().map(|l| line_len(l)).sum::<usize>() + lines.len().saturating_sub(1)
}

fn line_mrkdwn(line: &[Span]) -> String {
    let mut out = String::new();
    line.iter().for_each(|s| s.mrkdwn(&mut out));
    out
}

fn line_plain(line: &[Span]) -> String {
    let mut out = String::new();
    line.iter().for_each(|s| s.plain(&mut out));
    out
}

fn lines_mrkdwn(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| line_mrkdwn(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn lines_plain(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| line_plain(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The longest prefix of `s` that ends at the end of a word and whose escaped length is at most
/// `budget`; empty if even the first word is longer.
fn word_prefix(s: &str, budget: usize) -> &str {
    let mut used = 0;
    let mut best = 0;
    let mut in_word = false;
    for (i, c) in s.char_indices() {
        if c.is_whitespace() {
            if in_word {
                best = i;
            }
            in_word = false;
        } else {
            in_word = true;
        }
        used += char_len(c);
        if used > budget {
            return s[..best].trim_end();
        }
    }
    s
}

/// `s` if it fits in `max` characters (escaped), else its longest whole-word prefix followed by
/// an ellipsis.
fn clip(s: &str, max: usize) -> String {
    if escaped_len(s) <= max {
        return s.to_owned();
    }
    let head = word_prefix(s, max.saturating_sub(1)); // the ellipsis is one character
    format!("{head}{ELLIPSIS}")
}

/// A line cut to at most `budget` characters (mrkdwn): whole spans while they fit, then the
/// whole words of the next span that fit, then an ellipsis.
fn fit(line: Line, budget: usize) -> Line {
    if line_len(&line) <= budget {
        return line;
    }
    if budget == 0 {
        return Vec::new();
    }
    let room = budget - 1; // for the ellipsis
    let mut out: Line = Vec::new();
    let mut used = 0;
    for span in line {
        let len = span.len();
        if used + len <= room {
            used += len;
            out.push(span);
            continue;
        }
        if let Span::Text(s) | Span::Bold(s) | Span::Code(s) = &span {
            let markup = span.len() - escaped_len(s);
            let head = word_prefix(s, room.saturating_sub(used + markup));
            if !head.is_empty() {
                out.push(span.with(head));
            }
        }
        break;
    }
    // The ellipsis follows a whole word, not a space.
    if let Some(Span::Text(s)) = out.last_mut() {
        let trimmed = s.trim_end().len();
        s.truncate(trimmed);
        if s.is_empty() {
            out.pop();
        }
    }
    out.push(text(ELLIPSIS));
    out
}

/// Lines cut to at most `budget` characters (mrkdwn, newlines counted): whole lines while they
/// fit, then the next one cut to what is left.
fn fit_lines(lines: Vec<Line>, budget: usize) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let mut used = 0;
    for line in lines {
        let sep = usize::from(!out.is_empty());
        let len = line_len(&line);
        if used + sep + len <= budget {
            used += sep + len;
            out.push(line);
            continue;
        }
        let room = budget.saturating_sub(used + sep);
        let cut = fit(line, room);
        if !cut.is_empty() {
            out.push(cut);
        }
        break;
    }
    out
}

/// A short value (a name, an id, a key): key ids masked, whitespace collapsed, clipped.
fn field(s: &str, max: usize) -> String {
    let s = mask_key_ids(s);
    clip(&s.split_whitespace().collect::<Vec<_>>().join(" "), max)
}

/// Free text (an error, a reason, what was done): key ids masked, secret-shaped tokens
/// redacted, one line, clipped.
fn prose(s: &str, max: usize) -> String {
    let s = keyrotor_core::domain::redact(s);
    clip(&s.split_whitespace().collect::<Vec<_>>().join(" "), max)
}

fn duration(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    let secs = d.as_secs();
    if ms < 1000 {
        format!("{ms} ms")
    } else if secs < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{} min {} s", secs / 60, secs % 60)
    } else {
        format!("{} h {} min", secs / 3600, secs / 60 % 60)
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What a step does, in words, after its name.
fn doing(step: Step) -> &'static str {
    match step {
        Step::Inspect => "reading the keys, the secret and the connections",
        Step::Cleanup => "deleting what earlier runs left behind",
        Step::Create => "creating the new key",
        Step::Verify => "proving the new key works",
        Step::Push => "updating the service connections",
        Step::Confirm => "reading the service connections back",
        Step::Promote => "moving AWSCURRENT to the new key",
        Step::Retire => "retiring the old key",
        Step::Compensate => "undoing the failed rotation",
        Step::Report => "reporting",
    }
}

/// Outcomes in the order the header counts them, with the words it uses.
const COUNTED: [(Outcome, &str); 6] = [
    (Outcome::Rotated, "rotated"),
    (Outcome::NothingDue, "nothing due"),
    (Outcome::Busy, "busy"),
    (Outcome::Failed, "FAILED"),
    (Outcome::Refused, "REFUSED"),
    (Outcome::Invalid, "INVALID"),
];

fn counts(targets: &[&TargetReport]) -> Vec<String> {
    COUNTED
        .iter()
        .filter_map(|(o, word)| {
            let n = targets.iter().filter(|t| t.outcome == *o).count();
            (n > 0).then(|| format!("{n} {word}"))
        })
        .collect()
}

fn header(report: &RunReport) -> String {
    let all: Vec<&TargetReport> = report.targets.iter().collect();
    let c = counts(&all);
    let s = if c.is_empty() {
        "keyrotor: no targets".to_owned()
    } else {
        format!("keyrotor: {}", c.join(", "))
    };
    clip(&s, MAX_HEADER_CHARS)
}

fn context(report: &RunReport) -> Line {
    let mut line = Vec::new();
    let run_id = field(&report.run_id, NAME_CHARS);
    if !run_id.is_empty() {
        line.extend([text("run "), code(run_id), text(" · ")]);
    }
    let origin = field(&report.origin, ORIGIN_CHARS);
    if !origin.is_empty() {
        line.extend([text("from "), code(origin), text(" · ")]);
    }
    line.push(text(plural(report.targets.len(), "target", "targets")));
    fit(line, MAX_SECTION_CHARS)
}

fn name(t: &TargetReport) -> Span {
    bold(field(&t.name, NAME_CHARS))
}

fn key(k: &str) -> Span {
    code(field(k, KEY_CHARS))
}

/// "Keys: old `A…` → new `B…`", when the report names either.
fn keys_line(t: &TargetReport) -> Option<Line> {
    let mut line = vec![bold("Keys:")];
    match (&t.old_key, &t.new_key) {
        (Some(old), Some(new)) => line.extend([text(" old "), key(old), text(" → new "), key(new)]),
        (Some(old), None) => line.extend([text(" old "), key(old), text(", no new key")]),
        (None, Some(new)) => line.extend([text(" new "), key(new)]),
        (None, None) => return None,
    }
    Some(line)
}

/// Whether an endpoint's key is the target's old or new one (compared masked).
fn which_key(t: &TargetReport, e: &EndpointReport) -> Option<&'static str> {
    let k = mask_key_ids(e.key.as_deref()?);
    let same = |o: &Option<String>| o.as_deref().is_some_and(|o| mask_key_ids(o) == k);
    if same(&t.new_key) {
        Some("new")
    } else if same(&t.old_key) {
        Some("old")
    } else {
        None
    }
}

fn endpoint_line(t: &TargetReport, e: &EndpointReport) -> Line {
    let mut line = vec![text("• "), text(field(&e.endpoint, ENDPOINT_CHARS))];
    match &e.key {
        Some(k) => {
            line.extend([text(" holds "), key(k)]);
            if let Some(w) = which_key(t, e) {
                line.push(text(format!(" ({w} key)")));
            }
        }
        None => line.push(text(" holds no key keyrotor could read")),
    }
    line
}

/// A failure or refusal in full: one section.
fn full_section(t: &TargetReport) -> Vec<Line> {
    let failed = t.outcome == Outcome::Failed;
    let (icon, verb) = if failed {
        (Icon::Failed, " FAILED")
    } else {
        (Icon::Refused, " REFUSED")
    };
    let mut title = vec![Span::Icon(icon), text(" "), name(t), text(verb)];
    if let Some(step) = t.failed_step {
        title.extend([
            text(" at step "),
            bold(step.name()),
            text(format!(" ({})", doing(step))),
        ]);
    }
    if failed || t.duration_ms > 0 {
        title.push(text(format!(" after {}", duration(t.duration_ms))));
    }

    let mut before = vec![title];
    let why = if failed {
        t.error.as_deref()
    } else {
        t.error.as_deref().or(t.reason.as_deref())
    };
    if let Some(why) = why {
        let label = if failed { "Error:" } else { "Why:" };
        before.push(vec![bold(label), text(" "), text(prose(why, ERROR_CHARS))]);
    }
    match &t.compensation {
        Some(c) => before.push(vec![
            bold("What keyrotor did:"),
            text(" "),
            text(prose(c, COMPENSATION_CHARS)),
        ]),
        None if failed => before.push(vec![
            bold("What keyrotor did:"),
            text(" nothing needed undoing"),
        ]),
        None => {}
    }
    before.extend(keys_line(t));

    let mut after = Vec::new();
    if let Some(next) = &t.next_step {
        let label = if failed { "Next:" } else { "To fix:" };
        after.push(vec![bold(label), text(" "), text(prose(next, NEXT_CHARS))]);
    }

    // Which connection holds which key: for a failure always, for a refusal when keyrotor
    // changed something. As many as fit; the fixed lines above and below come first.
    let show_endpoints = (failed || t.compensation.is_some()) && !t.endpoints.is_empty();
    let mut middle = Vec::new();
    if show_endpoints {
        let fixed = lines_len(&before) + lines_len(&after) + 2;
        let room = MAX_SECTION_CHARS.saturating_sub(fixed);
        let more = |n: usize| {
            vec![text(format!(
                "• …and {} more",
                plural(n, "connection", "connections")
            ))]
        };
        let reserve = line_len(&more(t.endpoints.len())) + 1;
        let head = vec![bold("Connections now:")];
        let mut used = line_len(&head);
        let mut listed = vec![head];
        for (i, e) in t.endpoints.iter().enumerate() {
            let l = endpoint_line(t, e);
            let last = i + 1 == t.endpoints.len();
            let need = used + 1 + line_len(&l) + if last { 0 } else { reserve };
            if i >= ENDPOINTS_LISTED || need > room {
                listed.push(more(t.endpoints.len() - i));
                break;
            }
            used += 1 + line_len(&l);
            listed.push(l);
        }
        if lines_len(&listed) <= room {
            middle = listed;
        }
    }
    let lines: Vec<Line> = before.into_iter().chain(middle).chain(after).collect();
    fit_lines(lines, MAX_SECTION_CHARS)
}

fn why_short(t: &TargetReport) -> Option<String> {
    t.error
        .as_deref()
        .or(t.reason.as_deref())
        .map(|s| prose(s, COMPACT_TEXT_CHARS))
}

/// One line for a target, under its group's heading.
fn compact_line(t: &TargetReport) -> Line {
    let mut line = vec![text("• "), name(t)];
    match t.outcome {
        Outcome::Failed => {
            if let Some(step) = t.failed_step {
                line.extend([text(" at step "), bold(step.name())]);
            }
            if let Some(e) = &t.error {
                line.extend([text(": "), text(prose(e, COMPACT_TEXT_CHARS))]);
            }
        }
        Outcome::Rotated => {
            match (&t.old_key, &t.new_key) {
                (Some(old), Some(new)) => line.extend([text(" "), key(old), text(" → "), key(new)]),
                (None, Some(new)) => line.extend([text(" → "), key(new)]),
                // A dry run plans a rotation without creating the key.
                (Some(old), None) => line.extend([text(" "), key(old), text(" → a new key")]),
                (None, None) => {}
            }
            let total = t.endpoints.len();
            if total > 0 {
                let on_new = t
                    .endpoints
                    .iter()
                    .filter(|e| which_key(t, e) == Some("new"))
                    .count();
                let noun = if total == 1 {
                    "connection"
                } else {
                    "connections"
                };
                if t.new_key.is_none() {
                    line.push(text(format!(" · {total} {noun}")));
                } else if on_new == total {
                    line.push(text(format!(" · {total} {noun} updated")));
                } else {
                    line.push(text(format!(
                        " · {on_new} of {total} connections hold the new key"
                    )));
                }
                if total <= ROTATED_NAMES && (on_new == total || t.new_key.is_none()) {
                    let names: Vec<String> = t
                        .endpoints
                        .iter()
                        .map(|e| field(&e.endpoint, ENDPOINT_CHARS / 2))
                        .collect();
                    line.push(text(format!(" ({})", names.join(", "))));
                }
            }
            line.push(text(format!(" · {}", duration(t.duration_ms))));
        }
        Outcome::Invalid => {
            if let Some(step) = t.failed_step {
                line.push(text(format!(" (at step {})", step.name())));
            }
            if let Some(why) = why_short(t) {
                line.extend([text(": "), text(why)]);
            }
            if let Some(next) = &t.next_step {
                line.extend([text(" — "), text(prose(next, COMPACT_TEXT_CHARS))]);
            }
        }
        Outcome::Refused | Outcome::Busy | Outcome::NothingDue => {
            let why = if t.outcome == Outcome::Refused {
                why_short(t)
            } else {
                t.reason.as_deref().map(|s| prose(s, COMPACT_TEXT_CHARS))
            };
            if let Some(why) = why {
                line.extend([text(": "), text(why)]);
            }
        }
    }
    fit(line, COMPACT_LINE_CHARS)
}

/// The targets of one outcome that get a line each, under a heading.
struct Group<'a> {
    heading: Line,
    targets: Vec<&'a TargetReport>,
}

fn group<'a>(icon: Icon, label: &str, targets: Vec<&'a TargetReport>) -> Group<'a> {
    let heading = vec![
        Span::Icon(icon),
        text(" "),
        bold(format!("{label} ({})", targets.len())),
    ];
    Group { heading, targets }
}

/// The message, before it becomes Slack JSON or text.
struct Message {
    header: String,
    context: Line,
    sections: Vec<Vec<Line>>,
    trailer: Option<Line>,
    fallback: Line,
}

fn layout(report: &RunReport) -> Message {
    let of = |o: Outcome| -> Vec<&TargetReport> {
        report.targets.iter().filter(|t| t.outcome == o).collect()
    };
    let failed = of(Outcome::Failed);
    let refused = of(Outcome::Refused);

    // Header, context and a possible trailer take three blocks; sections get the rest.
    let mut blocks_left = MAX_BLOCKS - 3;
    let mut chars_left = BODY_CHARS;
    let mut sections: Vec<Vec<Line>> = Vec::new();

    // Failures, then refusals, in full while there is room.
    let problems: Vec<&TargetReport> = failed.iter().chain(&refused).copied().collect();
    let mut full = 0;
    for t in problems.iter().take(FULL_PROBLEMS) {
        let s = full_section(t);
        let len = lines_len(&s);
        if blocks_left == 0 || len > chars_left {
            break;
        }
        blocks_left -= 1;
        chars_left -= len;
        sections.push(s);
        full += 1;
    }
    let full_failed = full.min(failed.len());
    let full_refused = full - full_failed;

    let groups = [
        group(
            Icon::Failed,
            if full_failed > 0 {
                "Also failed"
            } else {
                "Failed"
            },
            failed[full_failed..].to_vec(),
        ),
        group(
            Icon::Refused,
            if full_refused > 0 {
                "Also refused"
            } else {
                "Refused"
            },
            refused[full_refused..].to_vec(),
        ),
        group(Icon::Invalid, "Invalid", of(Outcome::Invalid)),
        group(Icon::Rotated, "Rotated", of(Outcome::Rotated)),
        group(Icon::Busy, "Busy, stood aside", of(Outcome::Busy)),
        group(Icon::NothingDue, "Nothing due", of(Outcome::NothingDue)),
    ];

    // Everything else, a line each, packed into sections while blocks and characters last.
    let mut omitted: Vec<&TargetReport> = Vec::new();
    let mut current: Vec<Line> = Vec::new();
    let mut current_len = 0;
    let mut stopped = false;
    for g in &groups {
        for (i, t) in g.targets.iter().enumerate() {
            if stopped {
                omitted.push(t);
                continue;
            }
            let line = compact_line(t);
            let mut add = if i == 0 {
                vec![g.heading.clone(), line.clone()]
            } else {
                vec![line.clone()]
            };
            let mut add_len = lines_len(&add) + usize::from(!current.is_empty());
            let too_long =
                current_len + add_len > MAX_SECTION_CHARS || current_len + add_len > chars_left;
            if !current.is_empty() && too_long {
                chars_left -= current_len;
                sections.push(std::mem::take(&mut current));
                current_len = 0;
                // A group carried over to a new section repeats its heading.
                add = vec![g.heading.clone(), line];
                add_len = lines_len(&add);
            }
            if current.is_empty() {
                if blocks_left == 0 || add_len > chars_left {
                    stopped = true;
                    omitted.push(t);
                    continue;
                }
                blocks_left -= 1;
            }
            current.extend(add);
            current_len += add_len;
        }
    }
    if !current.is_empty() {
        sections.push(current);
    }

    let trailer = (!omitted.is_empty()).then(|| {
        let mut line = vec![text(format!(
            "…and {} more ({})",
            omitted.len(),
            counts(&omitted).join(", ")
        ))];
        let run_id = field(&report.run_id, NAME_CHARS);
        if run_id.is_empty() {
            line.push(text(
                ": the full report is in keyrotor's output for this run",
            ));
        } else {
            line.extend([
                text(": the full report is in keyrotor's output for run "),
                code(run_id),
            ]);
        }
        fit(line, MAX_SECTION_CHARS)
    });

    let header = header(report);
    let mut fallback = vec![text(header.clone())];
    for (i, t) in problems.iter().enumerate() {
        fallback.push(text(if i == 0 { " — " } else { "; " }));
        fallback.push(text(field(&t.name, NAME_CHARS)));
        let what = match (t.outcome, t.failed_step) {
            (Outcome::Failed, Some(step)) => format!(" failed at {step}"),
            (Outcome::Failed, None) => " failed".to_owned(),
            _ => " refused".to_owned(),
        };
        fallback.push(text(what));
        if line_len(&fallback) > FALLBACK_CHARS {
            break;
        }
    }

    Message {
        header,
        context: context(report),
        sections,
        trailer,
        fallback: fit(fallback, FALLBACK_CHARS),
    }
}

fn context_block(line: &[Span]) -> Value {
    json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": line_mrkdwn(line) }] })
}

/// The Slack message for a run: `{"text": …, "blocks": […]}`, ready to post to an incoming
/// webhook.
///
/// `text` is the notification (a summary line naming what failed or was refused). The blocks: a
/// header counting outcomes ("keyrotor: 1 rotated, 1 FAILED"); the run id and origin; each
/// failure and refusal in full (the step that failed, the error, what keyrotor did about it,
/// which connection holds which key, what to do next), up to ten; then every other target as
/// one line, grouped by outcome; then "…and N more" when a run is too large to show whole.
///
/// Always within Slack's [`limits`]: at most 50 blocks, 3,000 characters per section, 150 per
/// header. User text is escaped (`&`, `<`, `>`), key ids are masked, and texts are shortened at
/// word boundaries with an ellipsis.
pub fn render(report: &RunReport) -> Value {
    let m = layout(report);
    let mut blocks = vec![
        json!({ "type": "header", "text": { "type": "plain_text", "text": m.header, "emoji": true } }),
        context_block(&m.context),
    ];
    blocks.extend(m.sections.iter().map(
        |s| json!({ "type": "section", "text": { "type": "mrkdwn", "text": lines_mrkdwn(s) } }),
    ));
    if let Some(t) = &m.trailer {
        blocks.push(context_block(t));
    }
    json!({ "text": line_mrkdwn(&m.fallback), "blocks": blocks })
}

/// The same message as [`render`], as plain text for a terminal: what the Slack message looks
/// like (the CLI's sandbox preview). Same content and the same cuts; glyphs instead of emoji,
/// no markup, no escaping.
pub fn render_text(report: &RunReport) -> String {
    let m = layout(report);
    let mut parts = vec![format!("{}\n{}", m.header, line_plain(&m.context))];
    parts.extend(m.sections.iter().map(|s| lines_plain(s)));
    if let Some(t) = &m.trailer {
        parts.push(line_plain(t));
    }
    let mut out = parts.join("\n\n");
    out.push('\n');
    out
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
