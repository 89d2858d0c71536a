//! The vocabulary of validation, shared by [`super::validate`] and
//! [`super::tenants`]: the error type, a collector that prefixes key paths,
//! and the rules names follow.

use crate::secrets::SecretEnv;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A setting parsed when the file is read. A value that does not parse is
/// kept with its error for validation to report beside every other problem
/// (one bad value must not hide the rest); a good one is stored typed, so
/// building never parses it again.
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    text: String,
    value: Result<T, String>,
}

impl<T> Parsed<T> {
    /// The text as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value, or why the text is not one.
    pub fn value(&self) -> Result<&T, &str> {
        self.value.as_ref().map_err(String::as_str)
    }
}

impl<T: FromStr> From<&str> for Parsed<T>
where
    T::Err: fmt::Display,
{
    fn from(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            value: text.parse().map_err(|e: T::Err| e.to_string()),
        }
    }
}

impl<'de, T: FromStr> Deserialize<'de> for Parsed<T>
where
    T::Err: fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from(String::deserialize(d)?.as_str()))
    }
}

impl<T> Serialize for Parsed<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.text.serialize(s)
    }
}

/// One problem in the config, at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `pipelines.orders.source.timestamp.column`.
    pub path: String,
    /// What is wrong, lower-case.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Collects errors under a key path prefix.
pub(super) struct Errors<'a> {
    pub(super) prefix: String,
    pub(super) out: &'a mut Vec<ConfigError>,
}

impl Errors<'_> {
    pub(super) fn at(&mut self, key: &str, message: impl Into<String>) {
        self.out
            .push(ConfigError::new(format!("{}.{key}", self.prefix), message));
    }

    pub(super) fn check(&mut self, ok: bool, key: &str, message: impl Into<String>) {
        if !ok {
            self.at(key, message);
        }
    }

    pub(super) fn identifier(&mut self, value: &str, key: &str) {
        if value.trim().is_empty() {
            self.at(key, "must not be empty");
        } else if !is_sql_identifier(value) {
            self.at(
                key,
                format!("{value:?} is not a plain SQL identifier (letters, digits, '_')"),
            );
        }
    }

    pub(super) fn non_empty(&mut self, value: &str, key: &str) {
        self.check(!value.trim().is_empty(), key, "must not be empty");
    }

    pub(super) fn range<T: PartialOrd + fmt::Display>(
        &mut self,
        value: T,
        min: T,
        max: T,
        key: &str,
    ) {
        self.check(
            min <= value && value <= max,
            key,
            format!("must be between {min} and {max}, not {value}"),
        );
    }

    pub(super) fn env_name(&mut self, var: Option<&SecretEnv>, key: &str) {
        if let Some(var) = var {
            self.check(
                is_env_name(var.name()),
                key,
                "must be an environment variable name",
            );
        }
    }

    /// A parsed http(s) URL.
    pub(super) fn parsed_url(&mut self, url: &Parsed<reqwest::Url>, key: &str) {
        match url.value() {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => self.at(
                key,
                format!("must be an http or https URL, not {}", u.scheme()),
            ),
            Err(e) => self.at(key, format!("is not a URL ({e}): {:?}", url.text())),
        }
    }

    /// An http(s) URL given as text.
    pub(super) fn url(&mut self, value: &str, key: &str) {
        self.parsed_url(&Parsed::from(value), key);
    }
}

/// Is `name` usable as an identifier: a pipeline or target name.
pub(crate) fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Is `name` a plain SQL identifier (no quoting needed)?
pub(crate) fn is_sql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Finds `${VAR}` references in a value; errors on an unclosed one.
pub fn env_references(value: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in {value:?}"))?;
        let name = &after[..end];
        if !is_env_name(name) {
            return Err(format!("`${{{name}}}` is not an environment variable name"));
        }
        names.push(name);
        rest = &after[end + 1..];
    }
    Ok(names)
}

pub(crate) fn is_env_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
