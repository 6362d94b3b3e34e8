//! Tests of `render`.
use super::*;

#[test]
fn a_prefix_ends_at_a_word_boundary() {
    let cases = [
        ("alpha beta gamma", 12, "alpha beta"),
        ("alpha beta gamma", 10, "alpha beta"),
        ("alpha beta gamma", 9, "alpha"),
        ("alphabet", 4, ""),
        ("alpha", 5, "alpha"),
    ];
    for (text, budget, expected) in cases {
        assert_eq!(word_prefix(text, budget), expected, "{text:?} in {budget}");
    }
}

#[test]
fn escapes_count_toward_the_budget_and_are_never_split() {
    // "a & b" is 9 characters once escaped.
    for (budget, expected) in [(8, "a &"), (7, "a &"), (6, "a"), (5, "a")] {
        assert_eq!(word_prefix("a & b", budget), expected, "in {budget}");
    }
    assert_eq!(clip("x <y> z", 7), "x…");
}

#[test]
fn a_clipped_text_ends_with_an_ellipsis_after_a_whole_word() {
    let c = clip("the quick brown fox jumps", 12);
    assert_eq!(c, "the quick…");
    assert!(escaped_len(&c) <= 12);
    assert_eq!(clip("short", 12), "short");
}

#[test]
fn a_cut_line_keeps_whole_spans_and_closes_its_markup() {
    let line = vec![
        text("• "),
        bold("platform"),
        text(": "),
        text("one two three four"),
    ];
    let cut = fit(line, 22);
    assert_eq!(line_mrkdwn(&cut), "• *platform*: one two…");
    assert!(line_len(&cut) <= 22);
    let cut = fit(vec![text("• "), bold("platform name here")], 13);
    assert_eq!(line_mrkdwn(&cut), "• *platform*…");
    let cut = fit(vec![text("• "), code("AKIA…MPLE")], 6);
    assert_eq!(line_mrkdwn(&cut), "•…");
}

#[test]
fn user_text_cannot_mention_or_link() {
    let line = vec![text("<!channel> & <https://x|y>")];
    assert_eq!(
        line_mrkdwn(&line),
        "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"
    );
    assert_eq!(line_plain(&line), "<!channel> & <https://x|y>");
}

#[test]
fn secret_shaped_tokens_in_prose_are_redacted() {
    let s = prose(
        "signature for 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' by AKIAIOSFODNN7EXAMPLE failed",
        500,
    );
    assert_eq!(s, "signature for '[redacted]' by AKIA…MPLE failed");
    let s = prose(
        "posting to https://hooks.slack.com/services/T0/B0/abc failed",
        500,
    );
    assert_eq!(s, "posting to [redacted] failed");
    let pat = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst";
    assert_eq!(prose(&format!("PAT {pat}."), 500), "PAT [redacted].");
    let ordinary =
        "service connection 'Platform/aws-0' (6f1c2f1e-9a3b-4c5d-8e7f-001122334455) refused";
    assert_eq!(prose(ordinary, 500), ordinary);
}

#[test]
fn durations_read_naturally() {
    assert_eq!(duration(850), "850 ms");
    assert_eq!(duration(3140), "3.1 s");
    assert_eq!(duration(125_000), "2 min 5 s");
    assert_eq!(duration(3_725_000), "1 h 2 min");
}
