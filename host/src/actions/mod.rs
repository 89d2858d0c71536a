//! Executing the actions plugins decide, through targets the operator
//! configured. A plugin names a target; the URL, method, headers and secrets
//! are here, never in the sandbox.
//!
//! Each action carries its idempotency key `(pipeline, row identity, action
//! index)`; the pipeline records it in the ledger before and after, so a
//! replay skips what finished. Executors send the key along (`Idempotency-Key`)
//! so a receiver can close the one window the ledger cannot: a crash after
//! the call and before the commit.

mod attempts;
mod capping;
mod crm;
mod email;
mod record;
mod webhook;

use crate::config::TargetConfig;
use crate::plugin::contract::Action;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

pub use crm::CrmTarget;
pub use email::EmailTarget;
pub use record::RecordTarget;
pub use webhook::{signature, WebhookTarget};

/// One action to run.
#[derive(Debug, Clone)]
pub struct ActionRequest {
    /// `pipeline/identity/index`.
    pub key: String,
    /// The source row's identity.
    pub identity: String,
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
    /// A line in a file.
    Record(RecordTarget),
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

/// A JSON text the plugin runtime already validated, embedded as it is
/// (or as a string, should it somehow not parse).
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Payload<'a> {
    Raw(&'a RawValue),
    Text(&'a str),
}

fn payload(text: &str) -> Payload<'_> {
    serde_json::from_str(text).map_or(Payload::Text(text), Payload::Raw)
}

/// An action as it is recorded and dead-lettered: `{"kind": "email", ...}`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ActionView<'a> {
    /// An e-mail.
    #[allow(missing_docs)]
    Email {
        target: &'a str,
        to: &'a str,
        template: &'a str,
        variables: Payload<'a>,
    },
    /// A webhook call.
    #[allow(missing_docs)]
    Webhook { target: &'a str, body: Payload<'a> },
    /// A CRM upsert.
    #[allow(missing_docs)]
    CrmUpdate {
        target: &'a str,
        object: &'a str,
        external_id: &'a str,
        fields: Payload<'a>,
    },
}

impl<'a> From<&'a Action> for ActionView<'a> {
    fn from(action: &'a Action) -> Self {
        match action {
            Action::Email(a) => ActionView::Email {
                target: &a.target,
                to: &a.to,
                template: &a.template,
                variables: payload(&a.variables),
            },
            Action::Webhook(a) => ActionView::Webhook {
                target: &a.target,
                body: payload(&a.body),
            },
            Action::CrmUpdate(a) => ActionView::CrmUpdate {
                target: &a.target,
                object: &a.object,
                external_id: &a.external_id,
                fields: payload(&a.fields),
            },
        }
    }
}

/// An action as a JSON value, for `freshet plugin test` and dead letters.
pub fn action_json(action: &Action) -> serde_json::Value {
    serde_json::to_string(&ActionView::from(action))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// An action back from its JSON view (a dead letter's `action`), for
/// `freshet dlq replay`; `None` if it is not one.
pub fn action_from_json(v: &serde_json::Value) -> Option<Action> {
    use crate::plugin::contract::{CrmUpdateRequest, EmailRequest, WebhookRequest};
    let text = |k: &str| v.get(k)?.as_str().map(str::to_owned);
    // Payloads were JSON when recorded; a text one was kept as text.
    let json = |k: &str| {
        let value = v.get(k)?;
        Some(
            value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned),
        )
    };
    Some(match v.get("kind")?.as_str()? {
        "email" => Action::Email(EmailRequest {
            target: text("target")?,
            to: text("to")?,
            template: text("template")?,
            variables: json("variables")?,
        }),
        "webhook" => Action::Webhook(WebhookRequest {
            target: text("target")?,
            body: json("body")?,
        }),
        "crm_update" => Action::CrmUpdate(CrmUpdateRequest {
            target: text("target")?,
            object: text("object")?,
            external_id: text("external_id")?,
            fields: json("fields")?,
        }),
        _ => return None,
    })
}

/// A pipeline's targets by name, each with its cap.
pub struct Executors {
    targets: BTreeMap<String, (Target, Option<capping::Capping>)>,
}

impl Executors {
    /// Builds the targets of one pipeline; `prefix` is its config key.
    /// Resolves `${VAR}` secrets and opens files: errors name the key.
    pub fn build(configs: &BTreeMap<String, TargetConfig>, prefix: &str) -> anyhow::Result<Self> {
        let mut targets = BTreeMap::new();
        for (name, config) in configs {
            let key = format!("{prefix}.targets.{name}");
            let cap = config.capping().map(capping::Capping::new);
            let target = match config {
                TargetConfig::Webhook(w) => {
                    Target::Webhook(Box::new(WebhookTarget::build(w, &key)?))
                }
                TargetConfig::Email(m) => Target::Email(Box::new(EmailTarget::build(m, &key)?)),
                TargetConfig::Crm(c) => Target::Crm(Box::new(CrmTarget::build(c, &key)?)),
                TargetConfig::Record(r) => Target::Record(RecordTarget::open(&r.path, &key)?),
            };
            targets.insert(name.clone(), (target, cap));
        }
        Ok(Self { targets })
    }

    /// Makes what record targets wrote durable, before the page commits.
    pub fn sync(&self) -> std::io::Result<()> {
        for (target, _) in self.targets.values() {
            if let Target::Record(r) = target {
                r.sync()?;
            }
        }
        Ok(())
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
        match (target, &request.action) {
            (Target::Record(t), _) => t.record(request).await,
            (Target::Webhook(t), Action::Webhook(w)) => t.call(&request.key, &w.body).await,
            (Target::Email(t), Action::Email(m)) => {
                t.send(&request.key, &m.to, &m.template, &m.variables).await
            }
            (Target::Crm(t), Action::CrmUpdate(c)) => {
                t.upsert(&request.key, &c.object, &c.external_id, &c.fields)
                    .await
            }
            (Target::Webhook(_), _) => wrong_target(name, "a webhook", kind),
            (Target::Crm(_), _) => wrong_target(name, "a CRM target", kind),
            (Target::Email(_), _) => wrong_target(name, "an e-mail target", kind),
        }
    }
}
