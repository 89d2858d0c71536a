//! What every PostgreSQL connection of the host shares, the state store's
//! and the source's: TLS as the connection string's `sslmode` asks, a pool
//! that gives up instead of hanging, and errors that carry their causes.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::time::Duration;

/// TLS as the connection string asks (`sslmode`), with the web's root
/// certificates; `prefer` (the default) falls back to plain text.
pub fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("aws-lc-rs supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// A pool of at most `size` connections; waiting for one, making one and
/// checking one each fail after `timeout`, so a server that is down is an
/// error to retry, not a hang.
pub fn pool(
    config: tokio_postgres::Config,
    size: usize,
    timeout: Duration,
) -> Result<Pool, String> {
    let manager = Manager::from_config(
        config,
        tls(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| e.to_string())
}

/// Adds `-c name=value` to the options the server applies to each session.
pub fn set_option(config: &mut tokio_postgres::Config, name: &str, value: impl std::fmt::Display) {
    let options = format!(
        "{} -c {name}={value}",
        config.get_options().unwrap_or_default()
    );
    config.options(options.trim());
}

/// An error and its causes in one line (the pool's "could not create a
/// connection" says why only in its source); a server's error as
/// `SQLSTATE: message`.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(db) = find_db_error(e) {
        return format!("{}: {}", db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// The server's own error, if `e` is or wraps one.
pub fn find_db_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a tokio_postgres::error::DbError> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(db) = err.downcast_ref::<tokio_postgres::error::DbError>() {
            return Some(db);
        }
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
            if let Some(db) = pg.as_db_error() {
                return Some(db);
            }
        }
        current = err.source();
    }
    None
}
