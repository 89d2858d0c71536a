//! The vocabulary of validation, shared by [`super::validate`] and
//! [`super::tenants`]: the error type, a collector that prefixes key paths,
//! and the rules names follow.

use crate::secrets::SecretEnv;
use std::fmt;

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

    pub(super) fn url(&mut self, value: &str, key: &str) {
        match reqwest::Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => self.at(
                key,
                format!("must be an http or https URL, not {}", url.scheme()),
            ),
            Err(e) => self.at(key, format!("is not a URL ({e}): {value:?}")),
        }
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
