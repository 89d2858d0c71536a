//! The pipeline end to end against real loopback peers: the SQLite source,
//! the example orders plugin, an AEP-protocol receiver and webhooks.

use freshet_tests::*;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::time::Duration;

fn orders(ids: std::ops::Range<i64>, base_ms: i64) -> Vec<Order> {
    ids.map(|id| {
        Order::new(
            id,
            freshet::bench::sample::status_of(id as u64),
            base_ms + id,
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_become_aep_envelopes_and_confirmed_orders_fire_webhooks() {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    let base = now_ms() - 60_000;
    let rows = orders(1..121, base);
    setup.insert(&rows);

    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.rows, 120);
    assert_eq!(stats.delivered, 120);
    assert_eq!(stats.dead_letters, 0);

    let messages = receiver.messages();
    assert_eq!(messages.len(), 120);
    for (m, order) in messages.iter().zip(&rows) {
        let e = &m.envelope;
        assert_eq!(
            e["header"]["schemaRef"]["id"],
            "https://ns.adobe.com/acme/schemas/orders"
        );
        assert_eq!(
            e["header"]["schemaRef"]["contentType"],
            "application/vnd.adobe.xed-full+json;version=1"
        );
        assert_eq!(e["header"]["imsOrgId"], "TEST@AdobeOrg");
        assert_eq!(e["header"]["datasetId"], "ds-1");
        assert_eq!(e["header"]["flowId"], "flow-1");
        assert_eq!(e["body"]["xdmMeta"]["schemaRef"], e["header"]["schemaRef"]);
        let entity = &e["body"]["xdmEntity"];
        let identity = format!("{}@{}", order.id, order.updated_at * 1_000_000);
        assert_eq!(
            entity["_id"],
            hex::encode(Sha256::digest(format!("{identity}#0").as_bytes())),
            "deterministic _id: the host's derivation for the row's first event"
        );
        let ts =
            chrono::DateTime::parse_from_rfc3339(entity["timestamp"].as_str().unwrap()).unwrap();
        assert_eq!(ts.timestamp_millis(), order.updated_at);
        assert_eq!(
            entity["identityMap"]["Email"][0]["id"],
            order.email.as_str()
        );
        assert_eq!(entity["_acme"]["orderId"], order.id.to_string());
        assert_eq!(entity["_acme"]["orderStatus"], order.status.as_str());
        let event_type = if order.status == "confirmed" {
            "commerce.purchases"
        } else {
            "commerce.order.pending"
        };
        if order.status != "cancelled" {
            assert_eq!(entity["eventType"], event_type);
        }
    }

    let confirmed: Vec<&Order> = rows.iter().filter(|o| o.status == "confirmed").collect();
    let hooks = receiver.hooks();
    assert_eq!(hooks.len(), confirmed.len());
    let mut keys = HashSet::new();
    for hook in &hooks {
        assert_eq!(hook.path, "/hooks/order-confirmed");
        assert_eq!(
            hook.headers["x-api-key"], "s3cret",
            "the secret came from the environment"
        );
        let key = hook
            .idempotency_key
            .clone()
            .expect("an Idempotency-Key header");
        assert!(
            key.starts_with("orders/") && key.ends_with("/1"),
            "{key}: webhook is the row's 2nd action"
        );
        assert!(keys.insert(key), "idempotency keys are unique");
    }
    let hooked: HashSet<String> = hooks
        .iter()
        .map(|h| h.body["orderId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(hooked, confirmed.iter().map(|o| o.id.to_string()).collect());

    let emails = setup.ndjson("emails.ndjson");
    assert_eq!(emails.len(), confirmed.len());
    assert_eq!(emails[0]["action"]["kind"], "email");
    assert_eq!(emails[0]["action"]["template"], "order-confirmation");
    let cancelled = rows.iter().filter(|o| o.status == "cancelled").count();
    let crm = setup.ndjson("crm.ndjson");
    assert_eq!(crm.len(), cancelled);
    assert_eq!(crm[0]["action"]["object"], "Contact");
    assert_eq!(crm[0]["action"]["fields"]["last_order_status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_committed_offset() {
    restart_resumes(Setup::new(plugins::ORDERS_PLUGIN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_committed_offset_with_the_postgres_store() {
    restart_resumes(Setup::new(plugins::ORDERS_PLUGIN).with_postgres_state(10_000)).await;
}

/// Stopped part-way, restarted with more rows: every row once.
async fn restart_resumes(mut setup: Setup) {
    let receiver = Receiver::start(true).await.unwrap();
    setup.pipeline.page_size = 25;
    let base = now_ms() - 60_000;
    setup.insert(&orders(1..1001, base));

    // First run: stopped by shutdown part-way through.
    let running = Running::start(setup.config(&receiver));
    assert!(wait_for_messages(&receiver, 200, Duration::from_secs(30)).await);
    let first = running.stop().await;
    assert!(
        first.rows >= 200 && first.rows < 1000,
        "stopped part-way: {first:?}"
    );

    // More rows arrive while it is down; the second run picks up where the first committed.
    setup.insert(&orders(1001..1101, base));
    let second = setup.run_once(&receiver).await.unwrap();
    assert_eq!(first.rows + second.rows, 1100, "{first:?} {second:?}");
    assert_exactly_once(received_order_ids(&receiver), 1..1101);
    let hook_keys: Vec<String> = receiver
        .hooks()
        .iter()
        .filter_map(|h| h.idempotency_key.clone())
        .collect();
    assert_eq!(
        hook_keys.len(),
        hook_keys.iter().collect::<HashSet<_>>().len(),
        "no webhook twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_an_offset_reset_redelivers_events_but_not_actions() {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&orders(1..51, now_ms() - 60_000));
    let first = setup.run_once(&receiver).await.unwrap();
    let hooks = receiver.hooks().len();
    assert!(hooks > 0);

    setup.state().reset_offset("orders", None).unwrap();
    let replay = setup.run_once(&receiver).await.unwrap();
    assert_eq!(
        replay.delivered, 50,
        "events are at-least-once: replayed with the same _ids"
    );
    let ids = received_ids(&receiver);
    assert_eq!(ids[..50], ids[50..], "the same deterministic _ids");
    assert_eq!(
        receiver.hooks().len(),
        hooks,
        "the ledger kept every webhook from firing twice"
    );
    assert_eq!(replay.actions, 0);
    assert_eq!(replay.actions_skipped, first.actions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rows_sharing_one_timestamp_are_each_delivered_once() {
    one_thousand_ties(Setup::new(plugins::ORDERS_PLUGIN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rows_sharing_one_timestamp_are_each_delivered_once_with_the_postgres_store() {
    one_thousand_ties(Setup::new(plugins::ORDERS_PLUGIN).with_postgres_state(10_000)).await;
}

/// 1,000 rows at one instant, pages of 100: each once.
async fn one_thousand_ties(mut setup: Setup) {
    let receiver = Receiver::start(true).await.unwrap();
    setup.pipeline.page_size = 100;
    setup.pipeline.batch_size = 30;
    let ts = now_ms() - 10_000;
    setup.insert(
        &(1..1001)
            .map(|id| Order::new(id, "pending", ts))
            .collect::<Vec<_>>(),
    );
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.pages, 10);
    assert_exactly_once(received_order_ids(&receiver), 1..1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_late_inside_the_delay_window_is_delivered() {
    late_commit(Setup::new(plugins::ORDERS_PLUGIN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_late_inside_the_delay_window_is_delivered_with_the_postgres_store() {
    late_commit(Setup::new(plugins::ORDERS_PLUGIN).with_postgres_state(10_000)).await;
}

/// A row stamped before another but committed after it.
async fn late_commit(mut setup: Setup) {
    let receiver = Receiver::start(true).await.unwrap();
    setup.pipeline.delay_ms = 1_500;
    setup.pipeline.poll_interval_ms = 100;
    let running = Running::start(setup.config(&receiver));
    // Row 2 is stamped first but its transaction commits a second later,
    // after row 1 (stamped later) has committed.
    let t0 = now_ms();
    setup.insert(&[Order::new(1, "pending", t0 + 200)]);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    setup.insert(&[Order::new(2, "pending", t0)]);
    wait_for_messages(&receiver, 2, Duration::from_secs(10)).await;
    running.stop().await;
    assert_eq!(
        received_order_ids(&receiver),
        vec![2, 1],
        "in timestamp order, none lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_false_reads_only_rows_after_the_first_start_and_initial_starts_there() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.pipeline.backfill = false;
    setup.insert(&orders(1..11, now_ms() - 60_000));
    assert_eq!(
        setup.run_once(&receiver).await.unwrap().rows,
        0,
        "old rows skipped"
    );
    setup.insert(&orders(11..16, now_ms() - 10_000 + 1_000));
    // -1 was fixed at the first start; rows stamped after it are read.
    setup.insert(&[Order::new(100, "pending", now_ms() + 10)]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(setup.run_once(&receiver).await.unwrap().rows, 1);
    assert_eq!(received_order_ids(&receiver), vec![100]);

    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    let base = 1_700_000_000_000;
    setup.insert(&orders(1..11, base));
    setup.pipeline.initial = Some("\"2023-11-14T22:13:20.005Z\"".into()); // base + 5 ms, inclusive
    assert_eq!(setup.run_once(&receiver).await.unwrap().rows, 6);
    assert_eq!(received_order_ids(&receiver), (5..11).collect::<Vec<_>>());
}

/// Not the orders table: a TEXT key, timestamps in whole seconds (so many
/// rows tie), a page size that splits ties, a batch size that splits pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_table_with_a_text_key_and_second_timestamps_is_read_exactly_once() {
    let receiver = Receiver::start(true).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("signups.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE signups (uid TEXT PRIMARY KEY NOT NULL, status TEXT, note BLOB, score REAL, created INTEGER NOT NULL)",
    )
    .unwrap();
    let base = now_ms() / 1000 - 3_600;
    // 300 rows over 20 seconds: 15 per second, keys not in insertion order.
    for i in 0..300i64 {
        conn.execute(
            "INSERT INTO signups VALUES (?1, 'fine', x'00ff', 0.5, ?2)",
            rusqlite::params![format!("u-{:03}", (i * 7919) % 300), base + i / 15],
        )
        .unwrap();
    }
    let text = format!(
        r#"
[engine]
cache_dir = {cache:?}
[state]
path = {state:?}
[pipelines.signups]
plugin = {plugin:?}
batch_size = 4
[pipelines.signups.source]
kind = "sqlite"
path = {db:?}
table = "signups"
key_column = "uid"
page_size = 7
backfill = true
timestamp = {{ column = "created", unit = "s" }}
[pipelines.signups.deliver]
kind = "aep"
base_url = "{aep}"
connection_id = "c"
ims_org = "O@AdobeOrg"
dataset_id = "d"
schema_id = "https://ns.adobe.com/t/schemas/s"
[pipelines.signups.targets.hook]
kind = "webhook"
url = "{aep}/hooks/signup"
timeout_ms = 5000
"#,
        cache = plugins::COMPONENT_CACHE,
        state = dir.path().join("state.db"),
        plugin = plugins::HOSTILE_PLUGIN,
        aep = receiver.url(),
    );
    let config = freshet::config::parse(&text).unwrap();
    assert!(config.validate().is_empty());
    let results = freshet::run(
        &config,
        Default::default(),
        freshet::RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let stats = results[0].1;
    assert_eq!(
        (stats.rows, stats.delivered, stats.actions),
        (300, 300, 300)
    );
    // The hostile plugin's event id is the row identity: key@nanos.
    let mut ids: Vec<String> = received_ids(&receiver);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "every row exactly once");
    assert!(
        ids.iter()
            .all(|id| id.starts_with("u-") && id.ends_with("000000000")),
        "{:?}",
        &ids[..3]
    );
    assert_eq!(receiver.hooks().len(), 300);
}

/// Bug: a legitimately large row ran out of fuel at the default limits (a
/// fixed budget per row, whatever its size). The budget now grows with the
/// row's bytes, and the example plugin spends a few instructions a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_a_300_kb_text_column_passes_at_the_default_limits() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    // One row per call: the large row's budget is its own, not shared with
    // small neighbours'.
    setup.pipeline.batch_size = 1;
    let base = now_ms() - 60_000;
    let mut big = Order::new(2, "confirmed", base + 2);
    big.email = format!("{}@example.com", "x".repeat(300_000));
    setup.insert(&[
        Order::new(1, "confirmed", base + 1),
        big.clone(),
        Order::new(3, "confirmed", base + 3),
    ]);
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(setup.dead_letters(), vec![], "{stats:?}");
    assert_eq!((stats.delivered, stats.actions), (3, 6), "{stats:?}");
    let hooks = receiver.hooks();
    assert!(
        hooks.iter().any(|h| h.body["email"] == big.email.as_str()),
        "the large row's webhook carries its whole e-mail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_actions_off_events_are_delivered_and_nothing_is_decided_or_run() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.pipeline.extra = "actions = false".into();
    let rows = orders(1..121, now_ms() - 60_000);
    setup.insert(&rows);

    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(
        (stats.rows, stats.delivered, stats.dead_letters),
        (120, 120, 0)
    );
    assert_eq!(receiver.messages().len(), 120);
    assert!(rows.iter().any(|o| o.status == "confirmed"));
    assert_eq!(stats.actions, 0);
    assert!(receiver.hooks().is_empty(), "no webhook ran");
    assert!(setup.ndjson("emails.ndjson").is_empty() && setup.ndjson("crm.ndjson").is_empty());
}
