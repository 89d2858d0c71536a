//! The orders mapping itself, free of any WebAssembly binding.
//!
//! Kept apart from the bindings so the host's benchmark can compile this very
//! file natively and compare the sandboxed path with plain Rust doing the same
//! work. Depends on `serde` and `serde_json` (with `raw_value`) and `sha2`.
//!
//! JSON is written straight into a `String` and read back with borrowed,
//! typed structs: no `serde_json::Value` trees, whose many small allocations
//! are the slowest thing a wasm guest can do.

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

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

/// The `_id` of the event at `index` among a row's events: SHA-256 of
/// `{identity}#{index}`, hex, the value the host derives for an event whose
/// `_id` is left empty (contract 0.2). The host derives the identity from the
/// key and timestamp the same way on every read, so a replayed row gets the
/// same `_id` and AEP can drop the duplicate.
pub fn event_id(identity: &str, index: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hash = Sha256::new();
    hash.update(identity.as_bytes());
    hash.update(b"#");
    hash.update(index.to_string().as_bytes());
    let mut out = String::with_capacity(64);
    for byte in hash.finalize() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
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

/// `text` as a finite number if it is plain decimal notation: an optional
/// `-`, digits, and optionally `.` and more digits (`-12.50`; not `+1`, `.5`,
/// `1e3` or ` 1`). Kept this strict so every language's plugin accepts exactly
/// the same amounts.
pub fn decimal(text: &str) -> Option<f64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    text.parse::<f64>().ok().filter(|a| a.is_finite())
}

/// Appends `s` as a JSON string literal. Runs of bytes that need no escape
/// are copied whole: a large text column costs a few instructions a byte,
/// not a few dozen (the host's fuel budget grows with a row's bytes).
fn push_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Every escaped byte is ASCII, so `i` is a character boundary.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends `"key":"value"` pairs as a JSON object.
fn push_object(out: &mut String, fields: &[(&str, &str)]) {
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, key);
        out.push(':');
        push_str(out, value);
    }
    out.push('}');
}

/// The `xdmEntity` fields besides `_id` and `timestamp`, as JSON text.
///
/// `tenant` is the AEP tenant id without the leading underscore; tenant-owned
/// fields go under `_{tenant}` as XDM requires.
pub fn event_body(order: &Order, tenant: &str) -> Result<String, Rejection> {
    if order.email.is_empty() {
        return Err(Rejection("customer_email is empty".to_owned()));
    }
    let amount = decimal(&order.amount)
        .ok_or_else(|| Rejection(format!("amount `{}` is not a decimal number", order.amount)))?;
    let mut out = String::with_capacity(320 + order.email.len() + order.id.len() * 2);
    out.push_str("{\"eventType\":");
    push_str(&mut out, &event_type(&order.status));
    out.push_str(",\"identityMap\":{\"Email\":[{\"id\":");
    push_str(&mut out, &order.email);
    out.push_str(",\"primary\":true,\"authenticatedState\":\"authenticated\"}]}");
    out.push_str(",\"commerce\":{\"order\":{\"purchaseID\":");
    push_str(&mut out, &order.id);
    out.push_str(",\"priceTotal\":");
    out.push_str(
        &serde_json::Number::from_f64(amount).map_or_else(|| "0".to_owned(), |n| n.to_string()),
    );
    out.push_str(",\"currencyCode\":");
    push_str(&mut out, &order.currency);
    out.push_str("},\"purchases\":{\"value\":");
    out.push(if order.status == "confirmed" {
        '1'
    } else {
        '0'
    });
    out.push_str("}},");
    push_str(&mut out, &format!("_{tenant}"));
    out.push(':');
    push_object(
        &mut out,
        &[
            ("orderId", &order.id),
            ("orderStatus", &order.status),
            ("amount", &order.amount),
        ],
    );
    out.push('}');
    Ok(out)
}

