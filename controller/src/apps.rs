//! Virtual hosts and their applications: the namespaces push tasks live in.
//!
//! Virtual hosts come from configuration (`default` always exists). Applications live in
//! the state store; the configured ones are created there at start when absent, and more
//! can be created through the API.

use std::collections::BTreeSet;
use std::sync::Arc;

use pushcast_proto::ApiError;
use pushcast_proto::model::AppConfig;
use pushcast_store::{Compare, Op, Store, Txn};

use crate::store_error::{api_error, decode, encode};
use pushcast_proto::keys;
use pushcast_proto::vhosts::{self, VhostConfig};

/// Changes to an app; absent fields are left as they are.
#[derive(Debug, Clone, Default)]
pub struct AppPatch {
    pub open_publish: Option<bool>,
    /// Replaces the callbacks as a whole.
    pub callbacks: Option<pushcast_proto::model::Callbacks>,
    /// Sets (`Some(Some)`) or clears (`Some(None)`) the app's SRT passphrase.
    pub srt_passphrase: Option<Option<String>>,
    /// Source-continuity settings given.
    pub continuity: Continuity,
    /// Replaces the app's auto-push rules as a whole.
    pub rules: Option<Vec<pushcast_proto::rules::PushRule>>,
}

/// An app's source-continuity settings as a request gives them (absent: unchanged).
#[derive(Debug, Clone, Default)]
pub struct Continuity {
    pub reconnect_window_ms: Option<u64>,
    pub input_stall_ms: Option<u64>,
    pub switch_back_to_primary: Option<bool>,
}

#[derive(Clone)]
pub struct Apps {
    store: Arc<dyn Store>,
    vhosts: Arc<BTreeSet<String>>,
}

impl Apps {
    pub fn new(store: Arc<dyn Store>, vhosts: impl IntoIterator<Item = String>) -> Apps {
        let mut set: BTreeSet<String> = vhosts.into_iter().collect();
        set.insert("default".to_string());
        Apps {
            store,
            vhosts: Arc::new(set),
        }
    }

