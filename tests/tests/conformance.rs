//! Conformance: the orders plugin in Python, JavaScript, C and Go gives the
//! Rust plugin's answers, input for input; Python and JavaScript in both of
//! contract 0.2's worlds (rows and answers as JSON documents, the default,
//! and typed), JavaScript on both engines.
//!
//! The fixture rows (`tests/conformance/*.json`, the `freshet plugin test`
//! format) go through each plugin in one batch, and every event the batch
//! produced through `decide` in one call. Each row's transcript, its events
//! (id, instant, body) and each event's actions, or its typed error with the
//! message, must equal the Rust plugin's byte for byte once JSON texts are in
//! canonical form (RFC 8785: sorted keys, one spelling per number and
//! string). The fuel budget is raised: the fixture's very long texts are about
//! answers, not budgets.

use freshet::plugin::contract::{Action, Event, RowBatch};
use freshet::plugin::{
    rows_file, Attempt, CallContext, Decided, EngineSettings, Limits, Origin, Outcome, Runtime,
    Sandbox,
};
use freshet_tests::plugins;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// The plugins compared with Rust's.
const LANGUAGES: &[(&str, &str)] = &[
    ("python", plugins::PYTHON_PLUGIN),
    ("python, typed world", plugins::PYTHON_TYPED_PLUGIN),
    ("javascript", plugins::JS_PLUGIN),
    ("javascript, typed world", plugins::JS_TYPED_PLUGIN),
    ("c", plugins::C_PLUGIN),
    ("go", plugins::GO_PLUGIN),
];

/// One engine for the whole file, caching compiled components where every
/// test run finds them (Python and JavaScript take seconds to compile).
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(&EngineSettings {
            cache_dir: Some(plugins::COMPONENT_CACHE.into()),
            ..Default::default()
        })
        .expect("engine")
    })
}

fn sandbox(plugin: &str, settings: &[(&str, &str)]) -> Sandbox {
    let limits = Limits {
        fuel_per_row: 4_000_000_000,
        timeout_ms: 60_000,
        ..Limits::default()
    };
    let settings: BTreeMap<String, String> = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let ctx = CallContext::new(
        "conformance",
        "orders",
        limits,
        settings,
        Default::default(),
    );
    Sandbox::new(runtime().load(Path::new(plugin)).expect("load plugin"), ctx)
}

/// JSON text in canonical form; text that is not JSON is kept, marked.
fn canonical(text: &str) -> Json {
    match serde_json::from_str::<Json>(text) {
        Ok(value) => Json::String(serde_json_canonicalizer::to_string(&value).expect("canonical")),
        Err(_) => json!({ "not JSON": text }),
    }
}

fn event_json(event: &Event) -> Json {
    json!({
        "id": event.id,
        "timestamp": [event.timestamp.seconds, event.timestamp.nanos],
        "body": canonical(&event.body),
    })
}

fn action_json(action: &Action) -> Json {
    match action {
        Action::Email(e) => json!({"email": {
            "target": e.target, "to": e.to, "template": e.template,
            "variables": canonical(&e.variables),
        }}),
        Action::Webhook(w) => json!({"webhook": {"target": w.target, "body": canonical(&w.body)}}),
        Action::CrmUpdate(c) => json!({"crm-update": {
            "target": c.target, "object": c.object, "external_id": c.external_id,
            "fields": canonical(&c.fields),
        }}),
    }
}

fn error_json(e: &freshet::plugin::PluginError) -> Json {
    json!({"error": {"code": e.code(), "message": e.to_string()}})
}

fn fixture_batch(fixture: &str) -> RowBatch {
    let (columns, rows) = rows_file::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture))
        .expect("fixture parses");
    RowBatch { columns, rows }
}

/// Each row's answer: its error, or its events with each one's actions.
fn transcript(plugin: &str, fixture: &str, settings: &[(&str, &str)]) -> Vec<Json> {
    // One `process` call for a 0.2 plugin; `map-rows`, then `decide`, for 0.1.
    let batch = fixture_batch(fixture);
    transcribe(&batch, sandbox(plugin, settings).process(&batch))
}

