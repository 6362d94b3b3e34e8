//! Contract tests against Microsoft's published Swagger 2.0 spec of the service-endpoint API
//! (`shared/ado/serviceEndpoint-7.1.swagger.json`, beside the repository): the body the client
//! PUTs and every endpoint the emulator answers must be valid `ServiceEndpoint`s, and the
//! operations both rely on must be declared as they use them. Where the spec is absent the
//! tests say why and pass.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use keyrotor_core::domain::AccessKeyId;
use keyrotor_core::ports::ServiceConnections;
use keyrotor_testkit::ado::{AdoEmulator, Op, OrgSeed, Scope, Seed, aws_endpoint};
use secrecy::SecretString;
use serde_json::{Value, json};

fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/ado/serviceEndpoint-7.1.swagger.json")
}

/// The spec, or `None` (with the reason printed) when it is not beside the repository.
fn swagger() -> Option<Swagger> {
    let path = spec_path();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "contract test skipped: {} is not readable ({e}); clone shared/ beside the repository to run it",
                path.display()
            );
            return None;
        }
    };
    let text = String::from_utf8(bytes).expect("the spec is UTF-8");
    let doc: Value =
        serde_json::from_str(text.trim_start_matches('\u{feff}')).expect("the spec is JSON");
    Some(Swagger { doc })
}

/// The subset of Swagger 2.0 schemas the spec uses: `type`, `properties`, `$ref`, `allOf`,
/// `items`, `additionalProperties`, and `format: uuid`. A property the schema does not name is
/// an error unless `additionalProperties` allows it. `null` is accepted for any value: the
/// service's serializer writes `null` for any reference type (`"password": null`) and
/// Swagger 2.0 cannot say so.
struct Swagger {
    doc: Value,
}

impl Swagger {
    fn definition(&self, name: &str) -> &Value {
        self.doc["definitions"]
            .get(name)
            .unwrap_or_else(|| panic!("the spec has no definition {name}"))
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r
                    .strip_prefix("#/definitions/")
                    .unwrap_or_else(|| panic!("unsupported $ref {r}"));
                self.resolve(self.definition(name))
            }
            None => schema,
        }
    }

    /// Properties and `additionalProperties` of an object schema, following `$ref` and `allOf`.
    fn object_shape<'a>(
        &'a self,
        schema: &'a Value,
        props: &mut BTreeMap<String, &'a Value>,
    ) -> Option<&'a Value> {
        let schema = self.resolve(schema);
        let mut additional = schema.get("additionalProperties");
        if let Some(p) = schema.get("properties").and_then(Value::as_object) {
            for (k, v) in p {
                props.insert(k.clone(), v);
            }
        }
        for part in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            additional = additional.or(self.object_shape(part, props));
        }
        additional
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        if value.is_null() {
            return;
        }
        let schema = self.resolve(schema);
        let kind = schema.get("type").and_then(Value::as_str).or_else(|| {
            (schema.get("properties").is_some() || schema.get("allOf").is_some())
                .then_some("object")
        });
        match kind {
            Some("object") => {
                let Some(obj) = value.as_object() else {
                    errors.push(format!("{at}: expected an object, got {value}"));
                    return;
                };
                let mut props = BTreeMap::new();
                let additional = self.object_shape(schema, &mut props);
                for (k, v) in obj {
                    let here = format!("{at}.{k}");
                    match (props.get(k), additional) {
                        (Some(s), _) => self.validate(s, v, &here, errors),
                        (None, Some(Value::Bool(true))) => {}
                        (None, Some(s @ Value::Object(_))) => self.validate(s, v, &here, errors),
                        (None, _) => errors.push(format!("{here}: not a property the spec names")),
                    }
                }
            }
            Some("array") => {
                let Some(items) = value.as_array() else {
                    errors.push(format!("{at}: expected an array, got {value}"));
                    return;
                };
                let item_schema = schema.get("items").unwrap_or(&Value::Null);
                for (i, v) in items.iter().enumerate() {
                    if item_schema.is_null() {
                        break;
                    }
                    self.validate(item_schema, v, &format!("{at}[{i}]"), errors);
                }
            }
            Some("string") => match value.as_str() {
                None => errors.push(format!("{at}: expected a string, got {value}")),
                Some(s) if schema.get("format") == Some(&json!("uuid")) && !is_uuid(s) => {
                    errors.push(format!("{at}: '{s}' is not a uuid"))
                }
                Some(_) => {}
            },
            Some("boolean") if !value.is_boolean() => {
                errors.push(format!("{at}: expected a boolean, got {value}"))
            }
            Some("integer") if !(value.is_i64() || value.is_u64()) => {
                errors.push(format!("{at}: expected an integer, got {value}"))
            }
            Some("number") if !value.is_number() => {
                errors.push(format!("{at}: expected a number, got {value}"))
            }
            Some("boolean" | "integer" | "number") => {}
            None => {}
            Some(other) => errors.push(format!("{at}: unsupported schema type {other}")),
        }
    }

    /// Errors of `value` against a named definition.
    fn check(&self, definition: &str, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate(
            &json!({"$ref": format!("#/definitions/{definition}")}),
            value,
            definition,
            &mut errors,
        );
        errors
    }

    fn assert_valid(&self, definition: &str, value: &Value, what: &str) {
        let errors = self.check(definition, value);
        assert!(
            errors.is_empty(),
            "{what} is not a valid {definition}:\n{}\n{value:#}",
            errors.join("\n")
        );
    }

    fn operation(&self, path: &str, method: &str) -> &Value {
        self.doc["paths"]
            .get(path)
            .and_then(|p| p.get(method))
            .unwrap_or_else(|| panic!("the spec declares no {method} {path}"))
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Query and path parameters of an operation: name → required.
fn parameters(op: &Value) -> BTreeMap<String, bool> {
    op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?;
            Some((
                name.to_owned(),
                p.get("required").and_then(Value::as_bool).unwrap_or(false),
            ))
        })
        .collect()
}