    /// Creates the configured apps that do not exist yet, and gives the ones the file
    /// has rules for those rules (the file wins; the app's other settings stay).
    pub async fn seed(&self, apps: &[AppConfig]) -> Result<(), ApiError> {
        for app in apps {
            self.check_vhost(&app.vhost)?;
            let key = keys::app(&app.vhost, &app.name);
            let txn = Txn::new()
                .when(Compare::Absent(key.clone()))
                .and_then(Op::put(key.clone(), encode(app)?));
            let created = self.store.txn(txn).await.map_err(api_error)?.succeeded;
            if !created && !app.rules.is_empty() {
                for _ in 0..5 {
                    let Some(kv) = self.store.get(&key).await.map_err(api_error)? else {
                        break;
                    };
                    let mut stored: AppConfig = decode(&kv.key, &kv.value)?;
                    if stored.rules == app.rules {
                        break;
                    }
                    stored.rules = app.rules.clone();
                    let txn = Txn::new()
                        .when(Compare::ModRevision(key.clone(), kv.mod_revision))
                        .and_then(Op::put(key.clone(), encode(&stored)?));
                    if self.store.txn(txn).await.map_err(api_error)?.succeeded {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn check_vhost(&self, vhost: &str) -> Result<(), ApiError> {
        if self.vhosts.contains(vhost) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "Could not find the virtual host: [{vhost}]"
            )))
        }
    }

    /// The app, after checking its vhost: the 404s of the contract, in its order.
    pub async fn require(&self, vhost: &str, app: &str) -> Result<AppConfig, ApiError> {
        self.check_vhost(vhost)?;
        let key = keys::app(vhost, app);
        match self.store.get(&key).await.map_err(api_error)? {
            Some(kv) => decode(&key, &kv.value),
            None => Err(ApiError::not_found(format!(
                "Could not find the application: [{vhost}/{app}]"
            ))),
        }
    }

    pub async fn create(&self, app: AppConfig) -> Result<AppConfig, ApiError> {
        self.check_vhost(&app.vhost)?;
        validate_name(&app.name)?;
        let key = keys::app(&app.vhost, &app.name);
        let txn = Txn::new()
            .when(Compare::Absent(key.clone()))
            .and_then(Op::put(key, encode(&app)?));
        if self.store.txn(txn).await.map_err(api_error)?.succeeded {
            Ok(app)
        } else {
            Err(ApiError::conflict(format!(
                "The application already exists: [{}/{}]",
                app.vhost, app.name
            )))
        }
    }

    /// Names of the apps of a vhost, sorted.
    pub async fn list(&self, vhost: &str) -> Result<Vec<String>, ApiError> {
        self.check_vhost(vhost)?;
        let listing = self
            .store
            .list(&keys::apps_of(vhost))
            .await
            .map_err(api_error)?;
        listing
            .kvs
            .iter()
            .map(|kv| decode::<AppConfig>(&kv.key, &kv.value).map(|a| a.name))
            .collect()
    }

    pub async fn patch(
        &self,
        vhost: &str,
        name: &str,
        patch: AppPatch,
    ) -> Result<AppConfig, ApiError> {
        let key = keys::app(vhost, name);
        // Compare-and-swap so two concurrent patches cannot lose one another's fields.
        for _ in 0..5 {
            self.check_vhost(vhost)?;
            let Some(kv) = self.store.get(&key).await.map_err(api_error)? else {
                return Err(ApiError::not_found(format!(
                    "Could not find the application: [{vhost}/{name}]"
                )));
            };
            let mut app: AppConfig = decode(&key, &kv.value)?;
            if let Some(open) = patch.open_publish {
                app.open_publish = open;
            }
            if let Some(c) = &patch.callbacks {
                app.callbacks = c.clone();
            }
            if let Some(rules) = &patch.rules {
                app.rules = rules.clone();
            }
            let c = &patch.continuity;
            if let Some(ms) = c.reconnect_window_ms {
                app.reconnect_window_ms = ms;
            }
            if c.input_stall_ms.is_some() {
                app.input_stall_ms = c.input_stall_ms;
            }
            if c.switch_back_to_primary.is_some() {
                app.switch_back_to_primary = c.switch_back_to_primary;
            }
            if let Some(p) = &patch.srt_passphrase {
                app.srt_passphrase = p.clone();
            }
            let txn = Txn::new()
                .when(Compare::ModRevision(key.clone(), kv.mod_revision))
                .and_then(Op::put(key.clone(), encode(&app)?));
            if self.store.txn(txn).await.map_err(api_error)?.succeeded {
                return Ok(app);
            }
        }
        Err(ApiError::conflict(format!(
            "The application changed concurrently, try again: [{vhost}/{name}]"
        )))
    }

    /// Deletes the app with all its tasks, their statuses and destination claims.
    pub async fn delete(&self, vhost: &str, name: &str) -> Result<(), ApiError> {
        self.require(vhost, name).await?;
        let tasks = self
            .store
            .list(&keys::tasks_of(vhost, name))
            .await
            .map_err(api_error)?;
        let txn = Txn::new()
            .when(Compare::Present(keys::app(vhost, name)))
            .and_then(Op::delete(keys::app(vhost, name)))
            .and_then(Op::DeletePrefix(keys::tasks_of(vhost, name)))
            .and_then(Op::DeletePrefix(keys::statuses_of(vhost, name)));
        self.store.txn(txn).await.map_err(api_error)?;
        // The destination claims go after (one transaction could exceed etcd's operation
        // limit). A claim left behind names a task that no longer exists, and `pushes`
        // takes such a claim over, so a failure here blocks nothing.
        for kv in &tasks.kvs {
            if let Ok(spec) = decode::<pushcast_proto::model::TaskSpec>(&kv.key, &kv.value) {
                for d in spec.destinations() {
                    let _ = self.store.delete(&keys::destination(&d.address())).await;
                }
            }
        }
        Ok(())
    }
}

/// A configured vhost: its name, and its host names when the config lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostSeed {
    pub name: String,
    /// `Some`: written at start (the config file wins over API edits); `None`: the
    /// stored host names are kept.
    pub hosts: Option<Vec<String>>,
}

