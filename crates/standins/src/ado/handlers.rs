//! The operations, once a request is routed, authenticated and counted. Each reads the state,
//! decides, and answers as the service does.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::faults::Op;
use axum::response::IntoResponse;

use super::http::{ApiError, Params, Route, empty, json};
use super::state::{CONFIDENTIAL, OrgState, Project, id_of, new_id, redacted, references};
use super::{CapturedBody, Inner};

pub(crate) fn handle(
    inner: &mut Inner,
    base: &str,
    route: &Route,
    params: &Params,
    body: &[u8],
    identity: &str,
) -> Response {
    let parsed = parse_body(body);
    if inner.capture
        && matches!(
            route.op,
            Op::Put | Op::Post | Op::Patch | Op::PermissionsPatch
        )
        && let Some(Ok(v)) = &parsed
    {
        inner.captured.push(CapturedBody {
            op: route.op,
            path: route.path.clone(),
            body: v.clone(),
        });
    }
    let Some(org) = inner.state.organizations.get_mut(&route.org.to_lowercase()) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            &format!("The organization '{}' does not exist.", route.org),
            "HostDoesNotExistException",
        )
        .into_response();
    };
    let project = match &route.project {
        None => None,
        Some(name) => match org.project(name) {
            Some(p) => Some(p.clone()),
            None => {
                return ApiError::new(
                    StatusCode::NOT_FOUND,
                    &format!("TF200016: The following project does not exist: {name}. Verify that the name of the project is correct and that the project exists on the specified Azure DevOps Server."),
                    "ProjectDoesNotExistWithNameException",
                )
                .into_response();
            }
        },
    };
    let id = route.id.as_deref().unwrap_or_default();
    let body = || -> Result<Value, ApiError> {
        match &parsed {
            None => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Value cannot be null.\r\nParameter name: endpoint",
                "ArgumentNullException",
            )),
            Some(Err(e)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                &format!("The request body is not valid JSON: {e}"),
                "ArgumentException",
            )),
            Some(Ok(v)) => Ok(v.clone()),
        }
    };
    let result = match (route.op, project) {
        (Op::Projects, _) => Ok(projects(org, base, params)),
        (Op::ConnectionData, _) => Ok(connection_data(org, identity)),
        (Op::List, Some(p)) => Ok(list(org, &p, params)),
        (Op::Get, Some(p)) => Ok(get(org, &p, id)),
        (Op::Put, _) => body().and_then(|b| update(org, id, b)),
        (Op::Post, _) => body().and_then(|b| create(org, b, identity)),
        (Op::Delete, _) => delete(org, id, params),
        (Op::Patch, _) => body().and_then(|b| share(org, id, b)),
        (Op::History, Some(_)) => Ok(history(org, id, params)),
        (Op::PermissionsGet, Some(_)) => Ok(permissions_get(org, id)),
        (Op::PermissionsPatch, Some(_)) => body().and_then(|b| permissions_patch(org, id, b)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "The resource does not exist.",
            "HttpException",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn parse_body(body: &[u8]) -> Option<Result<Value, serde_json::Error>> {
    let text = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    if text.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(serde_json::from_slice(text))
    }
}

fn bad_request(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message, "ArgumentException")
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        &format!("Service connection with id '{id}' could not be found."),
        "ServiceEndpointNotFoundException",
    )
}

fn list_answer(value: Vec<Value>) -> Response {
    json(
        StatusCode::OK,
        &json!({"count": value.len(), "value": value}),
    )
}

/// A GUID-shaped id that is always the same for the same text (organization ids, user ids).
fn stable_guid(text: &str) -> String {
    // FNV-1a, twice with different offsets: 128 bits, enough to look and behave like a GUID.
    let fnv = |offset: u64| {
        text.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let hex = format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x6c62_272e_07bb_0142)
    );
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `GET {org}/_apis/projects`: `$top` (default 100), `$skip` or `continuationToken`, and the
/// next token in `x-ms-continuationtoken`.
fn projects(org: &OrgState, base: &str, params: &Params) -> Response {
    let top = params
        .get("$top")
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100);
    let skip = params
        .get("continuationtoken")
        .or_else(|| params.get("$skip"))
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let value: Vec<Value> = org
        .projects
        .iter()
        .skip(skip)
        .take(top)
        .map(|p| {
            let mut v = json!({
                "id": p.id,
                "name": p.name,
                "url": format!("{base}/{}/_apis/projects/{}", org.name, p.id),
                "state": "wellFormed",
                "revision": 1,
                "visibility": "private",
                "lastUpdateTime": "2024-01-01T00:00:00Z"
            });
            if let Some(d) = &p.description {
                v["description"] = json!(d);
            }
            v
        })
        .collect();
    let mut resp = list_answer(value);
    if skip + top < org.projects.len() {
        resp.headers_mut()
            .insert("x-ms-continuationtoken", (skip + top).into());
    }
    resp
}