/// One action the example decides, before it is put in the contract's types.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send the `template` e-mail through `target`.
    Email {
        target: String,
        to: String,
        template: String,
        variables: String,
    },
    /// Call the `target` webhook with `body`.
    Webhook { target: String, body: String },
    /// Upsert the contact keyed by `external_id` through `target`.
    CrmUpdate {
        target: String,
        object: String,
        external_id: String,
        fields: String,
    },
}

#[derive(Deserialize)]
struct Identity<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct IdentityMap<'a> {
    #[serde(rename = "Email", borrow, default)]
    email: Vec<Identity<'a>>,
}

#[derive(Deserialize)]
struct TenantFields<'a> {
    #[serde(rename = "orderId", borrow)]
    order_id: std::borrow::Cow<'a, str>,
    #[serde(rename = "orderStatus", borrow)]
    status: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    amount: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct CommerceOrder<'a> {
    #[serde(rename = "currencyCode", borrow)]
    currency: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct Commerce<'a> {
    #[serde(borrow)]
    order: CommerceOrder<'a>,
}

/// Decides the actions for one event body produced by [`event_body`]:
/// a confirmed order gets the confirmation e-mail and the `order-confirmed`
/// webhook; a cancelled one updates the CRM contact; others trigger nothing.
pub fn decide(event_id: &str, body: &str, tenant: &str) -> Result<Vec<Decision>, Rejection> {
    let bad =
        |what: &str, e: serde_json::Error| Rejection(format!("event {event_id}: {what}: {e}"));
    // Top-level fields are kept raw; only the three this needs are parsed.
    let fields: BTreeMap<&str, &RawValue> =
        serde_json::from_str(body).map_err(|e| bad("body", e))?;
    let field = |name: &str| {
        fields
            .get(name)
            .map(|raw| raw.get())
            .ok_or_else(|| Rejection(format!("event {event_id} has no `{name}`")))
    };
    let tenant_key = format!("_{tenant}");
    let own: TenantFields =
        serde_json::from_str(field(&tenant_key)?).map_err(|e| bad(&tenant_key, e))?;
    let identities: IdentityMap =
        serde_json::from_str(field("identityMap")?).map_err(|e| bad("identityMap", e))?;
    let commerce: Commerce =
        serde_json::from_str(field("commerce")?).map_err(|e| bad("commerce", e))?;
    let email = identities
        .email
        .first()
        .map(|i| i.id.as_ref())
        .unwrap_or_default();
    let order = OrderRef {
        id: &own.order_id,
        email,
        status: &own.status,
        amount: &own.amount,
        currency: &commerce.order.currency,
    };
    decisions(event_id, &order)
}

/// The fields [`decisions`] reads, borrowed from an [`Order`] or from an
/// event body.
#[derive(Debug, Clone, Copy)]
pub struct OrderRef<'a> {
    /// The order id.
    pub id: &'a str,
    /// The customer's e-mail address.
    pub email: &'a str,
    /// Order status.
    pub status: &'a str,
    /// The amount as exact decimal text.
    pub amount: &'a str,
    /// ISO 4217 currency code.
    pub currency: &'a str,
}

impl Order {
    /// The order's fields, borrowed.
    pub fn fields(&self) -> OrderRef<'_> {
        OrderRef {
            id: &self.id,
            email: &self.email,
            status: &self.status,
            amount: &self.amount,
            currency: &self.currency,
        }
    }
}

