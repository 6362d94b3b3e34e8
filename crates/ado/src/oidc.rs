//! The Azure DevOps side of `keyrotor migrate-oidc` ([`OidcConnections`]): the organization's id
//! (`instanceId` of `GET {org}/_apis/connectionData`), and the switch of a connection, in place,
//! from its key to OIDC and back.
//!
//! A switch GETs the whole `ServiceEndpoint` object, changes only the authorization parameters
//! named below, and PUTs it back to the same id. To OIDC: `useOIDC` `"true"`, `assumeRoleArn`
//! the role, and `username`, `password`, `sessionToken` sent as `""`: a confidential field sent
//! back `null` is kept, and a stored secret key beside an empty key id fails every task with
//! "Need to define or omit both Access Key ID and Secret Access Key" (aws-toolkit-azure-devops
//! #564). Back to the key: `username` and `password` the key, `sessionToken` `""`, `useOIDC` and
//! `assumeRoleArn` as they were before the switch.

use async_trait::async_trait;
use keyrotor_core::domain::OrgUrl;
use keyrotor_core::oidc_ports::{BackOnKey, ConnectionAuth, OidcConnections};
use keyrotor_core::ports::{EndpointHandle, PortError, PortErrorKind, PortResult};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::client::{AdoClient, api_url, gone};
use crate::endpoint::{self, parameter, str_at};

/// The version `connectionData` is asked with (its resource is in preview, as Microsoft's own
/// client libraries call it).
const CONNECTION_DATA_VERSION: &str = "7.1-preview.1";

impl AdoClient {
    /// GET, edit the parameters, PUT back to the same id; `secret` is scrubbed from errors. The
    /// object sent is at most `max_read_age` old when the PUT goes out: past that (the rate limit
    /// held it back) the connection is read again and the edit made on the new read, so that
    /// what a person changed meanwhile stays.
    async fn put_edited(
        &self,
        handle: &EndpointHandle,
        edit: impl Fn(&mut serde_json::Map<String, Value>),
        secret: Option<&str>,
        check: impl FnOnce(&Value) -> bool,
    ) -> PortResult<()> {
        let (mut object, mut read_at) = self.get_raw(handle).await?.ok_or_else(|| gone(handle))?;
        let scrub: Vec<&str> = secret.into_iter().collect();
        let mut rereads = 0u32;
        let (answer, same_id) = loop {
            if !str_at(&object, "/type").is_some_and(|t| t.eq_ignore_ascii_case("aws")) {
                return Err(PortError::new(
                    PortErrorKind::Refused,
                    format!("service connection {} is not an AWS connection", handle.id),
                ));
            }
            let name = endpoint::name_in(&object, handle.project.as_str());
            let params = object
                .pointer_mut("/authorization/parameters")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| {
                    PortError::new(
                        PortErrorKind::Refused,
                        "the service connection has no authorization parameters",
                    )
                })?;
            edit(params);
            match self.put_in_place(handle, object, &scrub, read_at).await? {
                Some(done) => break done,
                None => {
                    (object, read_at) = self
                        .read_again(handle, &name, read_at, &mut rereads)
                        .await?;
                }
            }
        };
        if !same_id || !check(&answer) {
            return Err(PortError::new(
                PortErrorKind::Failed,
                format!(
                    "Azure DevOps accepted the update of service connection {} but its answer does not show the change under the same id",
                    handle.id
                ),
            ));
        }
        Ok(())
    }
}

fn set(params: &mut serde_json::Map<String, Value>, name: &str, value: &str) {
    params.insert(name.to_owned(), Value::String(value.to_owned()));
}

#[async_trait]
impl OidcConnections for AdoClient {
    async fn organization_id(&self, org: &OrgUrl) -> PortResult<String> {
        let mut url = api_url(org, &["_apis", "connectionData"], &[])?;
        url.set_query(Some(&format!("api-version={CONNECTION_DATA_VERSION}")));
        let answer = self.get_json(&url).await?;
        str_at(&answer.body, "/instanceId")
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                PortError::new(
                    PortErrorKind::Failed,
                    format!("Azure DevOps' connectionData of {org} has no instanceId (the organization id)"),
                )
            })
    }

    async fn auth(&self, handle: &EndpointHandle) -> PortResult<Option<ConnectionAuth>> {
        let Some((v, _)) = self.get_raw(handle).await? else {
            return Ok(None);
        };
        let top = str_at(&v, "/name").unwrap_or_default().to_owned();
        let projects = v
            .get("serviceEndpointProjectReferences")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| {
                let project = str_at(r, "/projectReference/name")?.to_owned();
                let name = str_at(r, "/name")
                    .filter(|n| !n.is_empty())
                    .unwrap_or(&top)
                    .to_owned();
                Some((project, name))
            })
            .collect();
        Ok(Some(ConnectionAuth {
            handle: handle.clone(),
            name: endpoint::name_in(&v, handle.project.as_str()),
            kind: str_at(&v, "/type").unwrap_or_default().to_owned(),
            projects,
            username: parameter(&v, "username").map(str::to_owned),
            use_oidc: parameter(&v, "useOIDC").unwrap_or_default().to_owned(),
            assume_role: parameter(&v, "assumeRoleArn")
                .unwrap_or_default()
                .to_owned(),
        }))
    }

    async fn switch_to_oidc(&self, handle: &EndpointHandle, role_arn: &str) -> PortResult<()> {
        self.put_edited(
            handle,
            |p| {
                set(p, "useOIDC", "true");
                set(p, "assumeRoleArn", role_arn);
                for cleared in ["username", "password", "sessionToken"] {
                    set(p, cleared, "");
                }
            },
            None,
            |answer| {
                endpoint::uses_oidc(answer)
                    && parameter(answer, "assumeRoleArn") == Some(role_arn)
                    && parameter(answer, "username").is_none()
            },
        )
        .await?;
        tracing::info!(id = %handle.id, role = role_arn, "service connection switched to OIDC in place");
        Ok(())
    }

    async fn switch_to_key(&self, handle: &EndpointHandle, back: BackOnKey<'_>) -> PortResult<()> {
        let secret = back.secret.expose_secret();
        self.put_edited(
            handle,
            |p| {
                set(p, "username", back.key.as_str());
                set(p, "password", secret);
                set(p, "sessionToken", "");
                set(p, "useOIDC", back.use_oidc);
                set(p, "assumeRoleArn", back.assume_role);
            },
            Some(secret),
            |answer| {
                parameter(answer, "username") == Some(back.key.as_str())
                    && !endpoint::uses_oidc(answer)
            },
        )
        .await?;
        tracing::info!(id = %handle.id, key = %back.key, "service connection put back on its key in place");
        Ok(())
    }
}