impl Apps {
    /// The configured vhosts with their host names, sorted by name.
    pub async fn vhosts(&self) -> Result<Vec<VhostConfig>, ApiError> {
        let stored = self.stored_vhosts().await?.0;
        Ok(self
            .vhosts
            .iter()
            .map(|name| {
                stored
                    .iter()
                    .find(|v| v.name == *name)
                    .cloned()
                    .unwrap_or_else(|| VhostConfig {
                        name: name.clone(),
                        hosts: Vec::new(),
                    })
            })
            .collect())
    }

    /// One configured vhost (404 as the contract says otherwise).
    pub async fn vhost(&self, name: &str) -> Result<VhostConfig, ApiError> {
        self.check_vhost(name)?;
        let all = self.vhosts().await?;
        Ok(all.into_iter().find(|v| v.name == name).unwrap_or_default())
    }

    /// Replaces the host names of a vhost. 400 for a bad name, 409 when another vhost
    /// answers to one of them already. Compare-and-swap over every vhost record, so two
    /// concurrent calls cannot give one name to two vhosts.
    pub async fn set_hosts(&self, name: &str, hosts: &[String]) -> Result<VhostConfig, ApiError> {
        self.check_vhost(name)?;
        let hosts = vhosts::normalize_hosts(hosts).map_err(ApiError::bad_request)?;
        let wanted = VhostConfig {
            name: name.to_string(),
            hosts,
        };
        for _ in 0..5 {
            let (stored, revisions) = self.stored_vhosts().await?;
            if let Some((other, host)) = vhosts::conflict(&stored, &wanted) {
                return Err(ApiError::conflict(format!(
                    "The host name [{host}] belongs to the virtual host [{other}]"
                )));
            }
            let key = keys::vhost(name);
            let mut txn = Txn::new();
            for (k, rev) in &revisions {
                txn = txn.when(Compare::ModRevision(k.clone(), *rev));
            }
            if !revisions.iter().any(|(k, _)| *k == key) {
                txn = txn.when(Compare::Absent(key.clone()));
            }
            let txn = txn.and_then(Op::put(key, encode(&wanted)?));
            if self.store.txn(txn).await.map_err(api_error)?.succeeded {
                return Ok(wanted);
            }
        }
        Err(ApiError::conflict(format!(
            "The virtual hosts changed concurrently, try again: [{name}]"
        )))
    }

    /// Writes the configured host names, and removes the records of vhosts that are no
    /// longer configured (the ingest would otherwise still pick them).
    pub async fn seed_vhosts(&self, seeds: &[VhostSeed]) -> Result<(), ApiError> {
        for seed in seeds {
            if let Some(hosts) = &seed.hosts {
                self.set_hosts(&seed.name, hosts).await?;
            }
        }
        let (stored, _) = self.stored_vhosts().await?;
        for v in stored.iter().filter(|v| !self.vhosts.contains(&v.name)) {
            self.store
                .delete(&keys::vhost(&v.name))
                .await
                .map_err(api_error)?;
        }
        Ok(())
    }

    /// The vhost records in the store, and each key's revision.
    async fn stored_vhosts(&self) -> Result<(Vec<VhostConfig>, Vec<(String, i64)>), ApiError> {
        let listing = self.store.list(keys::VHOSTS).await.map_err(api_error)?;
        let mut all = Vec::with_capacity(listing.kvs.len());
        let mut revisions = Vec::with_capacity(listing.kvs.len());
        for kv in &listing.kvs {
            all.push(decode::<VhostConfig>(&kv.key, &kv.value)?);
            revisions.push((kv.key.clone(), kv.mod_revision));
        }
        Ok((all, revisions))
    }
}

/// App names become URL segments and store keys; `:` would collide with action syntax.
fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid application name: '{name}' (use letters, digits, '-', '_', '.')"
        )))
    }
}