/// The actions for an order: a confirmed order gets the confirmation
/// e-mail and the `order-confirmed` webhook; a cancelled one updates the
/// CRM contact; others trigger nothing. The same from an event body
/// ([`decide`], contract 0.1) or from the row itself (contract 0.2's
/// `process`, which never reads its own JSON back).
pub fn decisions(event_id: &str, order: &OrderRef<'_>) -> Result<Vec<Decision>, Rejection> {
    let (email, order_id, amount, currency) = (order.email, order.id, order.amount, order.currency);
    if email.is_empty() || order_id.is_empty() {
        return Err(Rejection(format!(
            "event {event_id} has no order id or e-mail"
        )));
    }
    let json = |fields: &[(&str, &str)]| {
        let mut out = String::with_capacity(160);
        push_object(&mut out, fields);
        out
    };
    Ok(match order.status {
        "confirmed" => vec![
            Decision::Email {
                target: "order-confirmation".to_owned(),
                to: email.to_owned(),
                template: "order-confirmation".to_owned(),
                variables: json(&[
                    ("orderId", order_id),
                    ("amount", amount),
                    ("currency", currency),
                ]),
            },
            Decision::Webhook {
                target: "order-confirmed".to_owned(),
                body: json(&[
                    ("eventId", event_id),
                    ("orderId", order_id),
                    ("email", email),
                    ("amount", amount),
                    ("currency", currency),
                ]),
            },
        ],
        "cancelled" => vec![Decision::CrmUpdate {
            target: "crm".to_owned(),
            object: "Contact".to_owned(),
            external_id: email.to_owned(),
            fields: json(&[
                ("last_order_id", order_id),
                ("last_order_status", "cancelled"),
            ]),
        }],
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: &str) -> Order {
        Order {
            id: "42".into(),
            email: "ada\"q@example.com".into(),
            status: status.into(),
            amount: "12.50".into(),
            currency: "EUR".into(),
        }
    }

    #[test]
    fn event_ids_are_the_hosts_derivation() {
        // `printf '7@1#0' | sha256sum`: the host's derived_id("7@1", 0).
        assert_eq!(
            event_id("7@1", 0),
            "8d3b5e3914aaf74000a57b7bdf38a2a4f780cbd9ca97d054df6065e9d7a654cf"
        );
        assert_ne!(event_id("7@1", 1), event_id("7@1", 0));
    }

    #[test]
    fn body_is_valid_json_with_escapes() {
        let body = event_body(&order("confirmed"), "acme").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["identityMap"]["Email"][0]["id"], "ada\"q@example.com");
        assert_eq!(v["commerce"]["order"]["priceTotal"], 12.5);
        assert_eq!(v["_acme"]["amount"], "12.50");
    }

    #[test]
    fn strings_escape_exactly_as_every_language_does() {
        let mut out = String::new();
        push_str(&mut out, "é\"\\\n\r\t\u{1}\u{1f} ok");
        assert_eq!(out, r#""é\"\\\n\r\t\u0001\u001f ok""#);
        let mut out = String::new();
        push_str(&mut out, "");
        assert_eq!(out, r#""""#);
    }

    #[test]
    fn amounts_are_plain_decimals() {
        assert_eq!(decimal("-12.50"), Some(-12.5));
        assert_eq!(decimal("7"), Some(7.0));
        for bad in [
            "", "-", "+1", ".5", "5.", "1e3", " 1", "1 ", "inf", "NaN", "1.2.3",
        ] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
        assert_eq!(decimal(&format!("1{}", "0".repeat(400))), None);
    }

    #[test]
    fn deciding_from_the_row_equals_deciding_from_its_event() {
        for status in ["confirmed", "cancelled", "pending"] {
            let order = order(status);
            let body = event_body(&order, "acme").unwrap();
            assert_eq!(
                decisions("e", &order.fields()).unwrap(),
                decide("e", &body, "acme").unwrap(),
                "{status}"
            );
        }
    }

    #[test]
    fn decisions_follow_the_status() {
        let body = event_body(&order("confirmed"), "acme").unwrap();
        assert_eq!(decide("e", &body, "acme").unwrap().len(), 2);
        let body = event_body(&order("cancelled"), "acme").unwrap();
        assert!(matches!(
            &decide("e", &body, "acme").unwrap()[..],
            [Decision::CrmUpdate { .. }]
        ));
        let body = event_body(&order("pending"), "acme").unwrap();
        assert!(decide("e", &body, "acme").unwrap().is_empty());
    }
}
