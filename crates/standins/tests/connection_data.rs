//! The emulator's `GET {org}/_apis/connectionData`: the organization's id as `instanceId` (the
//! GUID of its OIDC issuer), behind the same authentication and api-version rules as the rest.

use base64::Engine as _;
use keyrotor_standins::ado::{AdoEmulator, OrgSeed, Scope, Seed};
use reqwest::StatusCode;
use serde_json::Value;

const PAT: &str = "manage-pat-7f3a9c";
const ORG_ID: &str = "0f3c2b1a-1111-4222-8333-444455556666";

async fn get(emu: &AdoEmulator, org: &str, query: &str, pat: &str) -> (StatusCode, String) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(":{pat}"));
    let resp = reqwest::Client::new()
        .get(format!("{}/_apis/connectionData{query}", emu.org_url(org)))
        .header("Authorization", format!("Basic {basic}"))
        .send()
        .await
        .expect("the emulator answers");
    let status = resp.status();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn connection_data_answers_the_seeded_organization_id_as_instance_id() {
    let seed = Seed::new()
        .org(
            OrgSeed::new("contoso")
                .with_id(ORG_ID)
                .pat(PAT, Scope::Read),
        )
        .org(OrgSeed::new("fabrikam").pat(PAT, Scope::Read));
    let emu = AdoEmulator::start(seed).await.unwrap();

    let (status, body) = get(&emu, "contoso", "?api-version=7.1-preview.1", PAT).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["instanceId"], ORG_ID, "{v:#}");
    assert!(v["authenticatedUser"].is_object(), "{v:#}");

    // Unseeded: an id derived from the name, the same every time, shaped like a GUID.
    let (_, body) = get(&emu, "fabrikam", "?api-version=7.1-preview.1", PAT).await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["instanceId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "{id}");
    assert_ne!(id, ORG_ID);
    assert_eq!(emu.state().org("fabrikam").unwrap().id, id);

    // The resource is in preview: a released version alone is refused, like no version.
    let (status, body) = get(&emu, "contoso", "?api-version=7.1", PAT).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("-preview"), "{body}");
    let (status, _) = get(&emu, "contoso", "", PAT).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A wrong PAT gets the sign-in page, as everywhere.
    let (status, body) = get(&emu, "contoso", "?api-version=7.1-preview.1", "wrong").await;
    assert_eq!(status, StatusCode::NON_AUTHORITATIVE_INFORMATION);
    assert!(body.contains("Sign in"), "{body}");
}