/// Endpoints shaped like the real service's, with only fields the spec names.
fn contract_seed() -> Seed {
    let mut prod = aws_endpoint("aws-prod", OLD_KEY, OLD_SECRET, &["Platform", "Web"]);
    prod["id"] = json!(PROD);
    prod["data"] = json!({"region": "eu-west-1"});
    prod["groupScopeId"] = json!(PLATFORM);
    prod["createdBy"] = json!({
        "displayName": "Build Admin", "id": "0e7b9a1c-1111-4c2d-9f00-123456789abc",
        "uniqueName": "admin@contoso.example", "url": "https://vssps.example/_apis/Identities/0e7b9a1c",
        "imageUrl": "https://dev.azure.com/contoso/_api/_common/identityImage?id=0e7b9a1c",
        "descriptor": "aad.MGU3YjlhMWM", "_links": {"links": {}}
    });
    prod["authorization"]["parameters"]["sessionToken"] = json!(SESSION_TOKEN);
    prod["authorization"]["parameters"]["assumeRoleArn"] =
        json!("arn:aws:iam::123456789012:role/deploy");
    prod["authorization"]["parameters"]["useOIDC"] = json!("false");
    Seed::new().org(
        OrgSeed::new("contoso")
            .pat(PAT, Scope::Manage)
            .project_with_id("Platform", PLATFORM)
            .project_with_id("Web", WEB)
            .endpoint(prod),
    )
}