/// `GET {org}/_apis/connectionData`: who is asking, and the organization's id as `instanceId`
/// (the GUID in its OIDC issuer, `https://vstoken.dev.azure.com/{instanceId}`). Needs no scope.
fn connection_data(org: &OrgState, identity: &str) -> Response {
    let user = json!({
        "id": stable_guid(identity),
        "descriptor": format!("Microsoft.IdentityModel.Claims.ClaimsIdentity;{identity}"),
        "providerDisplayName": identity,
        "isActive": true,
        "properties": {"Account": {"$type": "System.String", "$value": identity}},
    });
    json(
        StatusCode::OK,
        &json!({
            "authenticatedUser": user,
            "authorizedUser": user,
            "instanceId": org.id,
            "deploymentId": org.id,
            "deploymentType": "hosted",
            "locationServiceData": {
                "serviceOwner": "00025394-6065-48ca-87d9-7f5672854ef7",
                "defaultAccessMappingMoniker": "PublicAccessMapping",
                "lastChangeId": 1,
                "lastChangeId64": 1
            }
        }),
    )
}

/// `GET {org}/{project}/_apis/serviceendpoint/endpoints` with its filters.
fn list(org: &OrgState, project: &Project, params: &Params) -> Response {
    let names = params.list("endpointnames");
    let ids = params.list("endpointids");
    let kind = params.get("type");
    let schemes = params.list("authschemes");
    let owner = params.get("owner");
    let include_failed = params.flag("includefailed");
    let value = org
        .endpoints
        .iter()
        .filter(|e| org.is_in(e, project))
        .filter(|e| {
            let name = org.name_in(e, project);
            names.is_empty() || names.iter().any(|n| n.eq_ignore_ascii_case(&name))
        })
        .filter(|e| ids.is_empty() || ids.iter().any(|i| i.eq_ignore_ascii_case(id_of(e))))
        .filter(|e| kind.is_none_or(|k| str_at(e, "/type").eq_ignore_ascii_case(k)))
        .filter(|e| {
            schemes.is_empty()
                || schemes
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(str_at(e, "/authorization/scheme")))
        })
        .filter(|e| owner.is_none_or(|o| str_at(e, "/owner").eq_ignore_ascii_case(o)))
        .filter(|e| include_failed || e.get("isReady") != Some(&Value::Bool(false)))
        .map(redacted)
        .collect();
    list_answer(value)
}

/// `GET {org}/{project}/_apis/serviceendpoint/endpoints/{id}`: `null` when it is unknown.
fn get(org: &OrgState, project: &Project, id: &str) -> Response {
    let found = org
        .endpoint(id)
        .filter(|e| org.is_in(e, project))
        .map_or(Value::Null, redacted);
    json(StatusCode::OK, &found)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Checks what the service's model binding and validation would refuse.
fn check_endpoint(org: &OrgState, ep: &Value) -> Result<(), ApiError> {
    let Some(obj) = ep.as_object() else {
        return Err(bad_request("The service endpoint must be a JSON object."));
    };
    for field in ["name", "type"] {
        if obj
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(bad_request(&format!(
                "The service endpoint's '{field}' is required."
            )));
        }
    }
    for (pointer, what) in [
        ("/authorization/parameters", "authorization parameters"),
        ("/data", "data"),
    ] {
        match ep.pointer(pointer) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.values().all(|v| v.is_string() || v.is_null()) => {}
            Some(_) => {
                return Err(bad_request(&format!(
                    "The {what} must be an object of strings."
                )));
            }
        }
    }
    let refs = references(ep);
    if refs.is_empty() {
        return Err(bad_request(
            "The service endpoint needs at least one serviceEndpointProjectReferences entry.",
        ));
    }
    if let Some(r) = refs.iter().find(|r| org.project_of_reference(r).is_none()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            &format!(
                "TF200016: The following project does not exist: {r}. Verify that the name of the project is correct and that the project exists on the specified Azure DevOps Server."
            ),
            "ProjectDoesNotExistWithNameException",
        ));
    }
    Ok(())
}

