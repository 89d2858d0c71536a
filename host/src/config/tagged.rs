//! `kind = "..."` tables that keep their key paths.
//!
//! Serde's internally tagged enums buffer the table before choosing the
//! variant, and errors inside the buffer lose their path
//! (`pipelines.orders.source: missing field` instead of
//! `pipelines.orders.source.timestamp: missing field`). Here the table is
//! split on `kind` by hand and the variant is read with its own path tracker;
//! the inner path travels in the error message behind a separator and
//! [`split_message`] joins it to the outer path.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

/// Marks an error message that carries an inner key path.
const SEP: char = '\u{1f}';

/// Reads a table and takes its `kind`.
pub(super) fn split<'de, D: Deserializer<'de>>(d: D) -> Result<(String, toml::Table), D::Error> {
    let mut table = toml::Table::deserialize(d)?;
    match table.remove("kind") {
        Some(toml::Value::String(kind)) => Ok((kind, table)),
        Some(other) => Err(D::Error::custom(format!(
            "{SEP}kind{SEP}must be a string, not {}",
            other.type_str()
        ))),
        None => Err(D::Error::missing_field("kind")),
    }
}

/// Reads the rest of the table as the chosen variant.
pub(super) fn variant<T: DeserializeOwned, E: serde::de::Error>(rest: toml::Table) -> Result<T, E> {
    serde_path_to_error::deserialize(toml::Value::Table(rest)).map_err(|e| {
        let (path, message) = split_message(&e.path().to_string(), e.inner().message());
        E::custom(format!("{SEP}{path}{SEP}{message}"))
    })
}

/// The error for a `kind` that is not one of `expected`.
pub(super) fn unknown<E: serde::de::Error>(kind: &str, expected: &[&str]) -> E {
    let expected = expected
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    E::custom(format!(
        "{SEP}kind{SEP}unknown kind `{kind}`, expected one of {expected}"
    ))
}

/// Joins an outer key path and a message that may carry an inner one.
pub(super) fn split_message(outer: &str, message: &str) -> (String, String) {
    let outer = if outer == "." { "" } else { outer };
    let Some(rest) = message.strip_prefix(SEP) else {
        return (outer.to_owned(), message.to_owned());
    };
    let (inner, message) = rest.split_once(SEP).unwrap_or(("", rest));
    let path = match (outer.is_empty(), inner.is_empty() || inner == ".") {
        (_, true) => outer.to_owned(),
        (true, false) => inner.to_owned(),
        (false, false) => format!("{outer}.{inner}"),
    };
    (path, message.to_owned())
}
