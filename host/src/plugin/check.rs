//! What the host checks of a plugin's answer before trusting it: event
//! bodies are JSON objects that leave `_id` and `timestamp` to the host, and
//! action payloads are JSON of the right shape. The checks run once per
//! output on the hot path, so they walk the JSON without building it.

use super::contract::{Action, DecidedEvent, Event};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use std::fmt;

/// Checks that `text` is one JSON object; returns the first of `forbidden`
/// found among its top-level keys.
fn object_with_keys(text: &str, forbidden: &[&str]) -> Result<Option<String>, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let found = ObjectSeed { forbidden }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(found)
}

struct ObjectSeed<'f> {
    forbidden: &'f [&'f str],
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Option<String>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeySeed {
            forbidden: self.forbidden,
        })? {
            if found.is_none() {
                found = hit;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(found)
    }
}

/// A key, compared against the forbidden ones without being copied.
struct KeySeed<'f> {
    forbidden: &'f [&'f str],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<String>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.forbidden.contains(&key).then(|| key.to_owned()))
    }
}

/// An event's body must be a JSON object and must not set `_id` or
/// `timestamp` itself (the host writes them from the typed fields; an empty
/// id it derives, [`super::derived_id`]). Returns the bytes it counts
/// against the output limit.
pub(super) fn check_event(event: &Event) -> Result<usize, String> {
    match object_with_keys(&event.body, &["_id", "timestamp"]) {
        Ok(None) => Ok(event.body.len() + event.id.len()),
        Ok(Some(key)) => Err(format!(
            "event {} body sets `{key}`; the host writes it from the event's fields",
            event.id
        )),
        Err(e) => Err(format!("event {} body is not a JSON object: {e}", event.id)),
    }
}

/// A 0.2 event and its actions: the event as [`check_event`]; the actions
/// only counted here, and checked with [`check_action`] one by one when the
/// answer is taken apart, so a bad action fails its event's decision, as a
/// failed `decide` would, not the row.
pub(super) fn check_decided(decided: &DecidedEvent) -> Result<usize, String> {
    let actions = decided
        .actions
        .as_ref()
        .map_or(0, |actions| actions.iter().map(action_size).sum());
    Ok(check_event(&decided.event)? + actions)
}

/// The bytes of an action's text fields.
fn action_size(action: &Action) -> usize {
    match action {
        Action::Email(e) => e.target.len() + e.to.len() + e.template.len() + e.variables.len(),
        Action::Webhook(w) => w.target.len() + w.body.len(),
        Action::CrmUpdate(c) => {
            c.target.len() + c.object.len() + c.external_id.len() + c.fields.len()
        }
    }
}

/// An action's e-mail variables and CRM fields must be JSON objects; a
/// webhook body any JSON value.
pub(super) fn check_action(action: &Action) -> Result<usize, String> {
    let object = |what: &str, text: &str| {
        object_with_keys(text, &[])
            .map(|_| text.len())
            .map_err(|e| format!("{what} is not a JSON object: {e}"))
    };
    match action {
        Action::Email(e) => object("e-mail variables", &e.variables),
        Action::CrmUpdate(c) => object("CRM fields", &c.fields),
        Action::Webhook(w) => serde_json::from_str::<IgnoredAny>(&w.body)
            .map(|_| w.body.len())
            .map_err(|e| format!("webhook body is not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_pass_and_reserved_keys_are_named() {
        assert_eq!(
            object_with_keys(r#"{"a":[1,{"_id":2}],"b":"x"}"#, &["_id"]),
            Ok(None)
        );
        assert_eq!(
            object_with_keys(r#" {"a":1,"timestamp":"t"} "#, &["_id", "timestamp"]),
            Ok(Some("timestamp".into()))
        );
        assert_eq!(
            object_with_keys(r#"{"\u005fid":1}"#, &["_id"]),
            Ok(Some("_id".into())),
            "escaped keys are read"
        );
        assert!(object_with_keys("[1]", &[]).is_err());
        assert!(object_with_keys(r#"{"a":1} {"#, &[]).is_err());
        assert!(object_with_keys("", &[]).is_err());
    }
}