/// Refuses a name that another endpoint already has in one of `ep`'s projects.
fn check_unique(org: &OrgState, ep: &Value, except: Option<&str>) -> Result<(), ApiError> {
    for r in references(ep) {
        let Some(project) = org.project_of_reference(r) else {
            continue;
        };
        let name = org.name_in(ep, project);
        let clash = org
            .endpoints
            .iter()
            .filter(|o| except.is_none_or(|id| !id_of(o).eq_ignore_ascii_case(id)))
            .any(|o| org.is_in(o, project) && org.name_in(o, project).eq_ignore_ascii_case(&name));
        if clash {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                &format!(
                    "A service connection with name '{name}' already exists in project '{}'. Choose a different name.",
                    project.name
                ),
                "DuplicateServiceConnectionException",
            ));
        }
    }
    Ok(())
}

/// `PUT {org}/_apis/serviceendpoint/endpoints/{id}`: replaces the object, keeps the id. A
/// confidential parameter sent as `null`, or left out of the parameters, keeps the stored
/// secret; `""` clears it; any other string replaces it (see the module docs).
fn update(org: &mut OrgState, id: &str, mut ep: Value) -> Result<Response, ApiError> {
    let Some(index) = org.index_of(id) else {
        return Err(not_found(id));
    };
    check_endpoint(org, &ep)?;
    if let Some(body_id) = ep.get("id").and_then(Value::as_str)
        && !body_id.eq_ignore_ascii_case(id)
    {
        return Err(bad_request(&format!(
            "The endpoint id '{body_id}' in the body does not match the id '{id}' in the URL."
        )));
    }
    check_unique(org, &ep, Some(id))?;
    let stored = &org.endpoints[index];
    let stored_id = id_of(stored).to_owned();
    // Only a string replaces a secret (`""` included, which clears it); `null` and absence keep
    // the stored one. Without a parameters object at all there is nothing to keep it in.
    let kept: Vec<(&str, Value)> = CONFIDENTIAL
        .iter()
        .filter_map(|k| {
            let keeps = ep
                .pointer(&format!("/authorization/parameters/{k}"))
                .is_none_or(Value::is_null);
            let old = stored.pointer(&format!("/authorization/parameters/{k}"))?;
            keeps.then(|| (*k, old.clone()))
        })
        .collect();
    if let Some(params) = ep
        .pointer_mut("/authorization/parameters")
        .and_then(Value::as_object_mut)
    {
        for (k, v) in kept {
            params.insert(k.to_owned(), v);
        }
    }
    if let Some(obj) = ep.as_object_mut() {
        obj.insert("id".into(), json!(stored_id));
    }
    let answer = redacted(&ep);
    org.endpoints[index] = ep;
    Ok(json(StatusCode::OK, &answer))
}

/// `POST {org}/_apis/serviceendpoint/endpoints`: the server assigns the id.
fn create(org: &mut OrgState, mut ep: Value, identity: &str) -> Result<Response, ApiError> {
    check_endpoint(org, &ep)?;
    check_unique(org, &ep, None)?;
    let shared = references(&ep).len() > 1;
    let Some(obj) = ep.as_object_mut() else {
        return Err(bad_request("The service endpoint must be a JSON object."));
    };
    obj.insert("id".into(), json!(new_id()));
    obj.entry("isReady").or_insert(json!(true));
    obj.entry("owner").or_insert(json!("library"));
    obj.entry("isShared").or_insert(json!(shared));
    obj.entry("createdBy").or_insert_with(
        || json!({"displayName": identity, "uniqueName": identity, "id": new_id()}),
    );
    let answer = redacted(&ep);
    org.endpoints.push(ep);
    Ok(json(StatusCode::OK, &answer))
}

