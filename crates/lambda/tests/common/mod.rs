//! What the definition tests share (`mod common;` in `asl.rs` and `template.rs`): the state
//! machine's definition, and a walk over its states.

use serde_json::Value;

/// `deploy/statemachine/rotate.asl.json`.
pub const ASL: &str = include_str!("../../../../deploy/statemachine/rotate.asl.json");

/// Every state of a definition, Map iterations included, as (name, state).
pub fn all_states(machine: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, st) in machine["States"].as_object().unwrap() {
        out.push((name.clone(), st.clone()));
        if let Some(inner) = st.get("ItemProcessor").or_else(|| st.get("Iterator")) {
            out.extend(all_states(inner));
        }
    }
    out
}