#[test]
fn the_validator_refuses_what_the_spec_does_not_allow() {
    let Some(spec) = swagger() else { return };
    let good = json!({
        "id": PROD, "name": "x", "type": "AWS", "isReady": true,
        "authorization": {"scheme": "UsernamePassword", "parameters": {"username": "u", "password": null}},
        "serviceEndpointProjectReferences": [{"projectReference": {"id": PLATFORM, "name": "P"}, "name": "x"}]
    });
    assert_eq!(spec.check("ServiceEndpoint", &good), Vec::<String>::new());
    let cases = [
        ("/customField", json!(1), "customField"),
        ("/isReady", json!("yes"), "boolean"),
        ("/id", json!("not-a-guid"), "uuid"),
        ("/authorization/extra", json!("x"), "authorization.extra"),
        (
            "/authorization/parameters/username",
            json!(5),
            "expected a string",
        ),
        (
            "/serviceEndpointProjectReferences/0/projectReference/bogus",
            json!(1),
            "bogus",
        ),
        ("/data", json!({"region": 1}), "data.region"),
    ];
    for (pointer, bad, expected) in cases {
        let mut v = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(if parent.is_empty() { "" } else { parent })
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(key.to_owned(), bad);
        let errors = spec.check("ServiceEndpoint", &v);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{pointer}: {errors:?}"
        );
    }
}

/// Fails unless the operation `name` answers 200 with a `ServiceEndpoint`.
fn assert_answers_an_endpoint(operation: &Value, name: &str) {
    assert_eq!(
        operation["responses"]["200"]["schema"]["$ref"], "#/definitions/ServiceEndpoint",
        "{name}"
    );
}

