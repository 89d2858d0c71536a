//! Shared fixtures of freshet's integration tests: the guest plugins built by
//! `build.rs`, an `orders` table in a temporary SQLite file, configs that
//! point a pipeline at a loopback AEP and webhook receiver, and a way to run
//! them.

use freshet::config::Config;
use freshet::source::Timestamp;
use freshet::state::sqlite::SqliteState;
use freshet::state::DeadLetter;
use freshet::{RunOptions, Stats};
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

pub mod cluster;
pub mod ops;
pub mod postgres;
pub mod smtp;
pub mod snowflake;

pub use freshet::bench::{
    record_target, webhook_target, OrdersPipeline, OrdersSource, PostgresOrders, SnowflakeOrders,
};
pub use freshet_peers::receiver::{Receiver, Scripted};

/// The `freshet` binary cargo built beside the running test. `cargo test
/// --workspace` builds it because the host package has integration tests of
/// its own (`host/tests/usage.rs`). Logs at `warn` unless told otherwise.
pub fn freshet() -> std::process::Command {
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/<profile>/deps/TEST-HASH -> <target>/<profile>/freshet
    let bin: PathBuf = exe
        .parent()
        .and_then(Path::parent)
        .expect("target folder")
        .join("freshet");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        bin.display()
    );
    let mut command = std::process::Command::new(bin);
    command.env("FRESHET_LOG", "warn");
    command
}

