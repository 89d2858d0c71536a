//! The `freshet` command as a user runs it: the real binary, real files.

use freshet_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(command: &mut Command) -> (Output, String, String) {
    let output = command.output().expect("running freshet");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// A quickstart-like folder: the sample table, the orders plugin, a config
/// delivering to files.
fn quickstart(rows: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("freshet.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/rust/quickstart.toml"),
    )
    .unwrap()
    .replace("\"orders.wasm\"", &format!("{:?}", plugins::ORDERS_PLUGIN))
    .replace(
        "cache_dir = \"cache\"",
        &format!("cache_dir = {:?}", plugins::COMPONENT_CACHE),
    );
    std::fs::write(&config, text).unwrap();
    let db = dir.path().join("orders.db");
    let (out, _, stderr) = run(freshet()
        .args(["sample", "--rows", &rows.to_string(), "--db"])
        .arg(&db));
    assert!(out.status.success(), "{stderr}");
    (dir, config)
}

#[test]
fn run_once_then_offsets_show_and_reset_replay_from_there() {
    let (dir, config) = quickstart(120);
    let (out, stdout, stderr) = run(freshet().args(["run", "--once", "--config"]).arg(&config));
    assert!(out.status.success(), "{stderr}");
    let stats: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(stats["pipeline"], "orders");
    assert_eq!(stats["stats"]["rows"], 120);
    let events = read_ndjson(&dir.path().join("events.ndjson"));
    assert_eq!(events.len(), 120);
    let emails = read_ndjson(&dir.path().join("actions/email.ndjson"));
    assert_eq!(emails.len(), 72, "60 % of the sample orders are confirmed");

    let (out, stdout, _) = run(freshet().args(["offsets", "show", "--config"]).arg(&config));
    assert!(out.status.success());
    let offset: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(offset["key"], 120);

    // Back to the 100th row's timestamp: rows 100..=120 are read again, and
    // their actions are not executed twice (the ledger has them).
    let ts = events[99]["body"]["xdmEntity"]["timestamp"]
        .as_str()
        .unwrap()
        .to_owned();
    let (out, stdout, stderr) = run(freshet()
        .args([
            "offsets",
            "reset",
            "--pipeline",
            "orders",
            "--to",
            &ts,
            "--config",
        ])
        .arg(&config));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("offset set to"), "{stdout}");
    let (out, stdout, _) = run(freshet().args(["run", "--once", "--config"]).arg(&config));
    assert!(out.status.success());
    let again: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(again["stats"]["rows"], 21);
    assert_eq!(again["stats"]["actions"], 0);
    assert!(again["stats"]["actions_skipped"].as_u64().unwrap() > 0);
    assert_eq!(
        read_ndjson(&dir.path().join("actions/email.ndjson")).len(),
        72
    );

    let (out, stdout, _) = run(freshet().args(["dlq", "list", "--config"]).arg(&config));
    assert!(out.status.success());
    assert_eq!(stdout, "", "no dead letters");
}

#[test]
fn validate_prints_every_problem_with_its_key_and_fails() {
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/config/every_error_at_once.toml");
    let (out, stdout, stderr) = run(freshet().args(["validate", "--config"]).arg(&golden));
    assert!(!out.status.success());
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("pipelines.Orders.source.page_size: must be between 1 and 100000, not 0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipelines.Orders.targets.hook.method"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("pipelines."))
            .count(),
        19,
        "{stderr}"
    );

    let (_dir, config) = quickstart(1);
    let (out, stdout, stderr) = run(freshet().args(["validate", "--config"]).arg(&config));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.trim_end().ends_with(": ok"), "{stdout}");
}