/// The plugin's own answer to `process` asked for events only, as it came
/// over the boundary (a pipeline would drop any actions in it).
fn events_only_transcript(plugin: &str, fixture: &str, settings: &[(&str, &str)]) -> Vec<Json> {
    let batch = fixture_batch(fixture);
    match sandbox(plugin, settings)
        .session()
        .try_process(&batch, false)
    {
        Attempt::Done(answers) => transcribe(&batch, answers),
        Attempt::Stopped(e) => panic!("{plugin}: the call stopped: {e}"),
    }
}

fn transcribe(batch: &RowBatch, answers: Vec<Outcome<Decided>>) -> Vec<Json> {
    assert_eq!(answers.len(), batch.rows.len(), "one answer per row");
    batch
        .rows
        .iter()
        .zip(answers)
        .map(|(row, answer)| {
            let answer = match answer {
                Err(e) => error_json(&e),
                Ok(decided) => Json::Array(
                    decided
                        .iter()
                        .map(|d| {
                            let actions = match &d.actions {
                                Ok(actions) => {
                                    Json::Array(actions.iter().map(action_json).collect())
                                }
                                Err(e) => error_json(e),
                            };
                            json!({"event": event_json(&d.event), "actions": actions})
                        })
                        .collect(),
                ),
            };
            json!({"identity": row.identity, "answer": answer})
        })
        .collect()
}

/// Where two texts first differ, with some context, so a failure is
/// readable even when a row holds 100 KB of text.
fn first_difference(expected: &str, got: &str) -> String {
    let at = expected
        .char_indices()
        .zip(got.chars())
        .find(|((_, a), b)| a != b)
        .map_or(expected.len().min(got.len()), |((i, _), _)| i);
    let from = at.saturating_sub(120);
    let window = |s: &str| -> String { s.get(from..).unwrap_or("").chars().take(240).collect() };
    format!(
        "at byte {at}:\n  rust: …{}\n  this: …{}",
        window(expected),
        window(got)
    )
}

fn assert_conforms(fixture: &str, settings: &[(&str, &str)]) -> Vec<Json> {
    let reference = transcript(plugins::ORDERS_PLUGIN, fixture, settings);
    for (language, plugin) in LANGUAGES {
        let got = transcript(plugin, fixture, settings);
        assert_eq!(got.len(), reference.len());
        for (expected, got) in reference.iter().zip(&got) {
            let (expected, got) = (expected.to_string(), got.to_string());
            assert!(
                expected == got,
                "{language} differs from Rust on {fixture} with settings {settings:?}, row {}\n{}",
                serde_json::from_str::<Json>(&expected).unwrap()["identity"],
                first_difference(&expected, &got)
            );
        }
    }
    reference
}

/// JavaScript on QuickJS (`plugins/js/build --engine quickjs`) answers as
/// Rust does, but for rows holding an integer past 2^53: its bindings hand
/// 64-bit integers to JavaScript as doubles, so the helper refuses those rows
/// rather than map a wrong id.
#[test]
fn javascript_on_quickjs_conforms_but_refuses_integers_it_cannot_hold() {
    let fixture = "conformance/orders.json";
    let settings = [("tenant", "acme")];
    let (_, rows) = rows_file::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture))
        .expect("fixture parses");
    const EXACT: i64 = (1 << 53) - 1;
    let inexact = |row: &freshet::plugin::contract::Row| {
        row.cells.iter().any(|cell| {
            matches!(cell, freshet::plugin::contract::Value::Integer(i) if !(-EXACT..=EXACT).contains(i))
        })
    };
    let reference = transcript(plugins::ORDERS_PLUGIN, fixture, &settings);
    let got = transcript(plugins::JS_QUICKJS_PLUGIN, fixture, &settings);
    assert_eq!(got.len(), reference.len());
    let mut refused = 0;
    for ((row, expected), got) in rows.iter().zip(&reference).zip(&got) {
        if inexact(row) {
            refused += 1;
            assert_eq!(got["answer"]["error"]["code"], "reject", "{got}");
            let message = got["answer"]["error"]["message"].as_str().unwrap();
            assert!(message.contains("past 2^53"), "{message}");
        } else {
            let (expected, got) = (expected.to_string(), got.to_string());
            assert!(
                expected == got,
                "QuickJS differs from Rust: {}",
                first_difference(&expected, &got)
            );
        }
    }
    assert!(
        refused >= 2,
        "the fixture holds the largest and smallest 64-bit ids"
    );
}

