//! What every PostgreSQL connection of the host shares, the state store's
//! and the source's: the connection string read as libpq reads it, TLS as
//! its `sslmode` asks, a pool that gives up instead of hanging, and errors
//! that carry their causes.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require`; libpq
//! also has `verify-ca` and `verify-full`, and `sslrootcert` for a private
//! CA (every managed PostgreSQL has one). [`parse`] takes those too. The
//! server's certificate is always verified when TLS is used (rustls checks
//! the host name as well, so `verify-ca` is as strict as `verify-full`),
//! which is stricter than libpq's `require` (encryption only): a server
//! whose certificate the web's roots do not vouch for needs `sslrootcert`.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::pki_types::{pem::PemObject as _, CertificateDer};
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A connection string parsed: the driver's config and the TLS it asks for.
pub struct Target {
    /// For tokio-postgres.
    pub config: tokio_postgres::Config,
    /// Trusting `sslrootcert`'s CAs, else the web's roots.
    pub tls: MakeRustlsConnect,
}

/// Parses a libpq connection string (`postgres://` URL or `key=value`
/// words), with libpq's `sslmode=verify-ca|verify-full` and `sslrootcert`
/// (a PEM file of the CAs to trust, or `system` for the default roots).
/// Errors never repeat the string (it may hold a password).
pub fn parse(text: &str) -> Result<Target, String> {
    let (rest, verify, root_cert) = take_tls_params(text);
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| e.to_string())?;
    if verify {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    let roots = match root_cert.as_deref() {
        None | Some("system") => webpki_roots::TLS_SERVER_ROOTS
            .to_vec()
            .into_iter()
            .collect(),
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| format!("sslrootcert: cannot read {path}: {e}"))?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert: {path} holds no CA certificate"));
            }
            roots
        }
    };
    Ok(Target {
        config,
        tls: tls(roots),
    })
}

/// Takes out of a connection string what tokio-postgres does not parse:
/// `sslmode=verify-*` (as `true`) and `sslrootcert`; the rest as it was.
fn take_tls_params(text: &str) -> (String, bool, Option<String>) {
    let mut verify = false;
    let mut root_cert = None;
    let mut take = |key: &str, value: String| -> bool {
        match key {
            "sslmode" if value.starts_with("verify-") => verify = true,
            "sslrootcert" => root_cert = Some(value),
            _ => return false,
        }
        true
    };
    let text = text.trim();
    let rewritten = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        // The query starts at the first `?` after the user info (a
        // password may hold a `?`), which ends at the authority's last `@`.
        let start = text.find("://").map_or(0, |i| i + 3);
        let authority_end = text[start..].find('/').map_or(text.len(), |i| start + i);
        let after_user = text[..authority_end].rfind('@').map_or(start, |at| at + 1);
        let Some(q) = text[after_user..].find('?').map(|q| after_user + q) else {
            return (text.to_owned(), false, None);
        };
        let (base, query) = (&text[..q], &text[q + 1..]);
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
                !take(key, value.into_owned())
            })
            .collect();
        let mut out = base.to_owned();
        if verify {
            out.push_str(if kept.is_empty() {
                "?sslmode=require"
            } else {
                "?sslmode=require&"
            });
        } else if !kept.is_empty() {
            out.push('?');
        }
        out.push_str(&kept.join("&"));
        out
    } else {
        let mut kept: Vec<&str> = text
            .split_whitespace()
            .filter(|word| match word.split_once('=') {
                Some((key, value)) => !take(key.trim(), value.trim_matches('\'').to_owned()),
                None => true,
            })
            .collect();
        if verify {
            kept.push("sslmode=require");
        }
        kept.join(" ")
    };
    // Untouched unless there was something to take out: the driver parses
    // quoting and spacing the rewrite would not keep.
    if verify || root_cert.is_some() {
        (rewritten, verify, root_cert)
    } else {
        (text.to_owned(), false, None)
    }
}

/// TLS trusting `roots`; `prefer` (the default mode) falls back to plain
/// text when the server has no TLS.
fn tls(roots: rustls::RootCertStore) -> MakeRustlsConnect {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("aws-lc-rs supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

/// A pool of at most `size` connections; waiting for one, making one and
/// checking one each fail after `timeout`, so a server that is down is an
/// error to retry, not a hang.
pub fn pool(target: Target, size: usize, timeout: Duration) -> Result<Pool, String> {
    let manager = Manager::from_config(
        target.config,
        target.tls,
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
    if text.contains("invalid peer certificate") {
        text.push_str(
            " (a server whose CA the web's roots do not include: add sslrootcert=/path/to/ca.pem to the connection string)",
        );
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

#[cfg(test)]
mod tests {
    use super::take_tls_params;

    #[test]
    fn libpq_tls_words_are_taken_out_of_a_url() {
        let (rest, verify, root) = take_tls_params(
            "postgres://u:p@db.example.com:5432/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        );
        assert_eq!(
            rest,
            "postgres://u:p@db.example.com:5432/shop?sslmode=require&application_name=x"
        );
        assert!(verify);
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, verify, root) = take_tls_params("postgres://db/shop?sslmode=require");
        assert_eq!(
            (rest.as_str(), verify, root),
            ("postgres://db/shop?sslmode=require", false, None)
        );
        let (rest, ..) = take_tls_params("postgres://db/shop?sslmode=verify-ca");
        assert_eq!(rest, "postgres://db/shop?sslmode=require");
        // A `?` in the password is not the query's.
        let (rest, ..) = take_tls_params("postgres://u:p?w@db/shop?sslmode=verify-full");
        assert_eq!(rest, "postgres://u:p?w@db/shop?sslmode=require");
        // Nothing to take: the string as written, spacing and all.
        let words = "host=db  password='a  b'";
        assert_eq!(take_tls_params(words).0, words);
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());
    }

    #[test]
    fn and_out_of_key_value_words() {
        let (rest, verify, root) =
            take_tls_params("host=db dbname=shop sslmode=verify-full sslrootcert='/etc/ca.pem'");
        assert_eq!(rest, "host=db dbname=shop sslmode=require");
        assert!(verify);
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
    }

    #[test]
    fn a_missing_root_certificate_file_is_named() {
        let error = super::parse("postgres://db/shop?sslrootcert=/no/such/ca.pem")
            .err()
            .expect("refused");
        assert!(
            error.starts_with("sslrootcert: cannot read /no/such/ca.pem"),
            "{error}"
        );
    }
}
