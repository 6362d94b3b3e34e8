//! The protocol's invariants (ARCHITECTURE.md), checked over a plain view of the world that tests
//! build from the fakes, or from moto and the ADO emulator. Messages name keys masked and never
//! carry a secret.

use std::collections::BTreeMap;

use crate::domain::mask_key_ids;
use crate::secret_value;
use secrecy::SecretString;

/// One IAM key as the world holds it.
#[derive(Debug, Clone)]
pub struct WorldKey {
    /// The key id.
    pub id: String,
    /// Active or not.
    pub active: bool,
    /// Its secret, when the test knows it (keys created during the test).
    pub secret: Option<String>,
    /// Whether it ever signed a request.
    pub used: bool,
}

/// One endpoint's stored credentials (passwords included: only emulators show them).
#[derive(Debug, Clone)]
pub struct WorldEndpoint {
    /// Its name.
    pub name: String,
    /// `username`.
    pub username: Option<String>,
    /// `password`.
    pub password: Option<String>,
}

/// Everything the invariants talk about, for one target.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// The user's keys.
    pub keys: Vec<WorldKey>,
    /// The secret's value at each label (`AWSCURRENT`, …).
    pub stages: BTreeMap<String, String>,
    /// The endpoints.
    pub endpoints: Vec<WorldEndpoint>,
    /// Ids of keys created during the test (by keyrotor).
    pub created: Vec<String>,
}

fn stored(world: &World, label: &str) -> Option<(String, String)> {
    let v = world.stages.get(label)?;
    let k = secret_value::parse_key(&SecretString::from(v.clone()))?;
    use secrecy::ExposeSecret;
    Some((
        k.id.as_str().to_owned(),
        k.secret.expose_secret().to_owned(),
    ))
}

impl World {
    fn key(&self, id: &str) -> Option<&WorldKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Invariant 1: every endpoint names an Active key, and (when the key's secret is known) the
    /// password it stores is that key's secret.
    pub fn pipelines_work(&self) -> Result<(), String> {
        for e in &self.endpoints {
            let Some(u) = &e.username else {
                return Err(format!("endpoint '{}' holds no key", e.name));
            };
            let Some(k) = self.key(u) else {
                return Err(mask_key_ids(&format!(
                    "endpoint '{}' holds {u}, which does not exist",
                    e.name
                )));
            };
            if !k.active {
                return Err(mask_key_ids(&format!(
                    "endpoint '{}' holds {u}, which is Inactive",
                    e.name
                )));
            }
            if let (Some(s), Some(p)) = (&k.secret, &e.password)
                && s != p
            {
                return Err(mask_key_ids(&format!(
                    "endpoint '{}' holds {u} with a password that is not its secret",
                    e.name
                )));
            }
        }
        Ok(())
    }

    /// Invariant 2: every key created by keyrotor that still exists is recoverable from
    /// AWSCURRENT, AWSPENDING or AWSPREVIOUS — except, when `allow_window`, a never-used key no
    /// endpoint holds (a crash between CreateAccessKey and PutSecretValue).
    pub fn no_secret_lost(&self, allow_window: bool) -> Result<(), String> {
        let staged: Vec<(String, String)> = ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"]
            .iter()
            .filter_map(|l| stored(self, l))
            .collect();
        for id in &self.created {
            let Some(k) = self.key(id) else { continue };
            let recoverable = staged
                .iter()
                .any(|(sid, s)| sid == id && k.secret.as_ref().is_none_or(|ks| ks == s));
            if recoverable {
                continue;
            }
            let held = self
                .endpoints
                .iter()
                .any(|e| e.username.as_deref() == Some(id));
            if allow_window && !held && !k.used {
                continue;
            }
            return Err(mask_key_ids(&format!(
                "key {id} exists but its secret is in no stage of the secret"
            )));
        }
        Ok(())
    }

    /// Invariant 3: exactly one Active key, at AWSCURRENT, held by every endpoint; at most one
    /// other key, Inactive.
    pub fn converged(&self) -> Result<(), String> {
        let active: Vec<&WorldKey> = self.keys.iter().filter(|k| k.active).collect();
        if active.len() != 1 {
            return Err(format!(
                "{} active keys, expected exactly one",
                active.len()
            ));
        }
        let a = &active[0];
        match stored(self, "AWSCURRENT") {
            Some((id, _)) if id == a.id => {}
            _ => {
                return Err(mask_key_ids(&format!(
                    "AWSCURRENT does not hold the active key {}",
                    a.id
                )));
            }
        }
        if self.stages.contains_key("AWSPENDING") {
            return Err("AWSPENDING is still set".into());
        }
        for e in &self.endpoints {
            if e.username.as_deref() != Some(a.id.as_str()) {
                return Err(mask_key_ids(&format!(
                    "endpoint '{}' does not hold the active key {}",
                    e.name, a.id
                )));
            }
        }
        if self.keys.len() > 2 {
            return Err(format!("{} keys exist", self.keys.len()));
        }
        Ok(())
    }

    /// Invariant 4: never a third key.
    pub fn at_most_two_keys(&self) -> Result<(), String> {
        if self.keys.len() > 2 {
            Err(format!("{} keys exist", self.keys.len()))
        } else {
            Ok(())
        }
    }

    /// Invariants 1, 2 (with the crash window allowed) and 4: what must hold at every instant.
    pub fn always(&self) -> Result<(), String> {
        self.pipelines_work()?;
        self.no_secret_lost(true)?;
        self.at_most_two_keys()
    }

    /// What must hold after a successful run: 1, 2 (strict), 3, 4.
    pub fn after_success(&self) -> Result<(), String> {
        self.pipelines_work()?;
        self.no_secret_lost(false)?;
        self.converged()
    }
}
