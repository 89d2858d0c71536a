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
            callers.push((digest(token.trim()), caller));
        }
        Ok(Self { callers })
    }

    /// The caller a request's `Authorization: Bearer` header names.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        let unauthorized = |why: &str| Problem::new(StatusCode::UNAUTHORIZED, why.to_owned());
        let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized("no Authorization header: send `Authorization: Bearer TOKEN`")
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer TOKEN`"))?;
        let seen = digest(token.trim());
        self.callers
            .iter()
            .find(|(d, _)| *d == seen)
            .map(|(_, caller)| caller.clone())
            .ok_or_else(|| unauthorized("the token is not valid"))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