/// `DELETE {org}/_apis/serviceendpoint/endpoints/{id}?projectIds=…`: unshares it from those
/// projects; gone (with its permissions and history) when no project is left.
fn delete(org: &mut OrgState, id: &str, params: &Params) -> Result<Response, ApiError> {
    let Some(_) = params.get("projectids") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Value cannot be null.\r\nParameter name: projectIds",
            "ArgumentNullException",
        ));
    };
    let wanted = params.list("projectids");
    if wanted.is_empty() {
        return Err(bad_request("The parameter projectIds is empty."));
    }
    let Some(index) = org.index_of(id) else {
        return Err(not_found(id));
    };
    let drop: Vec<String> = wanted
        .iter()
        .filter_map(|w| org.project(w).map(|p| p.id.clone()))
        .collect();
    let keep: Vec<Value> = references(&org.endpoints[index])
        .iter()
        .filter(|r| {
            org.project_of_reference(r)
                .is_none_or(|p| !drop.contains(&p.id))
        })
        .cloned()
        .collect();
    if keep.is_empty() {
        let gone = org.endpoints.remove(index);
        let key = id_of(&gone).to_lowercase();
        org.pipeline_permissions.remove(&key);
        org.execution_history.remove(&key);
    } else if let Some(obj) = org.endpoints[index].as_object_mut() {
        obj.insert("isShared".into(), json!(keep.len() > 1));
        obj.insert(
            "serviceEndpointProjectReferences".into(),
            Value::Array(keep),
        );
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `PATCH {org}/_apis/serviceendpoint/endpoints/{id}` with `[{projectReference, name}]`.
fn share(org: &mut OrgState, id: &str, body: Value) -> Result<Response, ApiError> {
    let Some(index) = org.index_of(id) else {
        return Err(not_found(id));
    };
    let Value::Array(new_refs) = body else {
        return Err(bad_request(
            "The body must be an array of service endpoint project references.",
        ));
    };
    let mut ep = org.endpoints[index].clone();
    for r in new_refs {
        let Some(project) = org.project_of_reference(&r).cloned() else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                &format!("TF200016: The following project does not exist: {r}."),
                "ProjectDoesNotExistWithNameException",
            ));
        };
        if org.is_in(&ep, &project) {
            continue;
        }
        let mut single = ep.clone();
        single["serviceEndpointProjectReferences"] = json!([r.clone()]);
        check_unique(org, &single, Some(id))?;
        if let Some(refs) = ep
            .get_mut("serviceEndpointProjectReferences")
            .and_then(Value::as_array_mut)
        {
            refs.push(r);
        }
    }
    let shared = references(&ep).len() > 1;
    ep["isShared"] = json!(shared);
    org.endpoints[index] = ep;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `GET {org}/{project}/_apis/serviceendpoint/{id}/executionhistory` (`top` limits it).
fn history(org: &OrgState, id: &str, params: &Params) -> Response {
    let top = params
        .get("top")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let records = org
        .execution_history
        .get(&id.to_lowercase())
        .map(|h| h.iter().take(top).cloned().collect())
        .unwrap_or_default();
    list_answer(records)
}

fn permissions_of(org: &OrgState, id: &str) -> Value {
    let mut p = org
        .pipeline_permissions
        .get(&id.to_lowercase())
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({"pipelines": []}));
    p["resource"] = json!({"type": "endpoint", "id": id});
    if !p.get("pipelines").is_some_and(Value::is_array) {
        p["pipelines"] = json!([]);
    }
    p
}

/// `GET …/pipelinepermissions/endpoint/{id}`: keyed by the endpoint id.
fn permissions_get(org: &OrgState, id: &str) -> Response {
    json(StatusCode::OK, &permissions_of(org, id))
}

/// `PATCH …/pipelinepermissions/endpoint/{id}`: authorizes (or removes) pipelines, and sets
/// `allPipelines`.
fn permissions_patch(org: &mut OrgState, id: &str, body: Value) -> Result<Response, ApiError> {
    if org.index_of(id).is_none() {
        return Err(not_found(id));
    }
    let Some(patch) = body.as_object() else {
        return Err(bad_request(
            "The body must be a resource pipeline permissions object.",
        ));
    };
    let mut current = permissions_of(org, id);
    let mut pipelines: Vec<Value> = current["pipelines"].as_array().cloned().unwrap_or_default();
    for p in patch
        .get("pipelines")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(pid) = p.get("id").and_then(Value::as_i64) else {
            return Err(bad_request("Every pipeline needs a numeric id."));
        };
        pipelines.retain(|q| q.get("id").and_then(Value::as_i64) != Some(pid));
        if p.get("authorized")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            pipelines.push(p.clone());
        }
    }
    current["pipelines"] = Value::Array(pipelines);
    if let Some(all) = patch.get("allPipelines") {
        if all.get("authorized").and_then(Value::as_bool) == Some(false) {
            if let Some(o) = current.as_object_mut() {
                o.remove("allPipelines");
            }
        } else {
            current["allPipelines"] = all.clone();
        }
    }
    let stored: Map<String, Value> = current.as_object().cloned().unwrap_or_default();
    org.pipeline_permissions
        .insert(id.to_lowercase(), Value::Object(stored));
    Ok(json(StatusCode::OK, &current))
}
