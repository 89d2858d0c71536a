//! The JavaScript helper (`plugins/js/src/freshet.js`) under misuse: a test
//! plugin (`tests/plugins/js-helper/app.js`) gets each mistake a plugin
//! author might make on its own row, and each must fail only what it should
//! (the row, or just the event's actions) with a reason that names it, the
//! other rows untouched: on StarlingMonkey in the JSON world (bodies and
//! payloads written once, inside the answer document) and on QuickJS in the
//! typed world (each written alone).

use freshet::plugin::contract::{Action, RowBatch, Value};
use freshet::plugin::{CallContext, Decided, EngineSettings, Outcome, Runtime, Sandbox};
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

const CASES: &[&str] = &[
    "ok",
    "bigint body",
    "null body",
    "bigint payload",
    "bad payload",
    "not an event",
    "actions not a list",
    "actions not actions",
    "reject",
    "reject actions",
    "generator",
];

#[test]
fn each_mistake_fails_only_its_row_or_its_actions_with_its_reason() {
    for (engine, plugin) in [
        ("StarlingMonkey, JSON world", plugins::JS_HELPER_PLUGIN),
        ("QuickJS, typed world", plugins::JS_HELPER_QUICKJS_PLUGIN),
    ] {
        let got = answers(plugin, CASES);
        assert_eq!(got.len(), CASES.len(), "{engine}");
        let row = |case: &str| &got[CASES.iter().position(|c| *c == case).unwrap()];
        let event = |case: &str| -> &Decided {
            let events = row(case)
                .as_ref()
                .unwrap_or_else(|e| panic!("{engine}, {case}: {e}"));
            assert_eq!(events.len(), 1, "{engine}, {case}");
            &events[0]
        };
        let context = |case: &str| format!("{engine}, {case}");

        // The well-made row is untouched by its neighbours.
        let ok = event("ok");
        assert_eq!(
            serde_json::from_str::<Json>(&ok.event.body).unwrap(),
            json!({"ok": true})
        );
        let actions = ok.actions.as_ref().expect("ok's actions");
        assert_eq!(webhook_body(&actions[0]), json!({"n": 1}), "{engine}");

        // Bodies: the row fails, naming why.
        let bigint = error(row("bigint body")).to_lowercase();
        assert!(
            bigint.starts_with("guest_error: ") && bigint.contains("bigint"),
            "{}: {bigint}",
            context("bigint body")
        );
        let null = error(row("null body"));
        assert!(
            null.contains("an event body must be an object or JSON text, not null"),
            "{}: {null}",
            context("null body")
        );
        let not_event = error(row("not an event"));
        assert!(
            not_event.contains("mapRow's event 0 was not made with event()"),
            "{}: {not_event}",
            context("not an event")
        );
        let rejected = error(row("reject"));
        assert!(
            rejected.starts_with("reject: ") && rejected.ends_with("no thanks"),
            "{}: {rejected}",
            context("reject")
        );

        // Payloads and actions: the event is delivered, its actions fail.
        let payload = error(&event("bigint payload").actions).to_lowercase();
        assert!(
            payload.starts_with("guest_error: ") && payload.contains("bigint"),
            "{}: {payload}",
            context("bigint payload")
        );
        let bad = error(&event("bad payload").actions);
        assert!(
            bad.contains("a webhook body must be an object or JSON text, not undefined"),
            "{}: {bad}",
            context("bad payload")
        );
        for case in ["actions not a list", "actions not actions"] {
            let message = error(&event(case).actions);
            assert!(
                message.contains("actions must be an array of email(), webhook() or crmUpdate()"),
                "{}: {message}",
                context(case)
            );
        }
        let refused = error(&event("reject actions").actions);
        assert!(
            refused.starts_with("reject: ") && refused.ends_with("not this one"),
            "{}: {refused}",
            context("reject actions")
        );

        // A generator's events are read once; the second, without actions,
        // goes to `decide` with the id the host gives event 1 filled in.
        let events = row("generator").as_ref().expect("generator's events");
        assert_eq!(events.len(), 2, "{engine}");
        assert_eq!(events[0].actions.as_ref().unwrap().len(), 0, "{engine}");
        let second_id = freshet::plugin::derived_id("generator@1", 1);
        assert_eq!(events[1].event.id, second_id, "{engine}");
        assert_eq!(
            events[0].event.id,
            freshet::plugin::derived_id("generator@1", 0),
            "{engine}"
        );
        let decided = events[1].actions.as_ref().expect("decide's actions");
        assert_eq!(
            webhook_body(&decided[0]),
            json!({"decidedFor": second_id}),
            "{engine}"
        );
    }
}