#[test]
fn the_spec_declares_the_operations_as_the_client_and_the_emulator_use_them() {
    let Some(spec) = swagger() else { return };
    let update = spec.operation(
        "/{organization}/_apis/serviceendpoint/endpoints/{endpointId}",
        "put",
    );
    let params = parameters(update);
    assert_eq!(
        params.get("operation"),
        Some(&false),
        "`operation` is optional: the client leaves it out"
    );
    let body = update["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["in"] == "body")
        .unwrap();
    assert_eq!(body["schema"]["$ref"], "#/definitions/ServiceEndpoint");
    assert_answers_an_endpoint(update, "update");

    let get = spec.operation(
        "/{organization}/{project}/_apis/serviceendpoint/endpoints/{endpointId}",
        "get",
    );
    assert_answers_an_endpoint(get, "get");
    let by_names = spec.operation(
        "/{organization}/{project}/_apis/serviceendpoint/endpoints",
        "get",
    );
    let params = parameters(by_names);
    assert_eq!(params.get("endpointNames"), Some(&true));
    for optional in ["type", "includeFailed", "includeDetails"] {
        assert_eq!(params.get(optional), Some(&false), "{optional}");
    }
    let delete = spec.operation(
        "/{organization}/_apis/serviceendpoint/endpoints/{endpointId}",
        "delete",
    );
    assert_eq!(
        parameters(delete).get("projectIds"),
        Some(&true),
        "projectIds is required on delete"
    );
    let create = spec.operation("/{organization}/_apis/serviceendpoint/endpoints", "post");
    assert_answers_an_endpoint(create, "create");
    spec.operation(
        "/{organization}/_apis/serviceendpoint/endpoints/{endpointId}",
        "patch",
    );
    spec.operation(
        "/{organization}/{project}/_apis/serviceendpoint/{endpointId}/executionhistory",
        "get",
    );
    assert_eq!(
        spec.doc["parameters"]["api-Version"]["required"], true,
        "api-version is required, as the emulator enforces"
    );
}

#[tokio::test]
async fn the_body_the_client_puts_is_a_valid_service_endpoint() {
    let Some(spec) = swagger() else { return };
    let seed = contract_seed();
    for ep in &seed.organizations[0].endpoints {
        spec.assert_valid("ServiceEndpoint", ep, "the contract seed");
    }
    let env = Env::with(seed, fast()).await;
    // What a GET answers, as the client reads it before its PUT.
    let answered = json_of(
        reqwest::Client::new()
            .get(format!(
                "{}/Web/_apis/serviceendpoint/endpoints/{PROD}?api-version=7.1",
                env.emu.org_url("contoso")
            ))
            .basic_auth("", Some(PAT)),
    )
    .await;
    assert!(answered["authorization"]["parameters"]["sessionToken"].is_null());
    env.emu.capture_bodies(true);
    let key = AccessKeyId::parse(NEW_KEY).unwrap();
    env.client
        .set_credentials(
            &env.handle("Web", PROD),
            &key,
            &SecretString::from(NEW_SECRET),
        )
        .await
        .unwrap();
    let captured = env.emu.captured_bodies();
    assert_eq!(captured.len(), 1);
    assert_eq!(captured[0].op, Op::Put);
    let sent = &captured[0].body;
    spec.assert_valid("ServiceEndpoint", sent, "the client's PUT body");
    assert_eq!(sent["id"], PROD);
    assert_eq!(sent["authorization"]["parameters"]["username"], NEW_KEY);
    assert_eq!(sent["authorization"]["parameters"]["password"], NEW_SECRET);
    // The session token goes back as an explicit "", which clears it: sent back null, as the
    // GET answered it, the service would keep the stale one beside the new key.
    assert_eq!(sent["authorization"]["parameters"]["sessionToken"], "");
    let stored = env.stored(PROD);
    assert_eq!(stored["authorization"]["parameters"]["sessionToken"], "");
    // Everything else goes back as the GET answered it.
    assert_eq!(without_credentials(sent), without_credentials(&answered));
}

#[tokio::test]
async fn what_the_emulator_answers_is_valid_service_endpoints() {
    let Some(spec) = swagger() else { return };
    let emu = AdoEmulator::start(contract_seed()).await.unwrap();
    let http = reqwest::Client::new();
    let org = emu.org_url("contoso");
    let call = |m: reqwest::Method, path: &str| {
        http.request(m, format!("{org}/{path}"))
            .basic_auth("", Some(PAT))
    };
    let got = json_of(call(
        reqwest::Method::GET,
        &format!("Platform/_apis/serviceendpoint/endpoints/{PROD}?api-version=7.1"),
    ))
    .await;
    spec.assert_valid("ServiceEndpoint", &got, "GET by id");

    let list = json_of(call(
        reqwest::Method::GET,
        "Web/_apis/serviceendpoint/endpoints?api-version=7.1&endpointNames=aws-prod",
    ))
    .await;
    assert_eq!(list["count"], 1);
    for item in list["value"].as_array().unwrap() {
        spec.assert_valid("ServiceEndpoint", item, "a listed endpoint");
    }

    let mut created = aws_endpoint("aws-new", NEW_KEY, NEW_SECRET, &["Platform"]);
    created["serviceEndpointProjectReferences"][0]["projectReference"]["id"] = json!(PLATFORM);
    spec.assert_valid("ServiceEndpoint", &created, "the POST body");
    let answer = json_of(
        call(
            reqwest::Method::POST,
            "_apis/serviceendpoint/endpoints?api-version=7.1",
        )
        .json(&created),
    )
    .await;
    spec.assert_valid(
        "ServiceEndpoint",
        &answer,
        "the POST answer (with server-filled fields)",
    );

    let answer = json_of(
        call(
            reqwest::Method::PUT,
            &format!("_apis/serviceendpoint/endpoints/{PROD}?api-version=7.1"),
        )
        .json(&got),
    )
    .await;
    spec.assert_valid("ServiceEndpoint", &answer, "the PUT answer");

    // The executionhistory answer's items are ServiceEndpointExecutionRecords.
    let record = json!({"endpointId": PROD, "data": {"id": 12, "planType": "Build", "result": "succeeded",
        "startTime": "2024-05-01T10:00:00Z", "finishTime": "2024-05-01T10:05:00Z",
        "definition": {"id": 3, "name": "deploy"}, "owner": {"id": 99, "name": "deploy #99"}}});
    spec.assert_valid(
        "ServiceEndpointExecutionRecord",
        &record,
        "an execution record",
    );
}
