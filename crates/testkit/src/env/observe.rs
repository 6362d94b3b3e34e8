//! The world as it is, read from outside: IAM and Secrets Manager straight from moto, the
//! connections from the emulator's store (passwords included).

use std::collections::BTreeMap;

use aws_sdk_iam::types::StatusType;
use keyrotor_core::invariants::{World, WorldEndpoint, WorldKey};
use serde_json::Value;

use crate::ado::EmulatorState;

use super::{ORG, SECRET, TestEnv, USER};

/// The labels keyrotor uses.
const STAGES: [&str; 3] = ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"];

/// IAM keys and the secret's versions, as moto holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsState {
    /// Key id → `Active` / `Inactive`.
    pub keys: BTreeMap<String, String>,
    /// Version id → its stages (sorted).
    pub versions: BTreeMap<String, Vec<String>>,
    /// Stage → the secret string it holds (read with an explicit `VersionStage`).
    pub stages: BTreeMap<String, String>,
}

impl AwsState {
    /// The Active keys.
    pub fn active_keys(&self) -> Vec<&str> {
        self.keys
            .iter()
            .filter(|(_, s)| s.as_str() == "Active")
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The JSON a stage holds, if any (a string that is not JSON as a JSON string).
    pub fn stage_json(&self, stage: &str) -> Option<Value> {
        self.stages
            .get(stage)
            .map(|s| serde_json::from_str(s).unwrap_or(Value::String(s.clone())))
    }

    /// The key id a stage holds, if it holds a key.
    pub fn stage_key(&self, stage: &str) -> Option<String> {
        self.stage_json(stage)?["AccessKeyId"]
            .as_str()
            .map(str::to_owned)
    }
}

/// Everything a run that changes nothing must leave as it was: IAM and the secret as moto holds
/// them, and everything the emulator holds (connections with their credentials, permissions).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The first target's keys and secret.
    pub aws: AwsState,
    /// The emulator's whole store.
    pub ado: EmulatorState,
}

