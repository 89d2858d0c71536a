//! The orders mapping itself, free of any WebAssembly binding.
//!
//! Kept apart from the bindings so the host's benchmark can compile this very
//! file natively and compare the sandboxed path with plain Rust doing the same
//! work. Depends on `serde_json` and `sha2` only.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// An `orders` row, as the plugin reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// The order id, as text (integer ids are rendered in decimal).
    pub id: String,
    /// The customer's e-mail address: the identity AEP stitches profiles on.
    pub email: String,
    /// Order status, e.g. `confirmed`, `cancelled`, `pending`.
    pub status: String,
    /// The amount as exact decimal text, e.g. `"12.50"`.
    pub amount: String,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// Why a row cannot be mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection(pub String);

/// The event `_id`: SHA-256 of the row's identity, hex. The host derives the
/// identity from the key and timestamp the same way on every read, so a
/// replayed row gets the same `_id` and AEP can drop the duplicate.
pub fn event_id(identity: &str) -> String {
    let digest = Sha256::digest(identity.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// XDM `eventType` for an order status: the standard `commerce.purchases`
/// for a confirmed order, a tenant-style type for the others.
pub fn event_type(status: &str) -> String {
    match status {
        "confirmed" => "commerce.purchases".to_owned(),
        other => format!("commerce.order.{other}"),
    }
}

/// The `xdmEntity` fields besides `_id` and `timestamp`, as JSON text.
///
/// `tenant` is the AEP tenant id without the leading underscore; tenant-owned
/// fields go under `_{tenant}` as XDM requires.
pub fn event_body(order: &Order, tenant: &str) -> Result<String, Rejection> {
    if order.email.is_empty() {
        return Err(Rejection("customer_email is empty".to_owned()));
    }
    let amount: f64 = order
        .amount
        .parse()
        .map_err(|_| Rejection(format!("amount {:?} is not a decimal number", order.amount)))?;
    let mut body = Map::new();
    body.insert("eventType".to_owned(), Value::String(event_type(&order.status)));
    body.insert(
        "identityMap".to_owned(),
        json!({"Email": [{"id": order.email, "primary": true, "authenticatedState": "authenticated"}]}),
    );
    body.insert(
        "commerce".to_owned(),
        json!({
            "order": {"purchaseID": order.id, "priceTotal": amount, "currencyCode": order.currency},
            "purchases": {"value": if order.status == "confirmed" { 1 } else { 0 }},
        }),
    );
    body.insert(
        format!("_{tenant}"),
        json!({"orderId": order.id, "orderStatus": order.status, "amount": order.amount}),
    );
    Ok(Value::Object(body).to_string())
}

/// One action the example decides, before it is put in the contract's types.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send the `template` e-mail through `target`.
    Email { target: String, to: String, template: String, variables: String },
    /// Call the `target` webhook with `body`.
    Webhook { target: String, body: String },
    /// Upsert the contact keyed by `external_id` through `target`.
    CrmUpdate { target: String, object: String, external_id: String, fields: String },
}

/// Decides the actions for one event body produced by [`event_body`]:
/// a confirmed order gets the confirmation e-mail and the `order-confirmed`
/// webhook; a cancelled one updates the CRM contact; others trigger nothing.
pub fn decide(event_id: &str, body: &str, tenant: &str) -> Result<Vec<Decision>, Rejection> {
    let body: Value =
        serde_json::from_str(body).map_err(|e| Rejection(format!("event body is not JSON: {e}")))?;
    let fields = &body[format!("_{tenant}").as_str()];
    let status = fields["orderStatus"].as_str().unwrap_or_default();
    let order_id = fields["orderId"].as_str().unwrap_or_default();
    let amount = fields["amount"].as_str().unwrap_or_default();
    let email = body["identityMap"]["Email"][0]["id"].as_str().unwrap_or_default();
    let currency = body["commerce"]["order"]["currencyCode"].as_str().unwrap_or_default();
    if email.is_empty() || order_id.is_empty() {
        return Err(Rejection(format!("event {event_id} has no order id or e-mail")));
    }
    Ok(match status {
        "confirmed" => vec![
            Decision::Email {
                target: "order-confirmation".to_owned(),
                to: email.to_owned(),
                template: "order-confirmation".to_owned(),
                variables: json!({"orderId": order_id, "amount": amount, "currency": currency})
                    .to_string(),
            },
            Decision::Webhook {
                target: "order-confirmed".to_owned(),
                body: json!({
                    "eventId": event_id, "orderId": order_id, "email": email,
                    "amount": amount, "currency": currency,
                })
                .to_string(),
            },
        ],
        "cancelled" => vec![Decision::CrmUpdate {
            target: "crm".to_owned(),
            object: "Contact".to_owned(),
            external_id: email.to_owned(),
            fields: json!({"last_order_id": order_id, "last_order_status": "cancelled"}).to_string(),
        }],
        _ => Vec::new(),
    })
}