#[test]
fn plugin_test_prints_events_actions_and_usage_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.json");
    std::fs::write(
        &rows,
        r#"[
          {"_identity": "42@1700000000000000000", "id": 42, "customer_email": "ada@example.com", "status": "confirmed",
           "amount": "12.50", "currency": "EUR", "updated_at": {"timestamp": "2023-11-14T22:13:20Z"}},
          {"id": 43, "customer_email": null, "status": "pending", "amount": "1.00", "currency": "USD",
           "updated_at": {"timestamp": "2023-11-14T22:13:21Z"}}
        ]"#,
    )
    .unwrap();
    let (out, stdout, stderr) =
        run(plugin_test(plugins::ORDERS_PLUGIN, &rows).current_dir(dir.path()));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a rejected row fails the run: {stderr}"
    );
    assert!(stderr.contains("2 rows, 1 failed"), "{stderr}");
    let reports = plugin_test_reports(stdout.as_bytes());
    assert_eq!(reports.len(), 2);
    let first = &reports[0];
    assert_eq!(first["events"][0]["body"]["_acme"]["orderId"], "42");
    assert_eq!(first["events"][0]["timestamp"], "2023-11-14T22:13:20Z");
    let kinds: Vec<&str> = first["actions"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["email", "webhook"]);
    let usage = &first["usage"];
    assert!(usage["fuel"].as_u64().unwrap() > 1_000);
    // The orders plugin speaks contract 0.2: one `process` call, whose
    // budget is the base per row plus the allowance for its bytes (a few
    // hundred here); it maps and decides, so all its fuel is the map's.
    let limit = usage["fuel_limit"].as_u64().unwrap();
    assert!((11_000_000..12_000_000).contains(&limit), "{limit}");
    assert_eq!(usage["map_fuel"], usage["fuel"]);
    assert!(usage["peak_memory_bytes"].as_u64().unwrap() > 0);
    // Where the row's time went: all three sides took some (the plugin asks
    // the host for its `tenant` setting, and the host checks the answer).
    for side in ["guest_us", "boundary_us", "host_us"] {
        let us = usage["time"][side].as_f64().unwrap_or(-1.0);
        assert!(us > 0.0, "{side}: {}", usage["time"]);
    }
    // The event's `_id` is the host's derivation, and the webhook quotes it.
    let derived = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        "42@1700000000000000000#0",
    ));
    assert_eq!(first["events"][0]["_id"], derived.as_str());
    assert_eq!(first["actions"][0][1]["body"]["eventId"], derived.as_str());
    assert_eq!(reports[1]["error"]["code"], "reject");
    assert!(reports[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("customer_email"));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("rows.json")],
        "nothing written"
    );
}

/// A plugin that panics (Rust writes the message to stderr), spins or
/// prints is one row's problem: `plugin test` reports each failure, with
/// what the call used before the sandbox stopped it, and goes on.
#[test]
fn plugin_test_reports_a_panic_as_a_trap_and_survives_printing() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.json");
    let row = |status: &str| {
        format!(
            r#"{{"id": 1, "customer_email": "a@example.com", "status": "{status}", "amount": "1.00",
                "currency": "EUR", "updated_at": {{"timestamp": "2023-11-14T22:13:20Z"}}}}"#
        )
    };
    std::fs::write(
        &rows,
        format!(
            "[{}, {}, {}, {}]",
            row("trap"),
            row("loop"),
            row("print"),
            row("fine")
        ),
    )
    .unwrap();
    let (out, stdout, stderr) = run(&mut plugin_test(plugins::HOSTILE_PLUGIN, &rows));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("4 rows, 2 failed"), "{stderr}");
    let reports = plugin_test_reports(stdout.as_bytes());
    let (trap, spin) = (&reports[0], &reports[1]);
    assert_eq!(trap["error"]["code"], "trap", "{trap}");
    assert!(trap["usage"]["fuel"].as_u64().unwrap() > 0, "{trap}");
    assert_eq!(spin["error"]["code"], "out_of_fuel", "{spin}");
    assert_eq!(spin["usage"]["fuel"], spin["usage"]["fuel_limit"], "{spin}");
    for report in &reports[2..] {
        assert_eq!(report["events"].as_array().unwrap().len(), 1, "{report}");
    }
    assert!(
        !stdout.contains("to stdout"),
        "the plugin's stdout reaches nobody"
    );
}

#[test]
fn bench_latency_reports_percentiles_for_every_row() {
    let (out, stdout, stderr) = run(freshet().args([
        "bench",
        "latency",
        "--rates",
        "50",
        "--seconds",
        "1",
        "--plugin",
        plugins::ORDERS_PLUGIN,
    ]));
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["insert_to_webhook", "insert_to_aep"]);
    for line in &lines {
        assert_eq!(line["bench"], "latency");
        assert_eq!(line["rate"], 50);
        assert_eq!(line["samples"], 50, "{line}");
        let (p50, p99, max) = (
            line["p50_ms"].as_f64().unwrap(),
            line["p99_ms"].as_f64().unwrap(),
            line["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{line}");
    }
}

#[test]
fn a_backfill_reports_rows_left_and_the_rate_when_stderr_is_not_a_terminal() {
    let (_dir, config) = quickstart(2_500);
    let (out, _, stderr) = run(freshet()
        .env("FRESHET_LOG", "info")
        .args(["run", "--once", "--config"])
        .arg(&config));
    assert!(out.status.success(), "{stderr}");
    // Started behind (the first page was full): the rows waiting, counted once.
    let start = stderr
        .lines()
        .find(|l| l.contains("catching up"))
        .unwrap_or_else(|| panic!("no progress line in:\n{stderr}"));
    assert!(start.contains("rows_left=2500"), "{start}");
    let end = stderr
        .lines()
        .find(|l| l.contains("caught up"))
        .unwrap_or_else(|| panic!("no end line in:\n{stderr}"));
    assert!(
        end.contains("rows=2500") && end.contains("rows_per_s="),
        "{end}"
    );
}