fn non_empty(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

impl TestEnv {
    /// Every version of `secret`, labelled or not: `(version id, sorted stages, value)`; none
    /// when the secret does not exist.
    async fn versions_of(&self, secret: &str) -> Vec<(String, Vec<String>, String)> {
        let listed = match self
            .sm
            .list_secret_version_ids()
            .secret_id(secret)
            .include_deprecated(true)
            .send()
            .await
        {
            Ok(l) => l,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                return Vec::new();
            }
            Err(e) => panic!("listing the versions of {secret}: {e:?}"),
        };
        let mut out = Vec::new();
        for v in listed.versions() {
            let id = v.version_id().expect("a version has an id").to_owned();
            let got = self
                .sm
                .get_secret_value()
                .secret_id(secret)
                .version_id(&id)
                .send()
                .await
                .expect("reading a version of the secret");
            let mut stages: Vec<String> = v.version_stages().to_vec();
            stages.sort();
            out.push((
                id,
                stages,
                got.secret_string().unwrap_or_default().to_owned(),
            ));
        }
        out
    }

    /// The value of every version of the first target's secret, labelled or not.
    pub async fn secret_versions(&self) -> Vec<String> {
        self.versions_of(SECRET)
            .await
            .into_iter()
            .map(|(_, _, v)| v)
            .collect()
    }

    /// The first target's user's keys with their status, and its secret's versions and
    /// stages, as moto holds them now.
    pub async fn aws_state(&self) -> AwsState {
        let mut keys = BTreeMap::new();
        let listed = self
            .iam
            .list_access_keys()
            .user_name(USER)
            .send()
            .await
            .expect("listing the keys");
        for k in listed.access_key_metadata() {
            let status = match k.status() {
                Some(StatusType::Active) => "Active",
                Some(StatusType::Inactive) => "Inactive",
                other => panic!("unexpected key status {other:?}"),
            };
            keys.insert(
                k.access_key_id().expect("a key has an id").to_owned(),
                status.to_owned(),
            );
        }
        let versions: BTreeMap<String, Vec<String>> = self
            .versions_of(SECRET)
            .await
            .into_iter()
            .map(|(id, stages, _)| (id, stages))
            .collect();
        let mut stages = BTreeMap::new();
        for stage in STAGES {
            if !versions.values().any(|s| s.iter().any(|l| l == stage)) {
                continue;
            }
            let got = self
                .sm
                .get_secret_value()
                .secret_id(SECRET)
                .version_stage(stage)
                .send()
                .await
                .expect("reading a stage of the secret");
            stages.insert(
                stage.to_owned(),
                got.secret_string().unwrap_or_default().to_owned(),
            );
        }
        AwsState {
            keys,
            versions,
            stages,
        }
    }

    /// Every connection of the emulated organization: its name, the key it holds (`username`)
    /// and its `password` (`None` when empty).
    pub fn connections(&self) -> Vec<WorldEndpoint> {
        let state = self.ado.state();
        let Some(org) = state.org(ORG) else {
            return Vec::new();
        };
        org.endpoints
            .iter()
            .map(|ep| {
                let p = &ep["authorization"]["parameters"];
                WorldEndpoint {
                    name: ep["name"].as_str().unwrap_or_default().to_owned(),
                    username: non_empty(&p["username"]),
                    password: non_empty(&p["password"]),
                }
            })
            .collect()
    }

    /// The world now, for [`TestEnv::assert_unchanged`].
    pub async fn snapshot(&self) -> Snapshot {
        Snapshot {
            aws: self.aws_state().await,
            ado: self.ado.state(),
        }
    }

    /// Panics unless IAM's keys (with status), the secret's versions and stages and everything
    /// the emulator holds are as in `before`, and no write request reached Azure DevOps since
    /// its log was last cleared.
    pub async fn assert_unchanged(&self, before: &Snapshot) {
        let now = self.snapshot().await;
        assert_eq!(
            now.aws, before.aws,
            "AWS unchanged: IAM keys (with status), the secret's versions and stages"
        );
        assert_eq!(now.ado, before.ado, "Azure DevOps unchanged");
        assert_eq!(
            self.write_requests(),
            Vec::<String>::new(),
            "no write reached Azure DevOps"
        );
    }

    /// The first target's world as the invariants see it: its user's keys (status, last use,
    /// secret when known: the initial one, or a version of the secret holding it), the
    /// secret's stages, and the connections the target names, with what they hold.
    pub async fn world(&self) -> World {
        let aws = self.aws_state().await;
        let mut pairs = vec![(self.initial_key.clone(), self.initial_secret.clone())];
        for (_, _, value) in self.versions_of(SECRET).await {
            if let Ok(j) = serde_json::from_str::<Value>(&value)
                && let (Some(i), Some(s)) =
                    (j["AccessKeyId"].as_str(), j["SecretAccessKey"].as_str())
            {
                pairs.push((i.to_owned(), s.to_owned()));
            }
        }
        let mut world = World::default();
        for (id, status) in &aws.keys {
            let used = self
                .iam
                .get_access_key_last_used()
                .access_key_id(id)
                .send()
                .await
                .expect("GetAccessKeyLastUsed")
                .access_key_last_used()
                .and_then(|u| u.last_used_date())
                .is_some();
            world.keys.push(WorldKey {
                id: id.clone(),
                active: status == "Active",
                secret: pairs.iter().find(|(i, _)| i == id).map(|(_, s)| s.clone()),
                used,
            });
        }
        world.stages = aws.stages;
        let names: Vec<&str> = self.targets[0]
            .endpoints
            .iter()
            .map(|(_, n)| n.as_str())
            .collect();
        world.endpoints = self
            .connections()
            .into_iter()
            .filter(|c| names.contains(&c.name.as_str()))
            .collect();
        world.created = world
            .keys
            .iter()
            .map(|k| k.id.clone())
            .filter(|id| id != &self.initial_key)
            .collect();
        world
    }

    /// Learns every secret access key and key id that moto and the emulator hold now: every
    /// version of every target's secret, every key of every target's user, every connection's
    /// username, password and session token.
    pub async fn learn(&self) {
        let mut secrets = Vec::new();
        let mut ids = Vec::new();
        for t in &self.targets {
            for (_, _, text) in self.versions_of(&t.secret).await {
                match serde_json::from_str::<Value>(&text) {
                    Ok(j) => {
                        secrets.extend(j["SecretAccessKey"].as_str().map(str::to_owned));
                        ids.extend(j["AccessKeyId"].as_str().map(str::to_owned));
                    }
                    // Not JSON: a bare secret (the older design's); itself a secret.
                    Err(_) if !text.is_empty() => secrets.push(text),
                    Err(_) => {}
                }
            }
            if let Ok(keys) = self.iam.list_access_keys().user_name(&t.user).send().await {
                ids.extend(
                    keys.access_key_metadata()
                        .iter()
                        .filter_map(|k| k.access_key_id().map(str::to_owned)),
                );
            }
        }
        for org in self.ado.state().organizations.values() {
            for ep in &org.endpoints {
                let p = &ep["authorization"]["parameters"];
                for field in ["password", "sessionToken"] {
                    secrets.extend(non_empty(&p[field]));
                }
                ids.extend(non_empty(&p["username"]));
            }
        }
        let mut known = self.lock_known();
        known.secrets.extend(secrets);
        known.key_ids.extend(ids);
    }
}
