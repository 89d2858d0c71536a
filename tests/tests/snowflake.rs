//! The Snowflake source against a real Snowflake protocol peer: fakesnow
//! behind the project's adapter, on loopback, read through the same
//! `snowflake-connector-rs` code path a customer's account is.

use freshet_tests::snowflake::{emulator, shared, SnowflakeSetup, ORDERS_TABLE};
use freshet_tests::*;
use std::time::Duration;

fn orders(ids: std::ops::Range<i64>, status: &str, base_ms: i64) -> Vec<Order> {
    ids.map(|id| Order::new(id, status, base_ms + id * 1000))
        .collect()
}

/// The `timestamp` of each received event, by order id.
fn timestamps(receiver: &Receiver) -> Vec<(i64, String)> {
    receiver
        .messages()
        .iter()
        .map(|m| {
            let e = &m.envelope["body"]["xdmEntity"];
            (
                e["_acme"]["orderId"].as_str().unwrap().parse().unwrap(),
                e["timestamp"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn rfc3339(ms: i64) -> String {
    freshet::source::Timestamp(ms * 1_000_000).rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_reads_every_row_in_order_across_chunks() {
    let receiver = Receiver::start(true).await.unwrap();
    let sf = SnowflakeSetup::orders(plugins::ORDERS_PLUGIN).await;
    let base = now_ms() - 3_600_000;
    sf.insert(&orders(1..251, "confirmed", base)).await;
    let chunks_before = shared().stats().await.unwrap().chunks_served;

    let stats = sf.setup.run_once(&receiver).await.unwrap();

    assert_eq!(stats.rows, 250, "{stats:?}");
    // Rows arrive in (timestamp, key) order, each at its own instant.
    let got = timestamps(&receiver);
    let want: Vec<(i64, String)> = (1..251).map(|id| (id, rfc3339(base + id * 1000))).collect();
    assert_eq!(got, want);
    // Pages of 100, 100 and 50 rows in parts of 30: the first part inline,
    // the others downloaded as chunks (3 + 3 + 1).
    let chunks = shared().stats().await.unwrap().chunks_served - chunks_before;
    assert_eq!(chunks, 7);
    assert_eq!(
        receiver.hooks().len(),
        250,
        "every confirmed order's webhook"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_false_reads_only_new_rows_and_initial_starts_there() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut sf = SnowflakeSetup::orders(plugins::ORDERS_PLUGIN).await;
    sf.setup.pipeline.backfill = false;
    sf.insert(&orders(1..11, "pending", now_ms() - 3_600_000))
        .await;
    let stats = sf.setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.rows, 0, "old rows skipped");
    // `-1` was fixed at the first start, on Snowflake's clock.
    sf.insert(&[Order::new(100, "pending", now_ms() + 10)])
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sf.setup.run_once(&receiver).await.unwrap().rows, 1);
    assert_eq!(received_order_ids(&receiver), vec![100]);

    let receiver = Receiver::start(true).await.unwrap();
    let mut sf = SnowflakeSetup::orders(plugins::ORDERS_PLUGIN).await;
    let base = 1_700_000_000_000;
    sf.insert(&orders(1..11, "pending", base)).await;
    // Row 5's instant exactly: inclusive (unlike the vendor's #541).
    sf.setup.pipeline.initial = Some(format!("{:?}", rfc3339(base + 5_000)));
    assert_eq!(sf.setup.run_once(&receiver).await.unwrap().rows, 6);
    assert_eq!(received_order_ids(&receiver), (5..11).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_across_page_breaks_are_read_exactly_once() {
    let receiver = Receiver::start(true).await.unwrap();
    let sf = SnowflakeSetup::orders(plugins::ORDERS_PLUGIN).await;
    let ts = now_ms() - 60_000;
    sf.insert(
        &(1..251)
            .map(|id| Order::new(id, "pending", ts))
            .collect::<Vec<_>>(),
    )
    .await;
    let stats = sf.setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.pages, 3, "pages of 100 inside one timestamp");
    assert_eq!(received_order_ids(&receiver), (1..251).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_late_inside_the_delay_window_is_delivered() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut sf = SnowflakeSetup::orders(plugins::ORDERS_PLUGIN).await;
    sf.setup.pipeline.delay_ms = 1_500;
    sf.setup.pipeline.poll_interval_ms = 100;
    let running = Running::start(sf.setup.config(&receiver));
    // Row 2 is stamped first but commits a second later, after row 1.
    let t0 = now_ms();
    sf.insert(&[Order::new(1, "pending", t0 + 200)]).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    sf.insert(&[Order::new(2, "pending", t0)]).await;
    wait_for_messages(&receiver, 2, Duration::from_secs(10)).await;
    running.stop().await;
    assert_eq!(
        received_order_ids(&receiver),
        vec![2, 1],
        "in timestamp order, none lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ntz_wall_times_are_read_in_the_configured_zone() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut sf = SnowflakeSetup::new(
        shared(),
        plugins::ORDERS_PLUGIN,
        ORDERS_TABLE,
        "America/New_York",
    )
    .await;
    sf.setup.pipeline.initial = Some("\"1900-01-01T00:00:00Z\"".into());
    // Winter (UTC-5) and summer (UTC-4) rows, and one before 1970.
    let instants = [-86_400_000_i64, 1_705_320_000_000, 1_721_044_800_123];
    sf.insert(
        &instants
            .iter()
            .enumerate()
            .map(|(i, ms)| Order::new(i as i64 + 1, "pending", *ms))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(sf.wall(1_705_320_000_000), "2024-01-15 07:00:00.000");
    assert_eq!(sf.wall(1_721_044_800_123), "2024-07-15 08:00:00.123");
    sf.setup.run_once(&receiver).await.unwrap();
    let want: Vec<(i64, String)> = instants
        .iter()
        .enumerate()
        .map(|(i, ms)| (i as i64 + 1, rfc3339(*ms)))
        .collect();
    assert_eq!(timestamps(&receiver), want);
}

/// Runs a pipeline over a table made by `table_sql` and returns its error.
async fn start_up_error(table_sql: Option<&str>) -> String {
    let receiver = Receiver::start(true).await.unwrap();
    let sf = SnowflakeSetup::new(
        shared(),
        plugins::ORDERS_PLUGIN,
        table_sql.unwrap_or("SELECT 1"),
        "UTC",
    )
    .await;
    if table_sql.is_some() {
        sf.sql
            .exec("INSERT INTO ORDERS (ID, UPDATED_AT) VALUES (1, '2024-01-01 00:00:00')")
            .await
            .unwrap();
    }
    let error = sf.setup.run_once(&receiver).await.unwrap_err();
    assert_eq!(receiver.message_count(), 0, "nothing delivered");
    format!("{error:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_cannot_be_polled_safely_is_refused_with_its_key() {
    let nullable = start_up_error(Some(
        "CREATE TABLE ORDERS (ID NUMBER(38,0) NOT NULL, UPDATED_AT TIMESTAMP_NTZ)",
    ))
    .await;
    assert!(
        nullable
            .contains("pipelines.orders.source.timestamp.column: column `UPDATED_AT` is nullable"),
        "{nullable}"
    );
    let with_zone = start_up_error(Some(
        "CREATE TABLE ORDERS (ID NUMBER(38,0) NOT NULL, UPDATED_AT TIMESTAMP_TZ NOT NULL)",
    ))
    .await;
    assert!(
        with_zone.contains(
            "pipelines.orders.source.timestamp.column: column `UPDATED_AT` is TIMESTAMP_TZ"
        ) && with_zone.contains("use TIMESTAMP_NTZ or TIMESTAMP_LTZ"),
        "{with_zone}"
    );
    let missing = start_up_error(None).await;
    assert!(
        missing.contains("pipelines.orders.source.table: ") && missing.contains("ORDERS"),
        "{missing}"
    );
}

/// Page queries (not metadata probes) the emulator received for a database.
async fn page_queries_seen(database: &str) -> usize {
    shared()
        .stats()
        .await
        .unwrap()
        .queries
        .iter()
        .filter(|q| {
            q.to_ascii_uppercase()
                .contains(&format!("FROM {database}.PUBLIC.ORDERS WHERE"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_table_is_only_probed_and_a_new_row_is_read_at_the_next_poll() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut sf = SnowflakeSetup::orders(plugins::ORDERS_PLUGIN).await;
    sf.setup.pipeline.poll_interval_ms = 200;
    let database = sf.database.clone();
    let running = Running::start(sf.setup.config(&receiver));
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // The first poll reads (nothing is known yet); the idle ones after it
    // only ask the metadata question.
    assert_eq!(page_queries_seen(&database).await, 1);

    sf.insert(&[Order::new(1, "confirmed", now_ms() - 1)]).await;
    assert!(
        wait_for_messages(&receiver, 1, Duration::from_millis(1_000)).await,
        "picked up by the next poll"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = running.stop().await;
    assert_eq!(page_queries_seen(&database).await, 2, "{stats:?}");
    assert_eq!(stats.page_queries, 2, "{stats:?}");
    assert!(stats.probes >= 10, "about one probe per poll: {stats:?}");
    assert_eq!(stats.rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_killed_mid_run_and_restarted_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut emulator = emulator::Emulator::start(dir.path(), 30).unwrap();
    let receiver = Receiver::start(true).await.unwrap();
    let mut sf = SnowflakeSetup::new(&emulator, plugins::ORDERS_PLUGIN, ORDERS_TABLE, "UTC").await;
    sf.setup.pipeline.page_size = 50;
    sf.setup.pipeline.poll_interval_ms = 100;
    sf.insert(&orders(1..2001, "confirmed", now_ms() - 3_600_000))
        .await;
    let running = Running::start(sf.setup.config(&receiver));
    assert!(wait_for_messages(&receiver, 200, Duration::from_secs(20)).await);
    emulator.kill();
    let at_kill = receiver.message_count();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    emulator.restart().unwrap();
    let drained = wait_for_messages(&receiver, 2000, Duration::from_secs(60)).await;
    let stats = running.stop().await;
    assert!(drained, "only {} of 2000 arrived", receiver.message_count());
    assert!(
        at_kill < 2000,
        "killed mid-run ({at_kill} delivered before)"
    );
    assert_exactly_once(received_order_ids(&receiver), 1..2001);
    assert_eq!(
        receiver.hooks().len(),
        2000,
        "every webhook once: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_replaced_by_a_new_login() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator::Emulator::start(dir.path(), 30).unwrap();
    let receiver = Receiver::start(true).await.unwrap();
    let mut sf = SnowflakeSetup::new(&emulator, plugins::ORDERS_PLUGIN, ORDERS_TABLE, "UTC").await;
    sf.setup.pipeline.poll_interval_ms = 100;
    let base = now_ms() - 60_000;
    sf.insert(&orders(1..11, "pending", base)).await;
    let running = Running::start(sf.setup.config(&receiver));
    assert!(wait_for_messages(&receiver, 10, Duration::from_secs(10)).await);
    let logins = emulator.stats().await.unwrap().logins;

    emulator.expire_sessions().await.unwrap();
    // The seeding session expired too: a new one adds the next rows.
    let sql = freshet::bench::seed::Sql::connect(&emulator.url(), &sf.database)
        .await
        .unwrap();
    sql.exec(&format!(
        "INSERT INTO ORDERS VALUES (11, 'c11@example.com', 'pending', 1.50, 'EUR', '{}')",
        sf.wall(base + 11_000)
    ))
    .await
    .unwrap();
    assert!(
        wait_for_messages(&receiver, 11, Duration::from_secs(10)).await,
        "the pipeline logged in again and read on"
    );
    let stats = running.stop().await;
    assert_exactly_once(received_order_ids(&receiver), 1..12);
    assert!(
        emulator.stats().await.unwrap().logins >= logins + 2,
        "the pipeline's and the seeder's new logins: {stats:?}"
    );
}

/// Writes an RSA key as PKCS#8 PEM with openssl, encrypted if `passphrase`.
fn private_key(dir: &std::path::Path, passphrase: Option<&str>) -> std::path::PathBuf {
    let plain = dir.join("key.p8");
    let status = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&plain)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let Some(passphrase) = passphrase else {
        return plain;
    };
    let encrypted = dir.join("key.enc.p8");
    let status = std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in"])
        .arg(&plain)
        .arg("-out")
        .arg(&encrypted)
        .arg("-passout")
        .arg(format!("pass:{passphrase}"))
        .status()
        .expect("openssl");
    assert!(status.success());
    encrypted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pair_auth_signs_in_from_a_file_and_names_a_wrong_passphrase() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut sf = SnowflakeSetup::orders(plugins::ORDERS_PLUGIN).await;
    sf.insert(&orders(1..4, "pending", now_ms() - 60_000)).await;
    let key = private_key(sf.setup.dir.path(), Some("open sesame"));
    std::env::set_var("FRESHET_TEST_KEY_PASSPHRASE", "open sesame");
    std::env::set_var("FRESHET_TEST_WRONG_PASSPHRASE", "open barley");
    let OrdersSource::Snowflake(source) = &mut sf.setup.pipeline.source else {
        unreachable!()
    };
    source.auth =
        format!("private_key_file = {key:?}, passphrase_env = \"FRESHET_TEST_WRONG_PASSPHRASE\"");
    let error = format!("{:#}", sf.setup.run_once(&receiver).await.unwrap_err());
    assert!(error.contains("pipelines.orders.source.auth: "), "{error}");

    let OrdersSource::Snowflake(source) = &mut sf.setup.pipeline.source else {
        unreachable!()
    };
    source.auth =
        format!("private_key_file = {key:?}, passphrase_env = \"FRESHET_TEST_KEY_PASSPHRASE\"");
    assert_eq!(sf.setup.run_once(&receiver).await.unwrap().rows, 3);
}
