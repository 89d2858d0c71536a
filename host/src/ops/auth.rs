//! Who is calling the admin API: the operator (everything) or a tenant (its
//! own pipelines, versions and dead letters only), from a bearer token.
//! Tokens come from environment variables the config names, are at least
//! 16 characters, and are compared as SHA-256 digests so that a comparison
//! takes the same time whatever prefix a guess shares.

use super::problem::Problem;
use crate::config::Config;
use axum::http::{header, HeaderMap, StatusCode};
use sha2::{Digest as _, Sha256};

/// The shortest token accepted.
const MIN_TOKEN_CHARS: usize = 16;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator: every tenant.
    Operator,
    /// One tenant.
    Tenant(String),
}

impl Caller {
    /// Whether the caller may see and change `tenant`'s things.
    pub fn may(&self, tenant: &str) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Tenant(t) => t == tenant,
        }
    }
}

/// The tokens in force, as digests.
pub struct Tokens {
    callers: Vec<([u8; 32], Caller)>,
}

impl Tokens {
    /// Reads every configured token variable; errors name the config key.
    pub fn from_env(config: &Config) -> anyhow::Result<Self> {
        let Some(admin) = &config.admin else {
            return Ok(Self {
                callers: Vec::new(),
            });
        };
        let named = std::iter::once((
            "admin.operator_token_env".to_owned(),
            admin.operator_token_env.clone(),
            Caller::Operator,
        ))
        .chain(config.tenants.iter().filter_map(|(name, t)| {
            Some((
                format!("tenants.{name}.admin_token_env"),
                t.admin_token_env.clone()?,
                Caller::Tenant(name.clone()),
            ))
        }));
        let mut callers = Vec::new();
        for (key, var, caller) in named {
            let token = std::env::var(&var)
                .map_err(|_| anyhow::anyhow!("{key}: environment variable {var} is not set"))?;
            let chars = token.trim().chars().count();
            anyhow::ensure!(
                chars >= MIN_TOKEN_CHARS,
                "{key}: {var} holds {chars} characters; a token needs at least {MIN_TOKEN_CHARS}"
            );
            let token = digest(token.trim());
            // The same token twice would make one caller the other.
            if let Some((_, first)) = callers.iter().find(|(d, _)| *d == token) {
                anyhow::bail!(
                    "{key}: {var} holds the same token as {}; every caller needs its own",
                    key_of(first)
                );
            }
            callers.push((token, caller));
        }
        Ok(Self { callers })
    }

    /// The caller a request's `Authorization: Bearer` header names.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        let unauthorized = |why: &str| Problem::new(StatusCode::UNAUTHORIZED, why.to_owned());
        let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized("no Authorization header: send `Authorization: Bearer TOKEN`")
        })?;
        // The scheme is case-insensitive (RFC 9110).
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer TOKEN`"))?;
        let seen = digest(token.trim());
        self.callers
            .iter()
            .find(|(d, _)| *d == seen)
            .map(|(_, caller)| caller.clone())
            .ok_or_else(|| unauthorized("the token is not valid"))
    }
}

/// The config key naming a caller's token.
fn key_of(caller: &Caller) -> String {
    match caller {
        Caller::Operator => "admin.operator_token_env".into(),
        Caller::Tenant(name) => format!("tenants.{name}.admin_token_env"),
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
