//! Bad configs get messages that name the key. Pure problems (parse and
//! validation) are pinned by golden files: `tests/golden/config/NAME.toml`
//! and the exact message a user sees in `NAME.err`. Run with
//! `FRESHET_BLESS=1` to rewrite the `.err` files after a deliberate change.
//! Problems only I/O can find (a column that is not there, a nullable
//! timestamp) are checked against real tables.

use freshet_tests::*;
use std::path::Path;

#[test]
fn golden_config_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/config");
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        cases += 1;
        let error = match freshet::config::load(&path) {
            Ok(_) => panic!("{} should not load", path.display()),
            Err(e) => format!("{e}\n"),
        };
        let golden = path.with_extension("err");
        if std::env::var_os("FRESHET_BLESS").is_some() {
            std::fs::write(&golden, &error).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_else(|_| {
            panic!("{} is missing; run with FRESHET_BLESS=1", golden.display())
        });
        assert_eq!(error, expected, "{}", path.display());
    }
    assert!(cases >= 5, "golden cases found: {cases}");
}

/// Builds the orders pipeline over a table created by `schema`; returns the
/// error the run stops with.
async fn start_error(schema: &str, timestamp_column: &str) -> String {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    std::fs::remove_file(&setup.db).unwrap();
    rusqlite::Connection::open(&setup.db)
        .unwrap()
        .execute_batch(schema)
        .unwrap();
    let text = setup.config_text(&receiver).replace(
        "timestamp = { column = \"updated_at\"",
        &format!("timestamp = {{ column = \"{timestamp_column}\""),
    );
    let config = freshet::config::parse(&text).unwrap();
    let result = freshet::run(
        &config,
        Default::default(),
        freshet::RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await;
    let error = format!("{:#}", result.expect_err("the pipeline must not start"));
    assert_eq!(receiver.request_count(), 0, "nothing delivered");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timestamp_column_that_does_not_exist_is_named() {
    let error = start_error(freshet::bench::sample::ORDERS_SCHEMA, "modified_at").await;
    assert_eq!(
        error,
        "pipelines.orders.source.timestamp.column: table `orders` has no column `modified_at`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nullable_timestamp_column_is_refused() {
    let schema = "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_email TEXT, status TEXT, amount TEXT, currency TEXT, updated_at INTEGER)";
    let error = start_error(schema, "updated_at").await;
    assert!(
        error.starts_with(
            "pipelines.orders.source.timestamp.column: column `updated_at` is nullable"
        ),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_named() {
    let error = start_error(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY)",
        "updated_at",
    )
    .await;
    assert!(
        error.starts_with("pipelines.orders.source.table: table `orders` does not exist"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_timestamp_column_is_refused() {
    let schema = "CREATE TABLE orders (id INTEGER PRIMARY KEY, updated_at TEXT NOT NULL)";
    let error = start_error(schema, "updated_at").await;
    assert!(
        error.contains("must be an INTEGER of epoch units"),
        "{error}"
    );
}

/// The library entry validates too: a config built in code gets the same
/// key-path errors as `freshet validate`, before anything is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_an_invalid_config_with_every_key_path() {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    let text = setup
        .config_text(&receiver)
        .replace("page_size = 100", "page_size = 0")
        .replace("timeout_ms = 5000\nheaders", "timeout_ms = 60000\nheaders");
    let config = freshet::config::parse(&text).unwrap();
    let error = freshet::run(
        &config,
        Default::default(),
        freshet::RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("pipelines.orders.source.page_size: must be between 1 and 100000, not 0"),
        "{error}"
    );
    assert!(
        error.contains(
            "pipelines.orders.targets.hook.timeout_ms: must be between 1000 and 30000, not 60000"
        ),
        "{error}"
    );
    assert!(!setup.path("state.db").exists(), "nothing opened");
}
