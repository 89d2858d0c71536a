//! The example plugin's mapping compiled natively: the very source file the
//! Rust plugin builds for wasm, included here so the benchmark compares the
//! sandbox with plain Rust doing identical work.

#[allow(missing_docs, dead_code)]
#[path = "../../../plugins/rust/src/mapping.rs"]
mod mapping;

use crate::plugin::contract::{Row, Value};

/// Column positions of the orders table.
pub struct OrderColumns {
    id: usize,
    email: usize,
    status: usize,
    amount: usize,
    currency: usize,
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

/// Maps and decides one row natively; returns (events, actions) produced.
pub fn map_and_decide(row: &Row, cols: &OrderColumns, tenant: &str) -> (usize, usize) {
    let order = mapping::Order {
        id: text(&row.cells[cols.id]),
        email: text(&row.cells[cols.email]),
        status: text(&row.cells[cols.status]),
        amount: text(&row.cells[cols.amount]),
        currency: text(&row.cells[cols.currency]),
    };
    let id = mapping::event_id(&row.identity);
    match mapping::event_body(&order, tenant) {
        Ok(body) => (
            1,
            mapping::decide(&id, &body, tenant).map_or(0, |d| d.len()),
        ),
        Err(_) => (0, 0),
    }
}
