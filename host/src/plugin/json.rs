//! Contract 0.2's JSON world (`pipeline-plugin-json`): a batch written as
//! one JSON document for the plugin, and its JSON answer read back into the
//! same typed outcomes the typed world gives. The documents' shapes are
//! specified in `wit/0.2/plugin.wit`; the host checks an answer as strictly
//! as a typed one (the same checks run on the outcomes afterwards).

use super::contract::{
    Action, CrmUpdateRequest, DecidedEvent, EmailRequest, Event, GuestError, Instant, Row, Value,
    WebhookRequest,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::io::Write as _;

/// The largest integer a JSON reader that holds numbers as doubles keeps
/// exact; past it an integer is written as a string of its digits.
const EXACT: i64 = (1 << 53) - 1;

/// `rows` under `columns` as the batch document.
pub(super) fn encode_batch(columns: &[String], rows: &[Row]) -> Vec<u8> {
    let types: Vec<Option<&'static str>> = (0..columns.len())
        .map(|i| column_type(rows.iter().filter_map(|row| row.cells.get(i))))
        .collect();
    let mut out = Vec::with_capacity(64 + rows.len() * 160);
    out.extend_from_slice(b"{\"columns\":");
    serde_json::to_writer(&mut out, columns).expect("writing to a Vec");
    out.extend_from_slice(b",\"types\":[");
    for (i, kind) in types.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, kind.unwrap_or("mixed"));
    }
    out.extend_from_slice(b"],\"rows\":[");
    for (r, row) in rows.iter().enumerate() {
        if r > 0 {
            out.push(b',');
        }
        out.push(b'[');
        write_str(&mut out, &row.identity);
        for (i, cell) in row.cells.iter().enumerate() {
            out.push(b',');
            let mixed = types.get(i).is_none_or(|t| t.is_none());
            if mixed && !matches!(cell, Value::Null) {
                out.push(b'{');
                write_str(&mut out, type_name(cell));
                out.push(b':');
                write_cell(&mut out, cell);
                out.push(b'}');
            } else {
                write_cell(&mut out, cell);
            }
        }
        out.push(b']');
    }
    // Each row's first event id, derived here so that a plugin quoting it
    // need not ask `host.event-id`: a host call costs an interpreted guest
    // more than its whole row (StarlingMonkey: ~15 µs, its strings converted
    // by interpreted code).
    out.extend_from_slice(b"],\"event_ids\":[");
    for (r, row) in rows.iter().enumerate() {
        if r > 0 {
            out.push(b',');
        }
        write_str(&mut out, &super::derived_id(&row.identity, 0));
    }
    out.extend_from_slice(b"]}");
    out
}

/// The type of a column's non-null cells, `null` if all are null, or none
/// when they differ (`mixed`).
fn column_type<'a>(cells: impl Iterator<Item = &'a Value>) -> Option<&'static str> {
    let mut seen = "null";
    for cell in cells {
        match (seen, type_name(cell)) {
            (_, "null") => {}
            ("null", kind) => seen = kind,
            (a, b) if a == b => {}
            _ => return None,
        }
    }
    Some(seen)
}

fn type_name(cell: &Value) -> &'static str {
    match cell {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) => "integer",
        Value::Decimal(_) => "decimal",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Timestamp(_) => "timestamp",
        Value::Date(_) => "date",
        Value::Json(_) => "json",
        Value::Binary(_) => "binary",
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
}

fn write_cell(out: &mut Vec<u8>, cell: &Value) {
    let mut int = itoa::Buffer::new();
    match cell {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Integer(i) if (-EXACT..=EXACT).contains(i) => {
            out.extend_from_slice(int.format(*i).as_bytes())
        }
        Value::Integer(i) => {
            out.push(b'"');
            out.extend_from_slice(int.format(*i).as_bytes());
            out.push(b'"');
        }
        Value::Float(f) if f.is_nan() => out.extend_from_slice(b"\"NaN\""),
        Value::Float(f) if f.is_infinite() => out.extend_from_slice(if *f > 0.0 {
            b"\"Infinity\"".as_slice()
        } else {
            b"\"-Infinity\"".as_slice()
        }),
        Value::Float(f) => serde_json::to_writer(&mut *out, f).expect("writing to a Vec"),
        Value::Decimal(s) | Value::Text(s) | Value::Json(s) => write_str(out, s),
        Value::Timestamp(t) => {
            write!(out, "[{},{}]", t.seconds, t.nanos).expect("writing to a Vec")
        }
        Value::Date(d) => out.extend_from_slice(int.format(*d).as_bytes()),
        Value::Binary(b) => {
            out.push(b'"');
            out.extend_from_slice(hex::encode(b).as_bytes());
            out.push(b'"');
        }
    }
}