/// Runs `command` to its end; fails the test, showing its stderr, unless it
/// exited 0.
pub fn succeed(command: &mut std::process::Command) -> std::process::Output {
    let out = command.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `freshet plugin test` of `plugin` over the rows file `rows`, with the
/// setting `tenant=acme` the orders plugins name their field group by.
pub fn plugin_test(plugin: &str, rows: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut command = freshet();
    command
        .args([
            "plugin",
            "test",
            "--setting",
            "tenant=acme",
            "--plugin",
            plugin,
            "--rows",
        ])
        .arg(rows);
    command
}

/// The JSON reports `freshet plugin test` prints, one per row.
pub fn plugin_test_reports(stdout: &[u8]) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_slice(stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("plugin test prints JSON reports")
}

/// Paths of the guest plugins and the shared component cache.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// One order row.
#[derive(Debug, Clone)]
pub struct Order {
    /// Primary key.
    pub id: i64,
    /// Customer e-mail.
    pub email: String,
    /// `confirmed`, `cancelled`, ... (the hostile plugin reads its behaviour here).
    pub status: String,
    /// Decimal text.
    pub amount: String,
    /// Currency code.
    pub currency: String,
    /// Epoch milliseconds.
    pub updated_at: i64,
}

impl Order {
    /// An order with the given id, status and timestamp.
    pub fn new(id: i64, status: &str, updated_at: i64) -> Self {
        Self {
            id,
            email: format!("c{id}@example.com"),
            status: status.to_owned(),
            amount: format!("{}.50", id % 1000),
            currency: "EUR".into(),
            updated_at,
        }
    }
}

/// Epoch milliseconds, now.
pub fn now_ms() -> i64 {
    Timestamp::now().0 / 1_000_000
}

/// A temporary folder with an `orders` table and a pipeline config.
pub struct Setup {
    /// The folder (removed on drop).
    pub dir: tempfile::TempDir,
    /// The SQLite file holding `orders`.
    pub db: PathBuf,
    /// The pipeline's settings; `aep_url` and `targets` are filled in by
    /// [`Setup::config_text`] for the receiver it is given.
    pub pipeline: OrdersPipeline,
    /// Target tables by name, instead of the recording ones (see
    /// [`email_target`], [`crm_target`]).
    pub targets: std::collections::BTreeMap<&'static str, String>,
}

impl Setup {
    /// A new folder with an empty `orders` table, running `plugin`, with
    /// small pages (100 rows) and batches (50) so tests cross their edges.
    pub fn new(plugin: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("orders.db");
        let conn = Connection::open(&db).expect("open orders db");
        conn.execute_batch(freshet::bench::sample::ORDERS_SCHEMA)
            .expect("create orders");
        let mut pipeline = OrdersPipeline::new(
            dir.path(),
            plugin.into(),
            OrdersSource::Sqlite(db.clone()),
            String::new(),
        );
        pipeline.cache_dir = plugins::COMPONENT_CACHE.into();
        pipeline.page_size = 100;
        pipeline.batch_size = 50;
        Self {
            dir,
            db,
            pipeline,
            targets: Default::default(),
        }
    }

    /// Inserts orders in one transaction.
    pub fn insert(&self, orders: &[Order]) {
        let mut conn = Connection::open(&self.db).expect("open orders db");
        let tx = conn.transaction().expect("begin");
        for o in orders {
            tx.execute(
                "INSERT INTO orders (id, customer_email, status, amount, currency, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![o.id, o.email, o.status, o.amount, o.currency, o.updated_at],
            )
            .expect("insert order");
        }
        tx.commit().expect("commit");
    }

    /// A path inside the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The config, delivering to `receiver` (webhooks to its `/hooks/NAME`;
    /// e-mail and CRM actions recorded to files). Sets the environment
    /// variable its webhook header names, as an operator would.
    pub fn config_text(&self, receiver: &Receiver) -> String {
        let pipeline = self.configured(receiver);
        pipeline.render()
    }

    /// Only the `[pipelines.NAME]` tables of [`Setup::config_text`], to put
    /// several pipelines (of several setups) in one file.
    pub fn pipeline_text(&self, receiver: &Receiver) -> String {
        self.configured(receiver).render_pipeline()
    }

    fn configured(&self, receiver: &Receiver) -> OrdersPipeline {
        std::env::set_var("FRESHET_TEST_HOOK_KEY", "s3cret");
        let mut pipeline = self.pipeline.clone();
        pipeline.aep_url = receiver.url();
        let hooks = receiver.url() + "/hooks";
        pipeline.targets = [
            webhook_target(
                "order-confirmed",
                &format!("{hooks}/order-confirmed"),
                r#"x-api-key = "${FRESHET_TEST_HOOK_KEY}""#,
            ),
            webhook_target("hook", &format!("{hooks}/hook"), ""),
            self.targets
                .get("order-confirmation")
                .cloned()
                .unwrap_or_else(|| {
                    record_target("order-confirmation", &self.path("emails.ndjson"))
                }),
            self.targets
                .get("crm")
                .cloned()
                .unwrap_or_else(|| record_target("crm", &self.path("crm.ndjson"))),
        ]
        .concat();
        pipeline
    }

    /// The parsed and validated config.
    pub fn config(&self, receiver: &Receiver) -> Config {
        let config =
            freshet::config::parse(&self.config_text(receiver)).expect("test config parses");
        let errors = config.validate();
        assert!(errors.is_empty(), "test config is invalid: {errors:?}");
        config
    }

    /// Runs the pipeline until it drains (`--once`).
    pub async fn run_once(&self, receiver: &Receiver) -> anyhow::Result<Stats> {
        let results = freshet::run(
            &self.config(receiver),
            CancellationToken::new(),
            RunOptions {
                once: true,
                ..Default::default()
            },
        )
        .await?;
        Ok(results
            .into_iter()
            .next()
            .map(|(_, s)| s)
            .unwrap_or_default())
    }

    /// Keeps the pipeline's state in a database of its own on the test
    /// binary's PostgreSQL server instead of the state file, with leases of
    /// `lease_ttl_ms`: the same suite, on the shared store.
    pub fn with_postgres_state(mut self, lease_ttl_ms: u64) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let url = postgres::Postgres::get().database("state");
        let url_env = format!(
            "FRESHET_TEST_PG_STATE_{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        std::env::set_var(&url_env, url);
        self.pipeline.shared_state = Some(freshet::bench::SharedState {
            url_env,
            lease_ttl_ms,
        });
        self
    }

    /// The state store: the state file, or the PostgreSQL database of
    /// [`Setup::with_postgres_state`].
    pub fn state(&self) -> Box<dyn freshet::state::StateStore> {
        match &self.pipeline.shared_state {
            None => Box::new(SqliteState::open(&self.path("state.db")).expect("open state")),
            Some(shared) => {
                let url = std::env::var(&shared.url_env).expect("the state URL's variable");
                let ttl = std::time::Duration::from_millis(shared.lease_ttl_ms);
                Box::new(
                    freshet::state::postgres::PostgresState::connect(&url, ttl)
                        .expect("connect to the state database"),
                )
            }
        }
    }

    /// Dead letters so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.state().dead_letters(None).expect("read dead letters")
    }

    /// Lines of an NDJSON file in the folder (empty if it does not exist).
    pub fn ndjson(&self, name: &str) -> Vec<serde_json::Value> {
        read_ndjson(&self.path(name))
    }
}

