//! The JavaScript and Python helpers (`plugins/js/src/freshet.js`,
//! `plugins/python/src/freshet.py`) under misuse: a test plugin per language
//! (`tests/plugins/js-helper/app.js`, `tests/plugins/py-helper/cases.py`)
//! makes each mistake a plugin author might on its own row, and each must
//! fail only what it should (the row, or just the event's actions) with a
//! reason that names it, the other rows untouched. Both worlds: in the JSON
//! world bodies and payloads are written once, inside the answer document;
//! in the typed world each alone. JavaScript on StarlingMonkey (JSON) and
//! QuickJS (typed).

use freshet::plugin::contract::{Action, RowBatch, Value};
use freshet::plugin::{
    derived_id, CallContext, Decided, EngineSettings, Outcome, Runtime, Sandbox,
};
use freshet_tests::plugins;
use serde_json::{json, Value as Json};
use std::path::Path;

fn answers(plugin: &str, cases: &[&str]) -> Vec<Outcome<Decided>> {
    let runtime = Runtime::new(&EngineSettings {
        cache_dir: Some(plugins::COMPONENT_CACHE.into()),
        ..Default::default()
    })
    .expect("engine");
    let ctx = CallContext::new(
        "helper",
        "cases",
        Default::default(),
        Default::default(),
        Default::default(),
    );
    let sandbox = Sandbox::new(runtime.load(Path::new(plugin)).expect("load plugin"), ctx);
    let batch = RowBatch {
        columns: vec!["case".into()],
        rows: cases
            .iter()
            .map(|case| freshet::plugin::contract::Row {
                identity: format!("{case}@1"),
                cells: vec![Value::Text((*case).into())],
            })
            .collect(),
    };
    sandbox.process(&batch)
}

/// An outcome's error as `code: message`.
fn error<T: std::fmt::Debug>(outcome: &Outcome<T>) -> String {
    match outcome {
        Err(e) => format!("{}: {e}", e.code()),
        Ok(got) => panic!("expected an error, got {got:?}"),
    }
}

fn webhook_body(action: &Action) -> Json {
    match action {
        Action::Webhook(w) => serde_json::from_str(&w.body).expect("a JSON body"),
        other => panic!("expected a webhook, got {other:?}"),
    }
}

/// What a case must come to.
enum Expect {
    /// One event, body `{"ok": true}`, a webhook with `{"n": 1}`.
    Ok,
    /// The row fails with this code and a message containing the text
    /// (compared in lower case).
    Row(&'static str, &'static str),
    /// The event is delivered; its actions fail so.
    Actions(&'static str, &'static str),
    /// Two events: the first with no actions, the second (undecided) sent
    /// to `decide` with the host's id for event 1 filled in.
    Generator,
}

fn check(language: &str, plugin: &str, cases: &[(&str, Expect)]) {
    let names: Vec<&str> = cases.iter().map(|(name, _)| *name).collect();
    let got = answers(plugin, &names);
    assert_eq!(got.len(), cases.len(), "{language}");
    for ((case, expect), outcome) in cases.iter().zip(&got) {
        let context = format!("{language}, {case}");
        let matches = |message: &str, code: &str, text: &str| {
            let message = message.to_lowercase();
            assert!(
                message.starts_with(&format!("{code}: ")) && message.contains(text),
                "{context}: {message}"
            );
        };
        match expect {
            Expect::Row(code, text) => matches(&error(outcome), code, text),
            Expect::Ok | Expect::Actions(..) | Expect::Generator => {
                let events = outcome
                    .as_ref()
                    .unwrap_or_else(|e| panic!("{context}: {e}"));
                match expect {
                    Expect::Ok => {
                        assert_eq!(events.len(), 1, "{context}");
                        let body: Json = serde_json::from_str(&events[0].event.body).unwrap();
                        assert_eq!(body, json!({"ok": true}), "{context}");
                        let actions = events[0].actions.as_ref().expect("ok's actions");
                        assert_eq!(webhook_body(&actions[0]), json!({"n": 1}), "{context}");
                    }
                    Expect::Actions(code, text) => {
                        assert_eq!(events.len(), 1, "{context}");
                        matches(&error(&events[0].actions), code, text);
                    }
                    Expect::Generator => {
                        let identity = format!("{case}@1");
                        assert_eq!(events.len(), 2, "{context}");
                        assert_eq!(events[0].event.id, derived_id(&identity, 0), "{context}");
                        assert_eq!(events[0].actions.as_ref().unwrap().len(), 0, "{context}");
                        let second = derived_id(&identity, 1);
                        assert_eq!(events[1].event.id, second, "{context}");
                        let decided = events[1].actions.as_ref().expect("decide's actions");
                        assert_eq!(
                            webhook_body(&decided[0]),
                            json!({"decidedFor": second}),
                            "{context}"
                        );
                    }
                    Expect::Row(..) => unreachable!(),
                }
            }
        }
    }
}

#[test]
fn javascript_mistakes_fail_only_their_row_or_their_actions() {
    let cases = [
        ("ok", Expect::Ok),
        ("bigint body", Expect::Row("guest_error", "bigint")),
        (
            "null body",
            Expect::Row(
                "guest_error",
                "an event body must be an object or json text, not null",
            ),
        ),
        ("bigint payload", Expect::Actions("guest_error", "bigint")),
        (
            "bad payload",
            Expect::Actions(
                "guest_error",
                "a webhook body must be an object or json text, not undefined",
            ),
        ),
        (
            "not an event",
            Expect::Row("guest_error", "maprow's event 0 was not made with event()"),
        ),
        (
            "actions not a list",
            Expect::Actions(
                "guest_error",
                "actions must be an array of email(), webhook() or crmupdate()",
            ),
        ),
        (
            "actions not actions",
            Expect::Actions(
                "guest_error",
                "actions must be an array of email(), webhook() or crmupdate()",
            ),
        ),
        ("reject", Expect::Row("reject", "no thanks")),
        ("reject actions", Expect::Actions("reject", "not this one")),
        ("generator", Expect::Generator),
    ];
    check(
        "StarlingMonkey, JSON world",
        plugins::JS_HELPER_PLUGIN,
        &cases,
    );
    check(
        "QuickJS, typed world",
        plugins::JS_HELPER_QUICKJS_PLUGIN,
        &cases,
    );
}

#[test]
fn python_mistakes_fail_only_their_row_or_their_actions() {
    let not_json = "out of range float values are not json compliant";
    let cases = [
        ("ok", Expect::Ok),
        ("nan body", Expect::Row("guest_error", not_json)),
        (
            "set body",
            Expect::Row("guest_error", "object of type set is not json serializable"),
        ),
        ("nan payload", Expect::Actions("guest_error", not_json)),
        ("not an event", Expect::Row("guest_error", "attributeerror")),
        ("reject", Expect::Row("reject", "no thanks")),
        ("reject actions", Expect::Actions("reject", "not this one")),
        ("generator", Expect::Generator),
    ];
    check("Python, JSON world", plugins::PY_HELPER_PLUGIN, &cases);
    check(
        "Python, typed world",
        plugins::PY_HELPER_TYPED_PLUGIN,
        &cases,
    );
}