/// An answer entry: a row's events, or why it failed.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
enum Entry<T> {
    Ok(T),
    Reject(String),
    Internal(String),
}

impl<T> Entry<T> {
    fn into_result<U>(self, f: impl FnOnce(T) -> U) -> Result<U, GuestError> {
        match self {
            Entry::Ok(value) => Ok(f(value)),
            Entry::Reject(reason) => Err(GuestError::Reject(reason)),
            Entry::Internal(reason) => Err(GuestError::Internal(reason)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent<'a> {
    #[serde(default)]
    id: String,
    timestamp: (i64, u32),
    #[serde(borrow)]
    body: &'a RawValue,
    #[serde(default, borrow)]
    actions: Option<Entry<Vec<WireAction<'a>>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
enum WireAction<'a> {
    Email {
        target: String,
        to: String,
        template: String,
        #[serde(borrow)]
        variables: &'a RawValue,
    },
    Webhook {
        target: String,
        #[serde(borrow)]
        body: &'a RawValue,
    },
    CrmUpdate {
        target: String,
        object: String,
        #[serde(rename = "external-id")]
        external_id: String,
        #[serde(borrow)]
        fields: &'a RawValue,
    },
}

/// A JSON payload as the contract's text: an object as written, a string
/// as the JSON text it holds.
fn payload(raw: &RawValue) -> String {
    let text = raw.get();
    if text.starts_with('"') {
        serde_json::from_str(text).unwrap_or_default()
    } else {
        text.to_owned()
    }
}

impl WireAction<'_> {
    fn into_action(self) -> Action {
        match self {
            WireAction::Email {
                target,
                to,
                template,
                variables,
            } => Action::Email(EmailRequest {
                target,
                to,
                template,
                variables: payload(variables),
            }),
            WireAction::Webhook { target, body } => Action::Webhook(WebhookRequest {
                target,
                body: payload(body),
            }),
            WireAction::CrmUpdate {
                target,
                object,
                external_id,
                fields,
            } => Action::CrmUpdate(CrmUpdateRequest {
                target,
                object,
                external_id,
                fields: payload(fields),
            }),
        }
    }
}

impl WireEvent<'_> {
    fn into_decided(self) -> DecidedEvent {
        let actions = match self.actions {
            None => Ok(Vec::new()),
            Some(entry) => {
                entry.into_result(|list| list.into_iter().map(WireAction::into_action).collect())
            }
        };
        DecidedEvent {
            event: Event {
                id: self.id,
                timestamp: Instant {
                    seconds: self.timestamp.0,
                    nanos: self.timestamp.1,
                },
                body: payload(self.body),
            },
            actions,
        }
    }
}

/// The answer document for `n` rows: one outcome per row. A document that
/// does not parse fails every row as the plugin's internal error, naming
/// where it broke; a wrong count is left to the host's usual check.
pub(super) fn decode_answer(bytes: &[u8], n: usize) -> Vec<Result<Vec<DecidedEvent>, GuestError>> {
    match serde_json::from_slice::<Vec<Entry<Vec<WireEvent<'_>>>>>(bytes) {
        Ok(entries) => entries
            .into_iter()
            .map(|entry| {
                entry
                    .into_result(|events| events.into_iter().map(WireEvent::into_decided).collect())
            })
            .collect(),
        Err(e) => {
            let reason = format!("the plugin's JSON answer is malformed: {e}");
            (0..n)
                .map(|_| Err(GuestError::Internal(reason.clone())))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(identity: &str, cells: Vec<Value>) -> Row {
        Row {
            identity: identity.into(),
            cells,
        }
    }

    #[test]
    fn a_batch_is_written_with_its_column_types() {
        let columns = ["id".to_owned(), "v".to_owned(), "n".to_owned()];
        let rows = [
            row(
                "a",
                vec![
                    Value::Integer(1 << 60),
                    Value::Text("x\"".into()),
                    Value::Null,
                ],
            ),
            row(
                "b",
                vec![Value::Integer(-7), Value::Float(f64::NAN), Value::Null],
            ),
        ];
        let doc: serde_json::Value =
            serde_json::from_slice(&encode_batch(&columns, &rows)).unwrap();
        assert_eq!(
            doc["types"],
            serde_json::json!(["integer", "mixed", "null"])
        );
        assert_eq!(
            doc["rows"],
            serde_json::json!([
                ["a", "1152921504606846976", {"text": "x\""}, null],
                ["b", -7, {"float": "NaN"}, null]
            ])
        );
        // Each row's first event id, as the host derives it.
        assert_eq!(
            doc["event_ids"],
            serde_json::json!([
                super::super::derived_id("a", 0),
                super::super::derived_id("b", 0)
            ])
        );
        let rows = [row(
            "c",
            vec![
                Value::Timestamp(Instant {
                    seconds: -1,
                    nanos: 5,
                }),
                Value::Binary(vec![0, 255]),
                Value::Date(-3),
            ],
        )];
        let doc: serde_json::Value =
            serde_json::from_slice(&encode_batch(&columns, &rows)).unwrap();
        assert_eq!(
            doc["types"],
            serde_json::json!(["timestamp", "binary", "date"])
        );
        assert_eq!(
            doc["rows"][0],
            serde_json::json!(["c", [-1, 5], "00ff", -3])
        );
    }

    #[test]
    fn an_answer_reads_back_into_outcomes() {
        let answer = br#"[
          {"ok": [{"timestamp": [1, 2], "body": {"a": [1, "x"]},
                   "actions": {"ok": [{"webhook": {"target": "t", "body": "{\"k\":1}"}},
                                      {"crm-update": {"target": "c", "object": "Contact", "external-id": "e", "fields": {}}}]}},
                  {"id": "own", "timestamp": [3, 0], "body": "{}", "actions": {"reject": "no"}}]},
          {"reject": "bad row"},
          {"internal": "bug"}
        ]"#;
        let got = decode_answer(answer, 3);
        let events = got[0].as_ref().unwrap();
        assert_eq!(events[0].event.id, "");
        assert_eq!(events[0].event.body, r#"{"a": [1, "x"]}"#);
        assert_eq!(
            events[0].event.timestamp,
            Instant {
                seconds: 1,
                nanos: 2
            }
        );
        let actions = events[0].actions.as_ref().unwrap();
        assert_eq!(
            actions[0],
            Action::Webhook(WebhookRequest {
                target: "t".into(),
                body: r#"{"k":1}"#.into()
            })
        );
        assert!(
            matches!(&actions[1], Action::CrmUpdate(c) if c.external_id == "e" && c.fields == "{}")
        );
        assert_eq!(events[1].event.id, "own");
        assert_eq!(events[1].actions, Err(GuestError::Reject("no".into())));
        assert!(matches!(&got[1], Err(GuestError::Reject(r)) if r == "bad row"));
        assert!(matches!(&got[2], Err(GuestError::Internal(r)) if r == "bug"));
    }

    #[test]
    fn a_malformed_answer_fails_every_row_by_name() {
        for bad in [
            &b"not json"[..],
            br#"[{"ok": [{"body": {}}]}]"#,
            br#"[{"maybe": 1}]"#,
        ] {
            let got = decode_answer(bad, 2);
            assert_eq!(got.len(), 2);
            for outcome in got {
                assert!(
                    matches!(&outcome, Err(GuestError::Internal(m)) if m.contains("malformed")),
                    "{outcome:?}"
                );
            }
        }
    }
}
