//! The PostgreSQL source against a real server (Debian's package, started
//! by the tests on loopback): the same `(ts, key)` cursor as every source,
//! `timestamptz` and `timestamp` columns, the delay window on the server's
//! clock, start-up checks that name the key, and a server restart.

use freshet_tests::postgres::{connect, insert_orders, Postgres, PostgresSetup};
use freshet_tests::*;
use std::time::Duration;

/// The restart test stops the server every other test of this binary uses.
static SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Each received event's XDM body, by arrival.
fn bodies(receiver: &Receiver) -> Vec<serde_json::Value> {
    receiver
        .messages()
        .iter()
        .map(|m| m.envelope["body"]["xdmEntity"].clone())
        .collect()
}

/// 250 orders, seven to a timestamp, so runs of equal timestamps cross the
/// page breaks (pages of 100).
fn tied_orders(base_ms: i64) -> Vec<Order> {
    (1..=250)
        .map(|id| {
            Order::new(
                id,
                if id % 3 == 0 { "pending" } else { "confirmed" },
                base_ms + (id / 7) * 1000,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rows_in_postgres_and_sqlite_give_the_same_events_in_the_same_order() {
    let _server = SERVER.read().await;
    let base = now_ms() - 3_600_000;
    let orders = tied_orders(base);

    let from_sqlite = Receiver::start(true).await.unwrap();
    let sqlite = Setup::new(plugins::ORDERS_PLUGIN);
    sqlite.insert(&orders);
    sqlite.run_once(&from_sqlite).await.unwrap();

    let from_postgres = Receiver::start(true).await.unwrap();
    let pg = PostgresSetup::orders(plugins::ORDERS_PLUGIN).await;
    pg.insert(&orders).await;
    let stats = pg.setup.run_once(&from_postgres).await.unwrap();

    assert_eq!(stats.rows, 250, "{stats:?}");
    let (got, want) = (bodies(&from_postgres), bodies(&from_sqlite));
    assert_eq!(got.len(), 250);
    // Same `_id`s (the row identity is key and instant), same fields, same
    // (ts, key) order across the ties at every page break.
    assert_eq!(got, want);
    assert_exactly_once(received_order_ids(&from_postgres), 1..=250);
    assert_eq!(from_postgres.hooks().len(), from_sqlite.hooks().len());
    // A second run finds nothing new: the cursor was committed.
    let again = pg.setup.run_once(&from_postgres).await.unwrap();
    assert_eq!(again.rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_keys_break_ties_in_byte_order_whatever_the_collation() {
    let _server = SERVER.read().await;
    let receiver = Receiver::start(true).await.unwrap();
    // Linguistic collations (ICU's root) put "a" before "B"; bytes put "B"
    // first.
    let table = freshet_tests::postgres::ORDERS_TABLE.replace(
        "id             bigint PRIMARY KEY",
        "id text COLLATE \"und-x-icu\" PRIMARY KEY",
    );
    assert!(collation_exists("und-x-icu").await, "the server has ICU");
    let mut pg = PostgresSetup::new(plugins::ORDERS_PLUGIN, &table, "UTC").await;
    pg.setup.pipeline.page_size = 2;
    let keys = [
        "b", "B", "a", "A", "é", "e", "aa", "a b", "Z", "10", "9", "ab",
    ];
    let ts = now_ms() - 60_000;
    for key in keys {
        pg.client
            .execute(
                "INSERT INTO orders VALUES ($1, 'k@example.com', 'pending', 1.50, 'EUR', to_timestamp($2::float8 / 1000))",
                &[&key, &(ts as f64)],
            )
            .await
            .unwrap();
    }
    let stats = pg.setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.rows, keys.len() as u64);
    let got: Vec<String> = receiver
        .messages()
        .iter()
        .map(|m| {
            m.envelope["body"]["xdmEntity"]["_acme"]["orderId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut want: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    want.sort(); // Rust orders strings by their UTF-8 bytes.
    assert_eq!(
        got, want,
        "every key once, in byte order, across pages of two"
    );
}

async fn collation_exists(name: &str) -> bool {
    let client = connect(&Postgres::get().url("postgres")).await;
    client
        .query_one(
            "SELECT count(*) FROM pg_collation WHERE collname = $1",
            &[&name],
        )
        .await
        .map(|r| r.get::<_, i64>(0) > 0)
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_late_inside_the_delay_window_is_delivered() {
    let _server = SERVER.read().await;
    let receiver = Receiver::start(true).await.unwrap();
    let mut pg = PostgresSetup::orders(plugins::ORDERS_PLUGIN).await;
    pg.setup.pipeline.delay_ms = 1_500;
    pg.setup.pipeline.poll_interval_ms = 100;
    pg.setup.pipeline.backfill = false;
    let running = Running::start(pg.setup.config(&receiver));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Row 2 takes its timestamp first (clock_timestamp() inside its open
    // transaction) but commits a second later, after row 1.
    let mut late = connect(&pg.url).await;
    let tx = late.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO orders VALUES (2, 'c2@example.com', 'pending', 2.50, 'EUR', clock_timestamp())",
        &[],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    pg.client
        .execute(
            "INSERT INTO orders VALUES (1, 'c1@example.com', 'pending', 1.50, 'EUR', clock_timestamp())",
            &[],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    tx.commit().await.unwrap();
    assert!(wait_for_messages(&receiver, 2, Duration::from_secs(10)).await);
    running.stop().await;
    assert_eq!(
        received_order_ids(&receiver),
        vec![2, 1],
        "in timestamp order, none lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_times_without_a_zone_are_read_in_the_configured_zone_across_a_clock_change() {
    let _server = SERVER.read().await;
    let receiver = Receiver::start(true).await.unwrap();
    let table = freshet_tests::postgres::ORDERS_TABLE.replace("timestamptz", "timestamp");
    let pg = PostgresSetup::new(plugins::ORDERS_PLUGIN, &table, "Europe/Paris").await;
    // Paris went from +02:00 to +01:00 at 03:00 local on 2024-10-27: the
    // wall times 02:00-03:00 happen twice; each is read as the first.
    let rows = [
        (1, "2024-10-27 01:30:00", "2024-10-26T23:30:00Z"),
        (2, "2024-10-27 02:30:00", "2024-10-27T00:30:00Z"),
        (3, "2024-10-27 03:30:00", "2024-10-27T02:30:00Z"),
        (
            4,
            "2024-07-01 12:00:00.123456",
            "2024-07-01T10:00:00.123456Z",
        ),
    ];
    for (id, wall, _) in rows {
        pg.client
            .execute(
                &format!("INSERT INTO orders VALUES ({id}, 'w@example.com', 'pending', 1.00, 'EUR', '{wall}')"),
                &[],
            )
            .await
            .unwrap();
    }
    pg.setup.run_once(&receiver).await.unwrap();
    let got: Vec<(String, String)> = bodies(&receiver)
        .iter()
        .map(|b| {
            (
                b["_acme"]["orderId"].as_str().unwrap().to_owned(),
                b["timestamp"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [4, 1, 2, 3]
        .iter()
        .map(|id| {
            let (_, _, instant) = rows[*id as usize - 1];
            (id.to_string(), instant.to_owned())
        })
        .collect();
    assert_eq!(got, want);
    // The upper bound is on the server's clock, converted to Paris wall
    // time: a row stamped with Paris "now" is read on the next run.
    pg.client
        .execute(
            "INSERT INTO orders VALUES (5, 'w@example.com', 'pending', 1.00, 'EUR', (now() AT TIME ZONE 'Europe/Paris') - interval '1 second')",
            &[],
        )
        .await
        .unwrap();
    let again = pg.setup.run_once(&receiver).await.unwrap();
    assert_eq!(again.rows, 1, "{again:?}");
}

/// A table, a change to the setup, and the error it must give.
type Refusal = (&'static str, fn(&mut PostgresSetup), &'static str);

/// Runs a pipeline over a table made by `table_sql` and returns its error.
async fn start_up_error(table_sql: &str, edit: impl FnOnce(&mut PostgresSetup)) -> String {
    let receiver = Receiver::start(true).await.unwrap();
    let mut pg = PostgresSetup::new(plugins::ORDERS_PLUGIN, table_sql, "UTC").await;
    edit(&mut pg);
    let error = pg.setup.run_once(&receiver).await.unwrap_err();
    assert_eq!(receiver.message_count(), 0, "nothing delivered");
    format!("{error:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_cannot_be_polled_safely_is_refused_with_its_key() {
    let _server = SERVER.read().await;
    let key = "pipelines.orders.source";
    let cases: [Refusal; 7] = [
        (
            "CREATE TABLE orders (id bigint NOT NULL, updated_at timestamptz)",
            |_| {},
            "source.timestamp.column: column `updated_at` is nullable",
        ),
        (
            "CREATE TABLE orders (id bigint NOT NULL, updated_at bigint NOT NULL)",
            |_| {},
            "source.timestamp.column: column `updated_at` is bigint: it must be a timestamptz or a timestamp",
        ),
        (
            "CREATE TABLE orders (id boolean NOT NULL, updated_at timestamptz NOT NULL)",
            |_| {},
            "source.key_column: column `id` is boolean: the key must be an integer",
        ),
        (
            "CREATE TABLE orders (id bigint, updated_at timestamptz NOT NULL)",
            |_| {},
            "source.key_column: column `id` may be NULL",
        ),
        (
            "CREATE TABLE orders (ident bigint NOT NULL, updated_at timestamptz NOT NULL)",
            |_| {},
            "source.key_column: table public.orders has no column `id`",
        ),
        (
            "SELECT 1",
            |_| {},
            "source.table: no table or view `public.orders` the user can see",
        ),
        (
            freshet_tests::postgres::ORDERS_TABLE,
            |pg| {
                let OrdersSource::Postgres(p) = &mut pg.setup.pipeline.source else { unreachable!() };
                let url = Postgres::get().url("no_such_database");
                std::env::set_var(&p.url_env, url);
            },
            "source.url_env: cannot connect: 3D000: database \"no_such_database\" does not exist",
        ),
    ];
    for (table, edit, want) in cases {
        let error = start_up_error(table, edit).await;
        assert!(
            error.contains(&format!("{key}.{}", want.trim_start_matches("source."))),
            "{table}: {error}"
        );
    }
    let unset = start_up_error(freshet_tests::postgres::ORDERS_TABLE, |pg| {
        let OrdersSource::Postgres(p) = &mut pg.setup.pipeline.source else {
            unreachable!()
        };
        std::env::remove_var(&p.url_env);
    })
    .await;
    assert!(
        unset.contains(&format!(
            "{key}.url_env: environment variable `FRESHET_TEST_PG_SOURCE_"
        )),
        "{unset}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_restarting_mid_run_loses_and_repeats_nothing() {
    let _server = SERVER.write().await;
    let receiver = Receiver::start(true).await.unwrap();
    let mut pg = PostgresSetup::orders(plugins::ORDERS_PLUGIN).await;
    pg.setup.pipeline.poll_interval_ms = 100;
    let base = now_ms() - 600_000;
    pg.insert(
        &(1..=300)
            .map(|id| Order::new(id, "confirmed", base + id))
            .collect::<Vec<_>>(),
    )
    .await;
    let running = Running::start(pg.setup.config(&receiver));
    assert!(wait_for_messages(&receiver, 300, Duration::from_secs(30)).await);

    let server = Postgres::get();
    server.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.start_again();
    // New rows after the restart, through a new session.
    let client = connect(&pg.url).await;
    insert_orders(
        &client,
        &(301..=400)
            .map(|id| Order::new(id, "confirmed", now_ms() - 1000 + id % 7))
            .collect::<Vec<_>>(),
    )
    .await;
    let delivered = wait_for_messages(&receiver, 400, Duration::from_secs(30)).await;
    running.stop().await;
    assert!(delivered, "{} of 400 delivered", receiver.message_count());
    assert_exactly_once(received_order_ids(&receiver), 1..=400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_against_the_servers_own_ca_as_libpq_names_it() {
    let _server = SERVER.read().await;
    let receiver = Receiver::start(true).await.unwrap();
    let pg = PostgresSetup::orders(plugins::ORDERS_PLUGIN).await;
    pg.insert(
        &(1..=20)
            .map(|id| Order::new(id, "pending", now_ms() - 10_000))
            .collect::<Vec<_>>(),
    )
    .await;
    let server = Postgres::get();
    let database = pg
        .url
        .rsplit_once('/')
        .unwrap()
        .1
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let verified = server.tls_url(
        &database,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            server.ca_file().display()
        ),
    );
    let OrdersSource::Postgres(source) = &pg.setup.pipeline.source else {
        unreachable!()
    };
    // `tls_only` is refused without TLS: rows read prove TLS was used.
    let plain = server.tls_url(&database, "sslmode=disable");
    let refused = freshet::state::postgres::PostgresState::connect(&plain, Duration::from_secs(10))
        .err()
        .expect("refused without TLS");
    assert!(
        refused.to_string().contains("pg_hba.conf rejects"),
        "{refused}"
    );
    std::env::set_var(&source.url_env, &verified);
    let stats = pg.setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.rows, 20);
    let store =
        freshet::state::postgres::PostgresState::connect(&verified, Duration::from_secs(10));
    assert!(store.is_ok(), "the state store over verified TLS");

    // `require` without the CA: the web's roots do not vouch for the test
    // CA, and freshet verifies under `require` too (stricter than libpq).
    let unverified = server.tls_url(&database, "sslmode=require");
    std::env::set_var(&source.url_env, &unverified);
    let error = format!("{:#}", pg.setup.run_once(&receiver).await.unwrap_err());
    assert!(
        error.contains("invalid peer certificate") && error.contains("add sslrootcert="),
        "{error}"
    );
    let error =
        freshet::state::postgres::PostgresState::connect(&unverified, Duration::from_secs(10))
            .err()
            .expect("refused");
    assert!(error.to_string().contains("add sslrootcert="), "{error}");
}
