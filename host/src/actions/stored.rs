//! An action as it is written down — in the record target's lines, in
//! `freshet plugin test`'s report, in dead letters — and read back for
//! `dlq replay`: `{"kind": "webhook", "target": ..., "body": {...}}`, with
//! the plugin's JSON payloads embedded byte for byte.

use crate::plugin::contract::{Action, CrmUpdateRequest, EmailRequest, WebhookRequest};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A JSON text the plugin runtime already checked, embedded as it is (or
/// as a string, should it somehow not be JSON: shown, never lost).
struct Embedded<'a>(&'a str);

impl Serialize for Embedded<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&RawValue>(self.0) {
            Ok(raw) => raw.serialize(s),
            Err(_) => self.0.serialize(s),
        }
    }
}

/// The written form, borrowed from an [`Action`].
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum View<'a> {
    Email {
        target: &'a str,
        to: &'a str,
        template: &'a str,
        variables: Embedded<'a>,
    },
    Webhook {
        target: &'a str,
        body: Embedded<'a>,
    },
    CrmUpdate {
        target: &'a str,
        object: &'a str,
        external_id: &'a str,
        fields: Embedded<'a>,
    },
}

impl<'a> From<&'a Action> for View<'a> {
    fn from(action: &'a Action) -> Self {
        match action {
            Action::Email(a) => View::Email {
                target: &a.target,
                to: &a.to,
                template: &a.template,
                variables: Embedded(&a.variables),
            },
            Action::Webhook(a) => View::Webhook {
                target: &a.target,
                body: Embedded(&a.body),
            },
            Action::CrmUpdate(a) => View::CrmUpdate {
                target: &a.target,
                object: &a.object,
                external_id: &a.external_id,
                fields: Embedded(&a.fields),
            },
        }
    }
}

/// Serializes an action in its written form.
pub struct ActionView<'a>(pub &'a Action);

impl Serialize for ActionView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        View::from(self.0).serialize(s)
    }
}

/// An owned action that reads back from its written form.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAction(pub Action);

impl Serialize for StoredAction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ActionView(&self.0).serialize(s)
    }
}

/// Every field any kind has, read in one pass. Serde's tagged enums buffer
/// their input, which raw JSON cannot come through; a flat struct does not.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    kind: String,
    target: String,
    to: Option<String>,
    template: Option<String>,
    variables: Option<Box<RawValue>>,
    body: Option<Box<RawValue>>,
    object: Option<String>,
    external_id: Option<String>,
    fields: Option<Box<RawValue>>,
}

/// The payload's JSON text, as the plugin wrote it.
fn payload(raw: Box<RawValue>) -> String {
    String::from(Box::<str>::from(raw))
}

impl TryFrom<Fields> for StoredAction {
    type Error = String;

    fn try_from(f: Fields) -> Result<Self, String> {
        let kind = f.kind;
        let missing = |field: &str| format!("a {kind} action needs `{field}`");
        let need = |v: Option<String>, field: &str| v.ok_or_else(|| missing(field));
        let json =
            |v: Option<Box<RawValue>>, field: &str| v.map(payload).ok_or_else(|| missing(field));
        let action = match kind.as_str() {
            "email" => Action::Email(EmailRequest {
                target: f.target,
                to: need(f.to, "to")?,
                template: need(f.template, "template")?,
                variables: json(f.variables, "variables")?,
            }),
            "webhook" => Action::Webhook(WebhookRequest {
                target: f.target,
                body: json(f.body, "body")?,
            }),
            "crm_update" => Action::CrmUpdate(CrmUpdateRequest {
                target: f.target,
                object: need(f.object, "object")?,
                external_id: need(f.external_id, "external_id")?,
                fields: json(f.fields, "fields")?,
            }),
            other => return Err(format!("unknown action kind {other:?}")),
        };
        Ok(StoredAction(action))
    }
}

impl<'de> Deserialize<'de> for StoredAction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fields = Fields::deserialize(d)?;
        StoredAction::try_from(fields).map_err(serde::de::Error::custom)
    }
}

/// An action's written form as a JSON value, for `freshet plugin test`.
pub fn action_json(action: &Action) -> serde_json::Value {
    serde_json::to_value(ActionView(action)).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<StoredAction, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn each_kind_reads_back_exactly() {
        let actions = [
            Action::Email(EmailRequest {
                target: "mail".into(),
                to: "a@example.com".into(),
                template: "t".into(),
                variables: r#"{"n": 1.50, "b": 2}"#.into(),
            }),
            Action::Webhook(WebhookRequest {
                target: "hook".into(),
                body: "[1, 2]".into(),
            }),
            Action::CrmUpdate(CrmUpdateRequest {
                target: "crm".into(),
                object: "Contact".into(),
                external_id: "x/1".into(),
                fields: r#"{"email":"a@example.com"}"#.into(),
            }),
            // A JSON string is a body like any other.
            Action::Webhook(WebhookRequest {
                target: "hook".into(),
                body: r#""plain""#.into(),
            }),
        ];
        for action in actions {
            let text = serde_json::to_string(&ActionView(&action)).unwrap();
            assert_eq!(read(&text).unwrap().0, action, "{text}");
        }
    }

    #[test]
    fn a_broken_action_is_named() {
        let e = read(r#"{"kind":"email","target":"m"}"#).unwrap_err();
        assert!(e.to_string().contains("needs `to`"), "{e}");
        let e = read(r#"{"kind":"fax","target":"m"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown action kind"), "{e}");
    }
}