/// The answers of rows whose identity starts with `prefix`.
fn answers<'a>(transcript: &'a [Json], note: &str) -> &'a Json {
    &transcript
        .iter()
        .find(|row| {
            row["identity"]
                .as_str()
                .unwrap()
                .ends_with(&format!("@{note}"))
        })
        .unwrap_or_else(|| panic!("the fixture has a row `{note}`"))["answer"]
}

#[test]
fn every_language_answers_the_fixture_as_rust_does() {
    let reference = assert_conforms("conformance/orders.json", &[("tenant", "acme")]);

    // The fixture is only worth something if it reaches every path: check the
    // reference answers cover what the rows claim.
    let rejected = |note: &str| answers(&reference, note)["error"]["code"] == "reject";
    let rows = reference.len();
    let failed = reference
        .iter()
        .filter(|r| r["answer"]["error"].is_object())
        .count();
    assert!(
        rows >= 60 && failed >= 30 && rows - failed >= 25,
        "{rows} rows, {failed} failed"
    );
    for note in [
        "amount as float",
        "amount '1e3'",
        "id null",
        "updated_at as text",
        "email empty",
    ] {
        assert!(rejected(note), "{note}: {}", answers(&reference, note));
    }
    assert!(rejected("400 digits: not finite"));
    let event = |note: &str| answers(&reference, note)[0].clone();
    assert_eq!(
        event("before 1970 with microseconds")["event"]["timestamp"],
        json!([-14182940, 123456000])
    );
    assert_eq!(
        event("one microsecond before 1970")["event"]["timestamp"],
        json!([-1, 999999000])
    );
    assert_eq!(
        event("plain confirmed")["actions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        event("cancelled")["actions"][0]["crm-update"]["object"],
        "Contact"
    );
    assert_eq!(event("pending: no action")["actions"], json!([]));
    let decide_rejects = &event("empty id: decide rejects")["actions"]["error"];
    assert_eq!(decide_rejects["code"], "reject", "{decide_rejects}");
    let body = event("control characters and NUL")["event"]["body"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(body.contains(r"\u0000nul"), "{body}");
    let long = event("very long text")["event"]["body"]
        .as_str()
        .unwrap()
        .len();
    assert!(long > 150_000, "{long}");
}

#[test]
fn the_default_tenant_and_a_missing_column_conform_too() {
    let reference = assert_conforms("conformance/orders.json", &[]);
    let body: Json = serde_json::from_str(
        answers(&reference, "plain confirmed")[0]["event"]["body"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["_freshet"]["orderId"], "1", "{body}");

    let missing = assert_conforms("conformance/orders-missing-columns.json", &[]);
    assert_eq!(
        transcript(
            plugins::JS_QUICKJS_PLUGIN,
            "conformance/orders-missing-columns.json",
            &[]
        ),
        missing,
        "javascript on QuickJS"
    );
    for row in &missing {
        assert_eq!(
            row["answer"]["error"]["message"],
            "plugin rejected the input: the source has no column `currency`"
        );
    }
}

/// Every language with QuickJS beside the default engine.
fn every_plugin() -> impl Iterator<Item = (&'static str, &'static str)> {
    [("rust", plugins::ORDERS_PLUGIN)]
        .into_iter()
        .chain(LANGUAGES.iter().copied())
        .chain([("javascript on QuickJS", plugins::JS_QUICKJS_PLUGIN)])
}

/// The helpers' fallback: an event given without actions goes to the
/// plugin's `decide` inside the same `process` call, its id filled first.
/// With `decide_from = "event"` every orders plugin leaves its events
/// undecided; the answers must be those of deciding from the row.
#[test]
fn events_left_undecided_get_decide_s_actions_in_the_same_call() {
    let fixture = "conformance/orders.json";
    let from_row = transcript(plugins::ORDERS_PLUGIN, fixture, &[("tenant", "acme")]);
    let from_event = [("tenant", "acme"), ("decide_from", "event")];
    assert_eq!(
        assert_conforms(fixture, &from_event),
        from_row,
        "rust: deciding from the stored body differs from deciding from the row"
    );
    let quickjs = transcript(plugins::JS_QUICKJS_PLUGIN, fixture, &from_event);
    let quickjs_from_row = transcript(plugins::JS_QUICKJS_PLUGIN, fixture, &[("tenant", "acme")]);
    assert_eq!(quickjs, quickjs_from_row, "javascript on QuickJS");
    // The fallback is reached: `decide`'s own failure is the event's.
    let failed = &answers(&from_row, "empty id: decide rejects")[0]["actions"]["error"];
    assert_eq!(failed["code"], "reject", "{failed}");

    // A setting of neither kind refuses each row by name, in every language.
    let wrong = [("tenant", "acme"), ("decide_from", "body")];
    let refused = assert_conforms(fixture, &wrong);
    assert_eq!(
        answers(&refused, "plain confirmed")["error"]["message"],
        "plugin rejected the input: setting `decide_from` is `body`; expected `row` or `event`"
    );
}

/// A pipeline without actions asks `process` for events only: each
/// language's helper must then decide nothing, not from the row and not
/// through `decide`, and the events must be the ones it gives when deciding.
/// (The host would drop actions sent anyway; this reads the plugin's own
/// answer.) A row whose deciding fails ("empty id") has no failure here.
#[test]
fn events_only_calls_decide_nothing_in_any_language() {
    let fixture = "conformance/orders.json";
    for settings in [
        &[("tenant", "acme")][..],
        &[("tenant", "acme"), ("decide_from", "event")][..],
    ] {
        let decided = transcript(plugins::ORDERS_PLUGIN, fixture, settings);
        for (language, plugin) in every_plugin() {
            let events_only = events_only_transcript(plugin, fixture, settings);
            assert_eq!(events_only.len(), decided.len());
            let mut events = 0;
            for (got, full) in events_only.iter().zip(&decided) {
                let row = &got["identity"];
                let Some(answer) = got["answer"].as_array() else {
                    // QuickJS refuses integers past 2^53 either way.
                    if language != "javascript on QuickJS" {
                        assert_eq!(got, full, "{language}, {settings:?}, row {row}");
                    }
                    continue;
                };
                let full = full["answer"].as_array().expect("the same row maps");
                assert_eq!(answer.len(), full.len(), "{language}, row {row}");
                for (event, decided) in answer.iter().zip(full) {
                    events += 1;
                    assert_eq!(event["event"], decided["event"], "{language}, row {row}");
                    assert_eq!(
                        event["actions"],
                        json!([]),
                        "{language} decided while asked for events only, {settings:?}, row {row}"
                    );
                }
            }
            assert!(events >= 25, "{language}: {events} events");
        }
    }
}

/// Events `decide` gets from elsewhere than `map-rows` (a replay of an older
/// plugin's events, a bug): bodies of the wrong shape are rejected in every
/// language; a well-formed one written differently gets the same actions.
#[test]
fn events_of_another_shape_are_rejected_everywhere() {
    let event = |body: &str| Event {
        id: "e1".into(),
        timestamp: freshet::plugin::contract::Instant {
            seconds: 0,
            nanos: 0,
        },
        body: body.into(),
    };
    let order = r#""commerce": {"order": {"currencyCode": "EUR"}}"#;
    let malformed = [
        "{}".to_owned(),
        "[]".to_owned(),
        "null".to_owned(),
        "not json".to_owned(),
        format!(r#"{{"_acme": null, "identityMap": {{}}, {order}}}"#),
        format!(
            r#"{{"_acme": {{"orderId": 5, "orderStatus": "confirmed", "amount": "1"}}, "identityMap": {{"Email": [{{"id": "a@b"}}]}}, {order}}}"#
        ),
        format!(
            r#"{{"_acme": {{"orderId": "5", "orderStatus": "confirmed", "amount": "1"}}, "identityMap": {{"Email": [{{"id": 7}}]}}, {order}}}"#
        ),
        r#"{"_acme": {"orderId": "5", "orderStatus": "confirmed", "amount": "1"}, "identityMap": {"Email": [{"id": "a@b"}]}, "commerce": {"order": {"currencyCode": 1}}}"#.to_string(),
        format!(
            r#"{{"_acme": {{"orderId": "5", "orderStatus": "confirmed", "amount": "1"}}, "identityMap": {{"Email": []}}, {order}}}"#
        ),
        r#"{"_acme": {"orderId": "5", "orderStatus": "confirmed", "amount": "1"}, "identityMap": {"Email": [{"id": "a@b"}]}}"#.to_string(),
    ];
    let well_formed = event(
        "{ \"_acme\" : {\"orderId\":\"caf\\u00e9 \\ud83c\\udf89\", \"orderStatus\":\"confirmed\",\n \"amount\":\"1.00\"},\
         \"identityMap\":{\"Email\":[{\"id\":\"a\\/b@example.com\",\"primary\":true}, {\"id\":\"second\"}]},\
         \"commerce\":{\"order\":{\"currencyCode\":\"EUR\",\"priceTotal\":1}}, \"extra\": [1, {\"x\": \"}\"}] }",
    );
    let events: Vec<Event> = malformed
        .iter()
        .map(|b| event(b))
        .chain([well_formed])
        .collect();
    let decide = |plugin: &str| {
        sandbox(plugin, &[("tenant", "acme")])
            .decide(&events)
            .iter()
            .map(|answer| match answer {
                Ok(actions) => Json::Array(actions.iter().map(action_json).collect()),
                Err(e) => json!({ "error": e.code() }),
            })
            .collect::<Vec<_>>()
    };
    let reference = decide(plugins::ORDERS_PLUGIN);
    let (last, bad) = reference.split_last().unwrap();
    assert!(
        bad.iter().all(|a| a == &json!({"error": "reject"})),
        "{bad:?}"
    );
    assert_eq!(
        last[0]["email"]["variables"],
        canonical(r#"{"orderId":"café 🎉","amount":"1.00","currency":"EUR"}"#)
    );
    assert_eq!(last[0]["email"]["to"], "a/b@example.com");
    let quickjs = ("javascript on QuickJS", plugins::JS_QUICKJS_PLUGIN);
    for (language, plugin) in LANGUAGES.iter().chain([&quickjs]) {
        let got = decide(plugin);
        for (n, (expected, got)) in reference.iter().zip(&got).enumerate() {
            assert_eq!(got, expected, "{language}, event {n}: {}", events[n].body);
        }
    }
}

/// The host treats every language alike but links only what a component
/// imports: Python's CPython, SpiderMonkey, Go's runtime and Rust's std
/// import WASI (and get it with nothing granted); the C plugin imports none
/// and gets none.
#[test]
fn each_language_gets_wasi_only_if_it_imports_it() {
    let uses_wasi = |plugin: &str| {
        runtime()
            .load(Path::new(plugin))
            .expect("load plugin")
            .uses_wasi()
    };
    for (language, plugin, expected) in [
        ("rust", plugins::ORDERS_PLUGIN, true),
        ("python", plugins::PYTHON_PLUGIN, true),
        ("javascript", plugins::JS_PLUGIN, true),
        ("c", plugins::C_PLUGIN, false),
        ("go", plugins::GO_PLUGIN, true),
    ] {
        assert_eq!(uses_wasi(plugin), expected, "{language}");
    }
}

/// The large components (CPython, SpiderMonkey) compile once: a restarted
/// host (a new engine on the same cache folder) deserializes them instead.
#[test]
fn large_components_load_from_the_disk_cache_after_a_restart() {
    for plugin in [plugins::PYTHON_PLUGIN, plugins::JS_PLUGIN] {
        let engine = || {
            Runtime::new(&EngineSettings {
                cache_dir: Some(plugins::COMPONENT_CACHE.into()),
                ..Default::default()
            })
            .expect("engine")
        };
        // The first engine compiles it, or finds it from an earlier run.
        engine().load(Path::new(plugin)).expect("load plugin");
        let restarted = engine().load(Path::new(plugin)).expect("load plugin");
        assert_eq!(restarted.origin(), Origin::DiskCache, "{plugin}");
    }
}
