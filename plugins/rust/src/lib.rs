//! The example orders plugin in Rust: binds [`mapping`] to the freshet
//! contract 0.2 (`process`: a row's events and their actions in one call;
//! `decide`: actions for stored events).
//!
//! Reads an `orders` row (`id`, `customer_email`, `status`, `amount`,
//! `currency`, `updated_at`), maps it to an XDM ExperienceEvent and decides:
//! confirmed → e-mail `order-confirmation` + webhook `order-confirmed`;
//! cancelled → CRM update of the contact. Setting `tenant` (default `freshet`)
//! names the `_{tenant}` field group; `decide_from` (`row`, the default, or
//! `event`) whether actions come from the row's fields or, as `decide` would
//! find them, from the event's stored body.

mod mapping;

use freshet::plugin::host::{get_setting, log, Level};
use freshet::plugin::types::{CrmUpdateRequest, EmailRequest, Row, Value, WebhookRequest};
use mapping::{Decision, Order, Rejection};

wit_bindgen::generate!({
    path: "../../wit/0.2",
    world: "pipeline-plugin",
});

struct OrdersPlugin;

/// Where each needed column sits in the batch, resolved once per batch.
struct Columns {
    id: usize,
    email: usize,
    status: usize,
    amount: usize,
    currency: usize,
    updated_at: usize,
}

impl Columns {
    fn resolve(names: &[String]) -> Result<Self, PluginError> {
        let find = |name: &str| {
            names
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| PluginError::Reject(format!("the source has no column `{name}`")))
        };
        Ok(Self {
            id: find("id")?,
            email: find("customer_email")?,
            status: find("status")?,
            amount: find("amount")?,
            currency: find("currency")?,
            updated_at: find("updated_at")?,
        })
    }
}

fn tenant() -> String {
    get_setting("tenant").unwrap_or_else(|| "freshet".to_owned())
}

/// Where `process` decides an event's actions from (setting `decide_from`).
#[derive(Clone, Copy)]
enum DecideFrom {
    /// The row's own fields: no JSON is parsed back.
    Row,
    /// The event's body, as `decide` reads a stored event.
    Event,
}

fn decide_from() -> Result<DecideFrom, PluginError> {
    match get_setting("decide_from").as_deref() {
        None | Some("row") => Ok(DecideFrom::Row),
        Some("event") => Ok(DecideFrom::Event),
        Some(other) => Err(PluginError::Reject(format!(
            "setting `decide_from` is `{other}`; expected `row` or `event`"
        ))),
    }
}

/// The contract's name for a cell's type, as rejections quote it.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) => "integer",
        Value::Decimal(_) => "decimal",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Timestamp(_) => "timestamp",
        Value::Date(_) => "date",
        Value::Json(_) => "json",
        Value::Binary(_) => "binary",
    }
}

/// A cell as text, or a rejection naming the column. Floats are refused:
/// money and ids are exact, and a float's text differs between languages.
fn text(row: &Row, index: usize, column: &str) -> Result<String, PluginError> {
    match &row.cells[index] {
        Value::Text(s) | Value::Decimal(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Null => Err(PluginError::Reject(format!("column `{column}` is null"))),
        other => Err(PluginError::Reject(format!(
            "column `{column}` has type {}, expected text",
            type_name(other)
        ))),
    }
}

/// A row's one event, with its actions decided from the row itself.
fn process_row(
    row: &Row,
    cols: &Columns,
    tenant: &str,
    decide: bool,
    from: &Result<DecideFrom, PluginError>,
) -> Result<Vec<DecidedEvent>, PluginError> {
    let order = Order {
        id: text(row, cols.id, "id")?,
        email: text(row, cols.email, "customer_email")?,
        status: text(row, cols.status, "status")?,
        amount: text(row, cols.amount, "amount")?,
        currency: text(row, cols.currency, "currency")?,
    };
    let timestamp = match &row.cells[cols.updated_at] {
        Value::Timestamp(t) => *t,
        other => {
            return Err(PluginError::Reject(format!(
                "column `updated_at` has type {}, expected timestamp",
                type_name(other)
            )))
        }
    };
    let body = mapping::event_body(&order, tenant).map_err(reject)?;
    let from = from.clone()?;
    let id = mapping::event_id(&row.identity, 0);
    let actions = match (decide, from) {
        (false, _) => Ok(Vec::new()),
        (true, DecideFrom::Row) => actions(&id, mapping::decisions(&id, &order.fields())),
        (true, DecideFrom::Event) => actions(&id, mapping::decide(&id, &body, tenant)),
    };
    Ok(vec![DecidedEvent {
        event: Event {
            id,
            timestamp,
            body,
        },
        actions,
    }])
}

/// Decisions as the contract's actions (a debug line when there are none).
fn actions(
    event_id: &str,
    decisions: Result<Vec<Decision>, Rejection>,
) -> Result<Vec<Action>, PluginError> {
    let decisions = decisions.map_err(reject)?;
    if decisions.is_empty() {
        log(Level::Debug, &format!("event {event_id}: no action"));
    }
    Ok(decisions.into_iter().map(into_action).collect())
}

fn reject(Rejection(reason): Rejection) -> PluginError {
    PluginError::Reject(reason)
}

impl Guest for OrdersPlugin {
    fn process(batch: RowBatch, decide: bool) -> Vec<Result<Vec<DecidedEvent>, PluginError>> {
        let cols = match Columns::resolve(&batch.columns) {
            Ok(cols) => cols,
            Err(e) => return batch.rows.iter().map(|_| Err(e.clone())).collect(),
        };
        let (tenant, from) = (tenant(), decide_from());
        batch
            .rows
            .iter()
            .map(|row| process_row(row, &cols, &tenant, decide, &from))
            .collect()
    }

    fn decide(events: Vec<Event>) -> Vec<Result<Vec<Action>, PluginError>> {
        let tenant = tenant();
        events
            .iter()
            .map(|event| actions(&event.id, mapping::decide(&event.id, &event.body, &tenant)))
            .collect()
    }
}

fn into_action(decision: Decision) -> Action {
    match decision {
        Decision::Email {
            target,
            to,
            template,
            variables,
        } => Action::Email(EmailRequest {
            target,
            to,
            template,
            variables,
        }),
        Decision::Webhook { target, body } => Action::Webhook(WebhookRequest { target, body }),
        Decision::CrmUpdate {
            target,
            object,
            external_id,
            fields,
        } => Action::CrmUpdate(CrmUpdateRequest {
            target,
            object,
            external_id,
            fields,
        }),
    }
}

export!(OrdersPlugin);
