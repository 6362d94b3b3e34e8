//! The `ServiceEndpoint` JSON object: read into the core's [`Endpoint`], and edited for an
//! update in place (`username` and `password` change and `sessionToken` is cleared; everything
//! else is kept as is).

use keyrotor_core::domain::{AccessKeyId, EndpointId, OrgUrl, ProjectName};
use keyrotor_core::ports::{
    Endpoint, EndpointHandle, PortError, PortErrorKind, PortResult, RawRead,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// The authorization parameter of a temporary key's session token, cleared with every key put.
const SESSION_TOKEN: &str = "sessionToken";

/// A string field by JSON pointer.
pub(crate) fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// `authorization.parameters.<name>`, when it is a non-empty string.
pub(crate) fn parameter<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    str_at(v, &format!("/authorization/parameters/{name}")).filter(|s| !s.is_empty())
}

/// `useOIDC == "true"` (case-insensitive, as the AWS Toolkit writes it).
pub(crate) fn uses_oidc(v: &Value) -> bool {
    parameter(v, "useOIDC").is_some_and(|s| s.eq_ignore_ascii_case("true"))
}

/// The connection's `serviceEndpointProjectReferences` entries.
fn references(v: &Value) -> &[Value] {
    v.get("serviceEndpointProjectReferences")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Whether a project reference names this project (by name or by id).
fn names_project(reference: &Value, project: &str) -> bool {
    ["/projectReference/name", "/projectReference/id"]
        .iter()
        .filter_map(|p| str_at(reference, p))
        .any(|s| s.eq_ignore_ascii_case(project))
}

/// The connection's name in a project: a connection shared into several projects may carry
/// another name in each; its top-level `name` otherwise.
pub(crate) fn name_in(v: &Value, project: &str) -> String {
    references(v)
        .iter()
        .filter(|r| names_project(r, project))
        .find_map(|r| str_at(r, "/name").filter(|n| !n.is_empty()))
        .or_else(|| str_at(v, "/name"))
        .unwrap_or_default()
        .to_owned()
}

/// Whether the connection is called `name` (its own name, or its name in any project).
pub(crate) fn is_named(v: &Value, name: &str) -> bool {
    str_at(v, "/name").is_some_and(|n| n.eq_ignore_ascii_case(name))
        || references(v)
            .iter()
            .filter_map(|r| str_at(r, "/name"))
            .any(|n| n.eq_ignore_ascii_case(name))
}

/// The connection's id.
pub(crate) fn id_of(v: &Value) -> PortResult<&str> {
    str_at(v, "/id").filter(|s| !s.is_empty()).ok_or_else(|| {
        PortError::new(
            PortErrorKind::Failed,
            "Azure DevOps answered a service connection without an id",
        )
    })
}

/// The object's `id`, parsed.
pub(crate) fn endpoint_id(v: &Value) -> PortResult<EndpointId> {
    EndpointId::parse(id_of(v)?).map_err(|e| {
        PortError::new(
            PortErrorKind::Failed,
            format!("Azure DevOps answered a service connection with an unexpected id: {e}"),
        )
    })
}

/// Reads what keyrotor needs from a `ServiceEndpoint` object found in `project` by a request
/// that went out at `sent`, and keeps the object (and `sent`) for an update in place.
pub(crate) fn to_endpoint(
    v: &Value,
    org: &OrgUrl,
    project: &ProjectName,
    sent: tokio::time::Instant,
) -> PortResult<Endpoint> {
    if !v.is_object() {
        return Err(PortError::new(
            PortErrorKind::Failed,
            "Azure DevOps answered something other than a service connection object",
        ));
    }
    Ok(Endpoint {
        handle: EndpointHandle {
            org: org.clone(),
            project: project.clone(),
            id: endpoint_id(v)?,
        },
        name: name_in(v, project.as_str()),
        kind: str_at(v, "/type").unwrap_or_default().to_owned(),
        scheme: str_at(v, "/authorization/scheme")
            .unwrap_or_default()
            .to_owned(),
        username: parameter(v, "username").map(str::to_owned),
        uses_oidc: uses_oidc(v),
        is_ready: v.get("isReady").and_then(Value::as_bool).unwrap_or(false),
        raw: Some(std::sync::Arc::new(RawRead {
            object: v.clone(),
            sent: sent.into_std(),
        })),
    })
}

/// Puts the new key into the object: `authorization.parameters.username` and `.password`
/// become the key, and `.sessionToken` becomes `""`, which clears it. An IAM user's key has no
/// session token, and sent back as it came (`null`, which the service reads as "keep") a token
/// stored once would outlive the key it went with: AWS then refuses every call with "The
/// security token included in the request is invalid" (`SERVICE-ENDPOINTS.md`, "Confidential
/// fields on update"). Everything else — `assumeRoleArn`, `externalId`, `roleSessionName`,
/// other confidential parameters (`null`: kept), `data`, project references — goes back exactly
/// as it came.
pub(crate) fn put_credentials(
    v: &mut Value,
    key: &AccessKeyId,
    secret: &SecretString,
) -> PortResult<()> {
    let params = v
        .pointer_mut("/authorization/parameters")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            PortError::new(
                PortErrorKind::Refused,
                "the service connection has no authorization parameters to put a key into",
            )
        })?;
    params.insert("username".into(), Value::String(key.as_str().to_owned()));
    params.insert(
        "password".into(),
        Value::String(secret.expose_secret().to_owned()),
    );
    params.insert(SESSION_TOKEN.into(), Value::String(String::new()));
    Ok(())
}

