//! Executing the actions plugins decide, through targets the operator
//! configured. A plugin names a target; the URL, method, headers and secrets
//! are here, never in the sandbox.
//!
//! Each action carries its idempotency key (see
//! [`crate::pipeline::action_key`]); the ledger records it before and after,
//! so a replay skips what finished. Executors send the key along (`Idempotency-Key`)
//! so a receiver can close the one window the ledger cannot: a crash after
//! the call and before the commit.

mod attempts;
mod capping;
mod crm;
mod email;
mod record;
mod stored;
mod webhook;

use crate::config::TargetConfig;
use crate::plugin::contract::Action;
use crate::secrets::Secrets;
use std::collections::BTreeMap;

pub use crm::CrmTarget;
pub use email::EmailTarget;
pub use record::RecordTarget;
pub use stored::{action_json, ActionView, StoredAction};
pub use webhook::{signature, WebhookTarget};

/// One action to run.
#[derive(Debug, Clone)]
pub struct ActionRequest {
    /// The idempotency key, [`crate::pipeline::action_key`].
    pub key: String,
    /// The source row's identity (shared by the row's actions).
    pub identity: std::sync::Arc<str>,
    /// What the plugin asked for.
    pub action: Action,
}

/// How an action ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionResult {
    /// It happened; the outcome code (`http_200`, `recorded`).
    Done(String),
    /// It failed for good; dead-lettered with the outcome and reason.
    Failed {
        /// `http_<code>`, `timedout`, `error`, `no_target`, `wrong_target`.
        outcome: String,
        /// What went wrong.
        reason: String,
    },
}

/// A configured target.
pub enum Target {
    /// An HTTP call.
    Webhook(Box<WebhookTarget>),
    /// An e-mail over SMTP.
    Email(Box<EmailTarget>),
    /// A CRM upsert.
    Crm(Box<CrmTarget>),
    /// A line in a file (shared with the blocking job that syncs it).
    Record(std::sync::Arc<RecordTarget>),
}

/// The target an action names.
pub fn target_of(action: &Action) -> &str {
    describe(action).1
}

/// The name of an action's kind and its target.
fn describe(action: &Action) -> (&'static str, &str) {
    match action {
        Action::Email(a) => ("email", &a.target),
        Action::Webhook(a) => ("webhook", &a.target),
        Action::CrmUpdate(a) => ("crm_update", &a.target),
    }
}

fn wrong_target(name: &str, is: &str, kind: &str) -> ActionResult {
    ActionResult::Failed {
        outcome: "wrong_target".into(),
        reason: format!("target `{name}` is {is}; a {kind} action cannot use it"),
    }
}

/// A pipeline's targets by name, each with its cap.
pub struct Executors {
    targets: BTreeMap<String, (Target, Option<capping::Capping>)>,
}

impl Executors {
    /// Builds the targets of one pipeline; `prefix` is its config key.
    /// Reads their secrets through `secrets` (the pipeline's tenant's) and
    /// opens files: errors name the key.
    pub fn build(
        configs: &BTreeMap<String, TargetConfig>,
        prefix: &str,
        secrets: &Secrets,
    ) -> anyhow::Result<Self> {
        let mut targets = BTreeMap::new();
        for (name, config) in configs {
            let key = format!("{prefix}.targets.{name}");
            let cap = config.capping().map(capping::Capping::new);
            let target = match config {
                TargetConfig::Webhook(w) => {
                    Target::Webhook(Box::new(WebhookTarget::build(w, &key, secrets)?))
                }
                TargetConfig::Email(m) => {
                    Target::Email(Box::new(EmailTarget::build(m, &key, secrets)?))
                }
                TargetConfig::Crm(c) => Target::Crm(Box::new(CrmTarget::build(c, &key, secrets)?)),
                TargetConfig::Record(r) => {
                    Target::Record(std::sync::Arc::new(RecordTarget::open(&r.path, &key)?))
                }
            };
            targets.insert(name.clone(), (target, cap));
        }
        Ok(Self { targets })
    }

    /// Makes what record targets wrote durable, before the page commits:
    /// file syncs, on the blocking pool rather than the pipeline's thread.
    pub async fn sync(&self) -> std::io::Result<()> {
        let records: Vec<_> = (self.targets.values())
            .filter_map(|(target, _)| match target {
                Target::Record(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        let sync = move || records.iter().try_for_each(|r| r.sync());
        let synced = crate::profile::spawn_blocking(crate::profile::Stage::Actions, sync);
        synced.await.map_err(std::io::Error::other)?
    }

    /// Runs one action to its final result.
    pub async fn execute(&self, request: &ActionRequest) -> ActionResult {
        let (kind, name) = describe(&request.action);
        let Some((target, cap)) = self.targets.get(name) else {
            return ActionResult::Failed {
                outcome: "no_target".into(),
                reason: format!("the plugin asked for {kind} target `{name}`, which the pipeline's config does not define"),
            };
        };
        let _permit = match cap.as_ref().map(|c| c.admit(name)) {
            Some(admit) => match admit.await {
                Ok(permit) => Some(permit),
                Err(reason) => {
                    return ActionResult::Failed {
                        outcome: "capped".into(),
                        reason,
                    }
                }
            },
            None => None,
        };
        // The network calls' state machines are kilobytes: boxed, they keep
        // this future small, and a page's thousands of them cheap to queue
        // and move (a network call's allocation is nothing beside its I/O).
        match (target, &request.action) {
            (Target::Record(t), _) => t.record(request).await,
            (Target::Webhook(t), Action::Webhook(w)) => {
                Box::pin(t.call(&request.key, &w.body)).await
            }
            (Target::Email(t), Action::Email(m)) => {
                Box::pin(t.send(&request.key, &m.to, &m.template, &m.variables)).await
            }
            (Target::Crm(t), Action::CrmUpdate(c)) => {
                Box::pin(t.upsert(&request.key, &c.object, &c.external_id, &c.fields)).await
            }
            (Target::Webhook(_), _) => wrong_target(name, "a webhook", kind),
            (Target::Crm(_), _) => wrong_target(name, "a CRM target", kind),
            (Target::Email(_), _) => wrong_target(name, "an e-mail target", kind),
        }
    }
}