/// An `order-confirmation` e-mail target sending through the SMTP server on
/// `port` (plain SMTP on loopback), with the `order-confirmation` template;
/// `extra` adds lines to the target's table.
pub fn email_target(port: u16, extra: &str) -> String {
    format!(
        r#"[pipelines.orders.targets.order-confirmation]
kind = "email"
host = "127.0.0.1"
port = {port}
tls = "none"
from = "Shop <orders@example.com>"
timeout_ms = 5000
{extra}

[pipelines.orders.targets.order-confirmation.templates.order-confirmation]
subject = "Order {{{{ orderId }}}} confirmed"
text = "Thank you! Order {{{{ orderId }}}}: {{{{ amount }}}} {{{{ currency }}}}."
html = "<p>Order <b>{{{{ orderId }}}}</b>: {{{{ amount }}}} {{{{ currency }}}} & more</p>"

"#
    )
}

/// A `crm` target of `flavor` at `base_url`; `auth` is its `oauth`/`token_env` lines.
pub fn crm_target(flavor: &str, base_url: &str, id_field: &str, auth: &str) -> String {
    format!(
        "[pipelines.orders.targets.crm]\nkind = \"crm\"\nflavor = {flavor:?}\nbase_url = {base_url:?}\nid_field = {id_field:?}\ntimeout_ms = 5000\n{auth}\n\n"
    )
}

/// Lines of an NDJSON file.
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect()
}

/// The `_id`s the receiver accepted, in arrival order.
pub fn received_ids(receiver: &Receiver) -> Vec<String> {
    receiver
        .messages()
        .iter()
        .map(|m| {
            m.envelope["body"]["xdmEntity"]["_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// The order ids (`_acme.orderId`) the receiver accepted, in arrival order.
pub fn received_order_ids(receiver: &Receiver) -> Vec<i64> {
    receiver
        .messages()
        .iter()
        .filter_map(|m| {
            m.envelope["body"]["xdmEntity"]["_acme"]["orderId"]
                .as_str()?
                .parse()
                .ok()
        })
        .collect()
}

/// Asserts each id in `expected` was received exactly once and nothing else.
pub fn assert_exactly_once(mut got: Vec<i64>, expected: impl IntoIterator<Item = i64>) {
    let mut want: Vec<i64> = expected.into_iter().collect();
    got.sort_unstable();
    want.sort_unstable();
    let dupes: Vec<i64> = got
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(dupes.is_empty(), "delivered more than once: {dupes:?}");
    let missing: Vec<i64> = want
        .iter()
        .filter(|id| got.binary_search(id).is_err())
        .copied()
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(got, want);
}

/// A config's pipelines running in the background, polling until stopped.
pub struct Running {
    handle: tokio::task::JoinHandle<anyhow::Result<Vec<(String, Stats)>>>,
    shutdown: CancellationToken,
}

impl Running {
    /// Starts every pipeline of `config`.
    pub fn start(config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { freshet::run(&config, shutdown, RunOptions::default()).await }
        });
        Self { handle, shutdown }
    }

    /// Shuts down (pages in flight finish and commit) and returns the
    /// first pipeline's counters.
    pub async fn stop(self) -> Stats {
        self.shutdown.cancel();
        let results = self
            .handle
            .await
            .expect("the run task")
            .expect("the run ends cleanly");
        results
            .into_iter()
            .next()
            .map(|(_, s)| s)
            .unwrap_or_default()
    }
}

/// Waits until the receiver accepted `messages`, for at most `limit`;
/// whether it did.
pub async fn wait_for_messages(
    receiver: &Receiver,
    messages: u64,
    limit: std::time::Duration,
) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while receiver.message_count() < messages {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    true
}

/// A component with a custom section appended: the same behaviour, a
/// different content hash (a new build of the same code).
pub fn new_build_of(path: &str, tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let name = b"freshet-build";
    let payload = tag.as_bytes();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128, "one-byte LEB128 sizes");
    bytes.extend([0u8, size as u8, name.len() as u8]);
    bytes.extend(name);
    bytes.extend(payload);
    bytes
}

/// Each order's events' plugin versions, in arrival order.
pub fn versions_by_order(receiver: &Receiver) -> std::collections::BTreeMap<i64, Vec<String>> {
    let mut out: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
    for m in receiver.messages() {
        let id = m.envelope["body"]["xdmEntity"]["_acme"]["orderId"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let version = m.envelope["header"]["source"]["pluginVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        out.entry(id).or_default().push(version);
    }
    out
}
