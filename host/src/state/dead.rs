//! Dead letters: what failed for good, each kind holding exactly what its
//! replay needs. One type is written by the pipeline, stored, read back by
//! `dlq replay` and printed by `dlq list`; nothing is guessed from the shape
//! of a JSON text.
//!
//! Payloads the plugin or the envelope builder wrote as JSON (event bodies,
//! envelopes, action payloads) are kept as raw JSON text, byte for byte, so a
//! replay sends exactly what the first attempt would have sent (no number is
//! rounded, no key reordered).

use crate::actions::StoredAction;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What a dead letter is about; the name stored in its `kind` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadKind {
    /// A row the plugin could not map (or whose mapping the sandbox stopped).
    Row,
    /// A delivered event the plugin could not decide on.
    Undecided,
    /// An event the destination refused, with the actions it would have run.
    Refused,
    /// An action that failed for good.
    Action,
}

impl DeadKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadKind::Row => "row",
            DeadKind::Undecided => "undecided",
            DeadKind::Refused => "refused",
            DeadKind::Action => "action",
        }
    }
}

/// An action with its idempotency key, as a dead letter keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyedAction {
    /// The ledger's key (see [`crate::pipeline::action_key`]).
    pub key: String,
    /// What the plugin asked for.
    pub action: StoredAction,
}

/// An event as the plugin produced it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEvent {
    /// The event's `_id`.
    #[serde(rename = "_id")]
    pub id: String,
    /// Its timestamp, RFC 3339.
    pub timestamp: String,
    /// The rest of the `xdmEntity`, as the plugin wrote it.
    pub body: Box<RawValue>,
}

impl PartialEq for StoredEvent {
    fn eq(&self, other: &Self) -> bool {
        (self.id == other.id && self.timestamp == other.timestamp)
            && self.body.get() == other.body.get()
    }
}

/// A row the plugin failed on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowLetter {
    /// `{"identity": ..., "cells": {column: value}}`.
    pub row: Box<RawValue>,
}

/// A delivered event whose actions the plugin could not decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UndecidedLetter {
    /// The event.
    pub event: StoredEvent,
}

/// An event the destination refused for good. AEP never saw it, so no
/// journey ran: its actions wait here, keyed, and run (through the ledger)
/// once a replay delivers the envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusedLetter {
    /// The envelope, exactly as it was sent.
    pub envelope: Box<RawValue>,
    /// The actions the plugin decided for the event.
    pub actions: Vec<KeyedAction>,
}

/// What a dead letter holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Letter {
    /// A row the plugin could not map: replayed by moving the offset back
    /// once the plugin is fixed (`freshet offsets reset --to`).
    Row(RowLetter),
    /// A delivered event the plugin could not decide on: its row must be
    /// read again, like a failed row.
    Undecided(UndecidedLetter),
    /// An event the destination refused: resent, then its actions run.
    Refused(RefusedLetter),
    /// An action that failed for good: run again with its original key.
    Action(KeyedAction),
}

impl PartialEq for RowLetter {
    fn eq(&self, other: &Self) -> bool {
        self.row.get() == other.row.get()
    }
}

impl PartialEq for RefusedLetter {
    fn eq(&self, other: &Self) -> bool {
        self.envelope.get() == other.envelope.get() && self.actions == other.actions
    }
}

impl Letter {
    /// Its kind.
    pub fn kind(&self) -> DeadKind {
        match self {
            Letter::Row(_) => DeadKind::Row,
            Letter::Undecided(_) => DeadKind::Undecided,
            Letter::Refused(_) => DeadKind::Refused,
            Letter::Action(_) => DeadKind::Action,
        }
    }

    /// The stored payload: the variant's own fields as JSON (the kind is
    /// stored beside it).
    pub fn payload(&self) -> String {
        let text = match self {
            Letter::Row(l) => serde_json::to_string(l),
            Letter::Undecided(l) => serde_json::to_string(l),
            Letter::Refused(l) => serde_json::to_string(l),
            Letter::Action(l) => serde_json::to_string(l),
        };
        // Every field is a string or JSON already checked: this cannot fail.
        text.expect("a dead letter serializes")
    }

    /// Reads a stored letter back from its kind and payload.
    pub fn read(kind: &str, payload: &str) -> Result<Self, String> {
        let letter = match kind {
            "row" => serde_json::from_str(payload).map(Letter::Row),
            "undecided" => serde_json::from_str(payload).map(Letter::Undecided),
            "refused" => serde_json::from_str(payload).map(Letter::Refused),
            "action" => serde_json::from_str(payload).map(Letter::Action),
            other => return Err(format!("unknown dead letter kind {other:?}")),
        };
        letter.map_err(|e| format!("unreadable {kind} dead letter: {e}"))
    }
}