/// The items of a list answer: `{"count": N, "value": [...]}` (or a bare array).
pub(crate) fn list_items(body: Value) -> PortResult<Vec<Value>> {
    match body {
        Value::Array(items) => Ok(items),
        Value::Object(mut o) => match o.remove("value") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(PortError::new(
                PortErrorKind::Failed,
                "Azure DevOps answered a list without a 'value' array",
            )),
        },
        Value::Null => Ok(Vec::new()),
        _ => Err(PortError::new(
            PortErrorKind::Failed,
            "Azure DevOps answered a list request with something that is not a list",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "id": "1f0e6b1c-0000-4000-8000-000000000001",
            "name": "aws-prod",
            "type": "aws",
            "isReady": true,
            "authorization": {"scheme": "UsernamePassword", "parameters": {
                "username": "AKIAIOSFODNN7EXAMPLE", "password": null, "useOIDC": "True",
                "assumeRoleArn": "arn:aws:iam::123456789012:role/x"}},
            "serviceEndpointProjectReferences": [
                {"projectReference": {"id": "p1", "name": "Platform"}, "name": "aws-prod"},
                {"projectReference": {"id": "p2", "name": "Web"}, "name": "aws-prod-web"}
            ]
        })
    }

    #[test]
    fn a_shared_connection_is_named_as_in_the_project_it_was_found_in() {
        let v = sample();
        assert_eq!(name_in(&v, "web"), "aws-prod-web");
        assert_eq!(name_in(&v, "p1"), "aws-prod");
        assert_eq!(name_in(&v, "Elsewhere"), "aws-prod");
        assert!(is_named(&v, "AWS-PROD-WEB"));
        assert!(!is_named(&v, "aws"));
    }

    #[test]
    fn fields_map_into_the_core_endpoint() {
        let org = OrgUrl::parse("https://dev.azure.com/contoso").unwrap();
        let platform = ProjectName::parse("Platform").unwrap();
        let e = to_endpoint(&sample(), &org, &platform, tokio::time::Instant::now()).unwrap();
        assert_eq!(e.kind, "aws");
        assert_eq!(e.scheme, "UsernamePassword");
        assert_eq!(e.username.as_deref(), Some("AKIAIOSFODNN7EXAMPLE"));
        assert!(e.uses_oidc, "useOIDC is compared case-insensitively");
        assert!(e.is_ready);
        assert_eq!(e.handle.id, "1f0e6b1c-0000-4000-8000-000000000001");
    }

    #[test]
    fn the_key_changes_the_session_token_is_cleared_and_nothing_else_changes() {
        // As the service answers a connection that once had a session token: `null`.
        let mut v = sample();
        v["authorization"]["parameters"]["sessionToken"] = Value::Null;
        v["authorization"]["parameters"]["otherSecret"] = Value::Null;
        let before = v.clone();
        let key = AccessKeyId::parse("AKIAI44QH8DHBEXAMPLE").unwrap();
        put_credentials(&mut v, &key, &SecretString::from("s3cret")).unwrap();
        assert_eq!(parameter(&v, "username"), Some("AKIAI44QH8DHBEXAMPLE"));
        assert_eq!(parameter(&v, "password"), Some("s3cret"));
        assert_eq!(
            v["authorization"]["parameters"]["sessionToken"],
            json!(""),
            "sent explicitly empty: the service clears it (null would keep it)"
        );
        let mut expected = before;
        let p = expected["authorization"]["parameters"]
            .as_object_mut()
            .unwrap();
        p.insert("username".into(), json!("AKIAI44QH8DHBEXAMPLE"));
        p.insert("password".into(), json!("s3cret"));
        p.insert("sessionToken".into(), json!(""));
        assert_eq!(
            v, expected,
            "otherSecret stays null (kept), all else as it came"
        );
    }

    #[test]
    fn a_session_token_the_answer_left_out_is_sent_empty_too() {
        let mut v = sample();
        assert!(
            v.pointer("/authorization/parameters/sessionToken")
                .is_none()
        );
        let key = AccessKeyId::parse("AKIAI44QH8DHBEXAMPLE").unwrap();
        put_credentials(&mut v, &key, &SecretString::from("s3cret")).unwrap();
        assert_eq!(v["authorization"]["parameters"]["sessionToken"], json!(""));
    }

    #[test]
    fn a_connection_without_parameters_is_refused() {
        let mut v = json!({"id": "x", "authorization": {"scheme": "None"}});
        let key = AccessKeyId::parse("AKIAI44QH8DHBEXAMPLE").unwrap();
        let e = put_credentials(&mut v, &key, &SecretString::from("s")).unwrap_err();
        assert_eq!(e.kind, PortErrorKind::Refused);
    }

    #[test]
    fn list_answers_come_wrapped_or_bare() {
        assert_eq!(
            list_items(json!({"count": 1, "value": [1]})).unwrap(),
            vec![json!(1)]
        );
        assert_eq!(list_items(json!([2])).unwrap(), vec![json!(2)]);
        assert!(list_items(json!({"count": 0})).is_err());
    }
}
