//! The example plugin's mapping compiled natively: the very source file the
//! Rust plugin builds for wasm, included here so the benchmark compares the
//! sandbox with plain Rust doing identical work; and a plain native
//! pipeline around it, the baseline freshet's host is measured against.

#[allow(missing_docs, dead_code)]
#[path = "../../../plugins/rust/src/mapping.rs"]
mod mapping;

use crate::config::Config;
use crate::deliver::{Delivery, Message};
use crate::plugin::contract::{Event, Row, Value};
use crate::source::{Cursor, Timestamp};
use crate::state::{Commit, StateStore as _};
use anyhow::{ensure, Context as _};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Column positions of the orders table.
pub struct OrderColumns {
    id: usize,
    email: usize,
    status: usize,
    amount: usize,
    currency: usize,
    updated_at: Option<usize>,
}

impl OrderColumns {
    /// Finds the columns by name.
    pub fn resolve(columns: &[String]) -> Option<Self> {
        let find = |n: &str| columns.iter().position(|c| c == n);
        Some(Self {
            id: find("id")?,
            email: find("customer_email")?,
            status: find("status")?,
            amount: find("amount")?,
            currency: find("currency")?,
            updated_at: find("updated_at"),
        })
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Text(s) | Value::Decimal(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        _ => String::new(),
    }
}

fn order(row: &Row, cols: &OrderColumns) -> mapping::Order {
    mapping::Order {
        id: text(&row.cells[cols.id]),
        email: text(&row.cells[cols.email]),
        status: text(&row.cells[cols.status]),
        amount: text(&row.cells[cols.amount]),
        currency: text(&row.cells[cols.currency]),
    }
}

/// Maps and decides one row natively as the plugin's `process` does (its
/// actions from the row's fields, contract 0.2); returns (events, actions)
/// produced.
pub fn map_and_decide(row: &Row, cols: &OrderColumns, tenant: &str) -> (usize, usize) {
    let order = order(row, cols);
    let id = mapping::event_id(&row.identity, 0);
    match mapping::event_body(&order, tenant) {
        Ok(body) => {
            std::hint::black_box(body);
            let decided = mapping::decisions(&id, &order.fields());
            (1, decided.map_or(0, |d| d.len()))
        }
        Err(_) => (0, 0),
    }
}

/// The row's event, as the Rust plugin maps it (`None` if it rejects it).
fn event(row: &Row, cols: &OrderColumns, tenant: &str) -> Option<Event> {
    let timestamp = match cols.updated_at.map(|i| &row.cells[i]) {
        Some(Value::Timestamp(t)) => *t,
        _ => return None,
    };
    let body = mapping::event_body(&order(row, cols), tenant).ok()?;
    Some(Event {
        id: mapping::event_id(&row.identity, 0),
        timestamp,
        body,
    })
}

/// A plain native pipeline over the `orders` pipeline of `config`: its
/// source and page query, the same mapping compiled natively, its envelope
/// builder and AEP sink (the same requests and HTTP client), and the
/// cursor committed to its state store once each page is acknowledged —
/// no sandbox, no actions, no ledger, one page at a time. Returns the rows
/// delivered and how long it took.
pub async fn pipeline(config: &Config) -> anyhow::Result<(usize, Duration)> {
    let (name, settings) = ("orders", &config.pipelines["orders"]);
    let secrets = crate::secrets::Secrets::unrestricted();
    let prefix = "pipelines.orders";
    let source = crate::pipeline::open_source(&settings.source, prefix, &secrets).await?;
    let shutdown = CancellationToken::new();
    let (sink, envelopes) =
        crate::pipeline::build_sink(&settings.deliver, prefix, &secrets, &shutdown)?;
    let state = std::sync::Arc::new(crate::state::sqlite::SqliteState::open(&config.state.path)?);
    let cols = OrderColumns::resolve(source.columns()).context("the table lacks a column")?;
    let tenant = settings
        .plugin_settings
        .get("tenant")
        .context("the pipeline's plugin_settings name no tenant")?;
    let page_size = settings.source.polling().page_size;

    let start = Instant::now();
    let upper = source.now().await?;
    let mut cursor = Cursor::before(Timestamp::EPOCH);
    let mut delivered = 0;
    loop {
        let page = source.page(&cursor, upper, page_size).await?;
        let Some(last) = page.rows.last().map(|r| r.cursor.clone()) else {
            break;
        };
        let messages: Vec<Message> = page
            .rows
            .iter()
            .filter_map(|r| event(&r.row, &cols, tenant))
            .map(|e| Message {
                json: envelopes.render(&e, "native"),
            })
            .collect();
        let deliveries = sink.deliver(&messages).await?;
        ensure!(
            deliveries.iter().all(|d| *d == Delivery::Delivered),
            "the receiver refused an event of the native pipeline"
        );
        delivered += deliveries.len();
        let commit = Commit {
            cursor: Some(last.clone()),
            ..Commit::default()
        };
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.commit(name, &commit)).await??;
        if !page.full {
            break;
        }
        cursor = last;
    }
    Ok((delivered, start.elapsed()))
}