/// A dead letter about to be stored (the write model): the store adds its
/// id, pipeline and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// The source row's identity.
    pub identity: String,
    /// A short stable code (`out_of_fuel`, `http_400`, ...).
    pub code: String,
    /// The full reason, e.g. AEP's message.
    pub reason: String,
    /// What failed.
    pub letter: Letter,
}

/// A stored dead letter, as `freshet dlq list` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Store-assigned id.
    pub id: i64,
    /// The pipeline.
    pub pipeline: String,
    /// The source row's identity.
    pub identity: String,
    /// A short stable code (`out_of_fuel`, `http_400`, ...).
    pub code: String,
    /// The full reason, e.g. AEP's message.
    pub reason: String,
    /// What failed, with its `kind`.
    #[serde(flatten)]
    pub letter: Letter,
    /// When it was stored, epoch milliseconds.
    pub created_ms: i64,
}

impl DeadLetter {
    /// What the letter is about.
    pub fn kind(&self) -> DeadKind {
        self.letter.kind()
    }
}

/// A raw JSON value from text that should be JSON; text that is not (a
/// broken promise somewhere upstream) is kept as a JSON string instead, so
/// nothing is lost.
pub fn raw_json(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).unwrap_or_else(|_| {
        RawValue::from_string(serde_json::to_string(text).expect("a string serializes"))
            .expect("a JSON string is JSON")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::contract::{Action, WebhookRequest};

    fn refused() -> Letter {
        Letter::Refused(RefusedLetter {
            envelope: raw_json(r#"{"header":{"a":1},"body":{"amount":12345678901234567.891}}"#),
            actions: vec![KeyedAction {
                key: "p/r/e/0".into(),
                action: StoredAction(Action::Webhook(WebhookRequest {
                    target: "hook".into(),
                    body: r#"{"z":1,"a":[1e300]}"#.into(),
                })),
            }],
        })
    }

    #[test]
    fn every_kind_reads_back_as_written_byte_for_byte() {
        let letters = [
            Letter::Row(RowLetter {
                row: raw_json(r#"{"identity":"7","cells":{"id":7}}"#),
            }),
            Letter::Undecided(UndecidedLetter {
                event: StoredEvent {
                    id: "e1".into(),
                    timestamp: "2026-01-01T00:00:00Z".into(),
                    body: raw_json(r#"{"eventType":"x","n":0.10}"#),
                },
            }),
            refused(),
            Letter::Action(KeyedAction {
                key: "k".into(),
                action: StoredAction(Action::Webhook(WebhookRequest {
                    target: "t".into(),
                    body: "{}".into(),
                })),
            }),
        ];
        for letter in letters {
            let back = Letter::read(letter.kind().as_str(), &letter.payload()).unwrap();
            assert_eq!(back, letter);
        }
        // Numbers and key order survive untouched.
        let Letter::Refused(r) = Letter::read("refused", &refused().payload()).unwrap() else {
            panic!("not refused");
        };
        assert!(r.envelope.get().contains("12345678901234567.891"));
        let StoredAction(Action::Webhook(w)) = &r.actions[0].action else {
            panic!("not a webhook");
        };
        assert_eq!(w.body, r#"{"z":1,"a":[1e300]}"#);
    }

    #[test]
    fn a_listed_letter_shows_its_kind_and_embedded_json() {
        let letter = DeadLetter {
            id: 3,
            pipeline: "orders".into(),
            identity: "42".into(),
            code: "http_400".into(),
            reason: "schema".into(),
            letter: refused(),
            created_ms: 1,
        };
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&letter).unwrap()).unwrap();
        assert_eq!(json["kind"], "refused");
        assert_eq!(json["envelope"]["header"]["a"], 1);
        assert_eq!(json["actions"][0]["key"], "p/r/e/0");
        assert_eq!(json["actions"][0]["action"]["kind"], "webhook");
        assert_eq!(json["actions"][0]["action"]["body"]["z"], 1);
    }

    #[test]
    fn unknown_and_broken_letters_are_named() {
        assert!(Letter::read("event", "{}").unwrap_err().contains("unknown"));
        let e = Letter::read("action", r#"{"key":"k"}"#).unwrap_err();
        assert!(e.contains("action dead letter"), "{e}");
    }

    #[test]
    fn text_that_is_not_json_is_kept_as_a_string() {
        assert_eq!(raw_json("not json").get(), r#""not json""#);
        assert_eq!(raw_json(r#"{"a":1}"#).get(), r#"{"a":1}"#);
    }
}
