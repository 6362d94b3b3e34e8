//! Tests of `machine`.
use super::*;

#[test]
fn the_transition_table_names_every_step_but_report_once() {
    let from: Vec<Step> = TRANSITIONS.iter().map(|(s, _)| *s).collect();
    let expected: Vec<Step> = Step::ALL
        .iter()
        .copied()
        .filter(|s| *s != Step::Report)
        .collect();
    assert_eq!(from, expected);
}

#[test]
fn next_is_a_step_name_or_done() {
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct W {
        #[serde(with = "next_serde")]
        n: Option<Step>,
    }
    for s in Step::ALL {
        let v = serde_json::to_value(W { n: Some(s) }).unwrap();
        assert_eq!(v["n"], s.name());
        assert_eq!(serde_json::from_value::<W>(v).unwrap().n, Some(s));
    }
    let done = serde_json::to_value(W { n: None }).unwrap();
    assert_eq!(done["n"], "done");
    assert!(serde_json::from_value::<W>(serde_json::json!({"n": "nope"})).is_err());
}

#[test]
fn error_names_are_distinct_and_read_back() {
    let names: std::collections::BTreeSet<_> = ERROR_KINDS.iter().map(|k| error_name(*k)).collect();
    assert_eq!(names.len(), ERROR_KINDS.len());
}
