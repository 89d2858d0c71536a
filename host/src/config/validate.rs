//! Pure validation: no files opened, no variables read. Collects every
//! problem, each with the key path a user searches their file for.

use super::check::{is_env_name, is_identifier, ConfigError, Errors};
use super::{
    AepConfig, Config, CrmTargetConfig, DeliverConfig, EmailTargetConfig, InitialTimestamp, Parsed,
    PipelineConfig, Polling, PostgresSourceConfig, SnowflakeSourceConfig, SourceConfig,
    TargetConfig, TimestampConfig,
};
use crate::plugin::Limits;

impl Config {
    /// Every problem in the config, each with its key path; empty when valid.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if self.pipelines.is_empty() {
            out.push(ConfigError::new(
                "pipelines",
                "at least one pipeline is needed",
            ));
        }
        let engine = &self.engine;
        {
            let mut e = Errors {
                prefix: "engine".into(),
                out: &mut out,
            };
            e.range(engine.max_instances, 1, 10_000, "max_instances");
            e.range(engine.max_memory_mib, 1, 4096, "max_memory_mib");
            e.range(
                engine.max_component_bytes,
                1024,
                1024 * 1024 * 1024,
                "max_component_bytes",
            );
            e.range(
                engine.compile_timeout_ms,
                100,
                3_600_000,
                "compile_timeout_ms",
            );
            e.range(engine.threads, 0, 256, "threads");
            e.check(
                engine.heavy_fuel_share > 0.0 && engine.heavy_fuel_share <= 1.0,
                "heavy_fuel_share",
                format!(
                    "must be above 0 and at most 1, not {}",
                    engine.heavy_fuel_share
                ),
            );
            e.check(
                engine.reload_interval_ms == 0
                    || (100..=3_600_000).contains(&engine.reload_interval_ms),
                "reload_interval_ms",
                format!(
                    "must be 0 (off) or between 100 and 3600000, not {}",
                    engine.reload_interval_ms
                ),
            );
        }
        {
            let mut e = Errors {
                prefix: "state".into(),
                out: &mut out,
            };
            validate_state(&self.state, &mut e);
        }
        for (name, pipeline) in &self.pipelines {
            let prefix = format!("pipelines.{name}");
            if !is_identifier(name) {
                out.push(ConfigError::new(
                    &prefix,
                    "a pipeline name is 1-64 of a-z, 0-9, '-' and '_'",
                ));
            }
            validate_pipeline(
                pipeline,
                engine.max_memory_mib,
                engine.max_instances,
                Errors {
                    prefix,
                    out: &mut out,
                },
            );
        }
        super::tenants::validate(self, &mut out);
        super::admin::validate(self, &mut out);
        out
    }
}

fn validate_pipeline(
    p: &PipelineConfig,
    max_memory_mib: u64,
    max_instances: u32,
    mut e: Errors<'_>,
) {
    e.check(
        !p.plugin.as_os_str().is_empty(),
        "plugin",
        "must name a .wasm file",
    );
    e.range(p.batch_size, 1, 10_000, "batch_size");
    if let Some(instances) = p.instances {
        e.check(
            (1..=max_instances as usize).contains(&instances),
            "instances",
            format!(
                "must be between 1 and engine.max_instances ({max_instances}), not {instances}"
            ),
        );
    }
    validate_limits(&p.limits, max_memory_mib, &mut e);
    validate_polling(&p.source.polling(), &mut e);
    match &p.source {
        SourceConfig::Sqlite(s) => {
            e.check(
                !s.path.as_os_str().is_empty(),
                "source.path",
                "must not be empty",
            );
        }
        SourceConfig::Snowflake(s) => validate_snowflake(s, &mut e),
        SourceConfig::Postgres(s) => validate_postgres_source(s, &mut e),
    }
    match &p.deliver {
        DeliverConfig::Aep(a) => validate_aep(a, &mut e),
        DeliverConfig::File(f) => {
            e.check(
                !f.path.as_os_str().is_empty(),
                "deliver.path",
                "must not be empty",
            );
            e.non_empty(&f.dataset_id, "deliver.dataset_id");
            e.url(&f.schema_id, "deliver.schema_id");
        }
    }
    for (name, target) in &p.targets {
        validate_target(name, target, &mut e);
    }
}

fn validate_limits(l: &Limits, max_memory_mib: u64, e: &mut Errors<'_>) {
    e.range(l.fuel_per_row, 1_000, 10_000_000_000, "limits.fuel_per_row");
    e.range(
        l.fuel_per_input_byte,
        0,
        1_000_000,
        "limits.fuel_per_input_byte",
    );
    e.range(l.timeout_ms, 10, 600_000, "limits.timeout_ms");
    e.range(l.memory_mib, 1, max_memory_mib, "limits.memory_mib");
    e.range(l.table_elements, 100, 10_000_000, "limits.table_elements");
    e.range(
        l.output_bytes_per_row,
        1024,
        16 * 1024 * 1024,
        "limits.output_bytes_per_row",
    );
    e.range(
        l.input_bytes_per_row,
        1024,
        64 * 1024 * 1024,
        "limits.input_bytes_per_row",
    );
    e.range(
        l.log_bytes_per_row,
        0,
        1024 * 1024,
        "limits.log_bytes_per_row",
    );
    e.range(
        l.log_lines_per_second,
        1,
        100_000,
        "limits.log_lines_per_second",
    );
}

fn validate_aep(a: &AepConfig, e: &mut Errors<'_>) {
    e.url(&a.base_url, "deliver.base_url");
    e.non_empty(&a.connection_id, "deliver.connection_id");
    e.check(
        a.ims_org.ends_with("@AdobeOrg"),
        "deliver.ims_org",
        "must end with @AdobeOrg",
    );
    e.non_empty(&a.dataset_id, "deliver.dataset_id");
    e.url(&a.schema_id, "deliver.schema_id");
    e.range(
        a.max_request_bytes,
        10_000,
        1_000_000,
        "deliver.max_request_bytes",
    );
    e.range(a.concurrency, 1, 64, "deliver.concurrency");
    e.range(a.timeout_ms, 100, 600_000, "deliver.timeout_ms");
    e.env_name(a.token_env.as_ref(), "deliver.token_env");
    if let Some(ims) = &a.ims {
        e.check(
            a.token_env.is_none(),
            "deliver.ims",
            "use either token_env or ims, not both",
        );
        if let Some(url) = &ims.token_url {
            e.url(url, "deliver.ims.token_url");
        }
        e.env_name(Some(&ims.client_id_env), "deliver.ims.client_id_env");
        e.env_name(
            Some(&ims.client_secret_env),
            "deliver.ims.client_secret_env",
        );
    }
}

fn validate_target(name: &str, target: &TargetConfig, e: &mut Errors<'_>) {
    let key = |k: &str| format!("targets.{name}.{k}");
    if !is_identifier(name) {
        e.at(
            &format!("targets.{name}"),
            "a target name is 1-64 of a-z, 0-9, '-' and '_'",
        );
    }
    if let Some(c) = target.capping() {
        e.range(c.max_calls, 1, u64::MAX, &key("capping.max_calls"));
        e.range(c.period_ms, 1, 86_400_000, &key("capping.period_ms"));
        e.range(c.max_connections, 1, 400, &key("capping.max_connections"));
    }
    match target {
        TargetConfig::Webhook(w) => {
            e.parsed_url(&w.url, &key("url"));
            e.check(
                matches!(w.method.text(), "POST" | "PUT" | "GET"),
                &key("method"),
                format!("must be POST, PUT or GET, not {:?}", w.method.text()),
            );
            e.range(w.timeout_ms, 1_000, 30_000, &key("timeout_ms"));
            e.range(w.max_retries, 0, 3, &key("max_retries"));
            e.env_name(w.signing_secret_env.as_ref(), &key("signing_secret_env"));
            for (header, value) in &w.headers {
                if let Err(msg) = value.references() {
                    e.at(&key(&format!("headers.{header}")), msg);
                }
            }
        }
        TargetConfig::Email(m) => validate_email(m, &key, e),
        TargetConfig::Crm(c) => validate_crm(c, &key, e),
        TargetConfig::Record(r) => {
            e.check(
                !r.path.as_os_str().is_empty(),
                &key("path"),
                "must not be empty",
            );
        }
    }
}

fn validate_crm(c: &CrmTargetConfig, key: &dyn Fn(&str) -> String, e: &mut Errors<'_>) {
    e.parsed_url(&c.base_url, &key("base_url"));
    e.identifier(&c.id_field, &key("id_field"));
    e.range(c.timeout_ms, 1_000, 30_000, &key("timeout_ms"));
    e.range(c.max_retries, 0, 3, &key("max_retries"));
    e.check(
        c.oauth.is_some() != c.token_env.is_some(),
        &key("oauth"),
        "set one of oauth (client credentials) or token_env",
    );
    if let Some(o) = &c.oauth {
        match &o.token_url {
            Some(url) => e.url(url, &key("oauth.token_url")),
            None => e.at(
                &key("oauth.token_url"),
                "must name the CRM's OAuth token endpoint",
            ),
        }
        e.env_name(Some(&o.client_id_env), &key("oauth.client_id_env"));
        e.env_name(Some(&o.client_secret_env), &key("oauth.client_secret_env"));
    }
    e.env_name(c.token_env.as_ref(), &key("token_env"));
}

fn validate_email(m: &EmailTargetConfig, key: &dyn Fn(&str) -> String, e: &mut Errors<'_>) {
    e.non_empty(&m.host, &key("host"));
    e.check(
        m.ca_file.is_none() || m.tls != crate::config::SmtpTls::None,
        &key("ca_file"),
        "a CA file is for tls = \"starttls\" or \"tls\", not \"none\"",
    );
    if let Err(err) = m.from.value() {
        e.at(
            &key("from"),
            format!("{:?} is not an e-mail address: {err}", m.from.text()),
        );
    }
    e.range(m.timeout_ms, 1_000, 300_000, &key("timeout_ms"));
    e.range(m.max_retries, 0, 3, &key("max_retries"));
    e.check(
        m.username_env.is_some() == m.password_env.is_some(),
        &key("password_env"),
        "username_env and password_env go together",
    );
    e.env_name(m.username_env.as_ref(), &key("username_env"));
    e.env_name(m.password_env.as_ref(), &key("password_env"));
    e.check(
        !m.templates.is_empty(),
        &key("templates"),
        "name at least one template (`[...templates.NAME]` with subject and text)",
    );
    for (name, t) in &m.templates {
        for (part, source) in [
            ("subject", Some(&t.subject)),
            ("text", Some(&t.text)),
            ("html", t.html.as_ref()),
        ] {
            if let Some(Err(err)) = source.map(|s| {
                minijinja::Environment::new()
                    .template_from_str(s)
                    .map(|_| ())
            }) {
                e.at(
                    &key(&format!("templates.{name}.{part}")),
                    format!("not a valid template: {err}"),
                );
            }
        }
    }
}

/// What every polled source shares.
fn validate_polling(p: &Polling<'_>, e: &mut Errors<'_>) {
    for (key, value) in [
        ("source.table", p.table),
        ("source.key_column", p.key_column),
        ("source.timestamp.column", p.timestamp.column.as_str()),
    ] {
        e.identifier(value, key);
    }
    e.range(p.page_size, 1, 100_000, "source.page_size");
    e.range(
        p.poll_interval_ms,
        100,
        3_600_000,
        "source.poll_interval_ms",
    );
    e.range(p.delay_ms, 0, 86_400_000, "source.delay_ms");
    match &p.timestamp.initial {
        Some(InitialTimestamp::EpochSeconds(n)) if *n < -1 => e.at(
            "source.timestamp.initial",
            "must be -1 (from first start), 0 (everything), epoch seconds or an RFC 3339 instant",
        ),
        Some(InitialTimestamp::Rfc3339(instant)) => {
            if let Err(err) = instant.value() {
                e.at(
                    "source.timestamp.initial",
                    format!("{:?} is not an RFC 3339 instant: {err}", instant.text()),
                );
            }
        }
        _ => {}
    }
}

fn validate_postgres_source(s: &PostgresSourceConfig, e: &mut Errors<'_>) {
    e.env_name(Some(&s.url_env), "source.url_env");
    e.identifier(&s.schema, "source.schema");
    no_timestamp_unit(&s.timestamp, "PostgreSQL", e);
    valid_timezone(&s.timezone, e);
    e.range(
        s.query_timeout_ms,
        1_000,
        3_600_000,
        "source.query_timeout_ms",
    );
}

/// `timestamp.unit` is only for the integer columns of the sqlite source.
fn no_timestamp_unit(timestamp: &TimestampConfig, kind: &str, e: &mut Errors<'_>) {
    if timestamp.unit.is_some() {
        e.at(
            "source.timestamp.unit",
            format!("only for INTEGER columns of the sqlite source; a {kind} timestamp column carries its own type"),
        );
    }
}

fn valid_timezone(zone: &Parsed<chrono_tz::Tz>, e: &mut Errors<'_>) {
    if zone.value().is_err() {
        e.at(
            "source.timezone",
            format!(
                "{:?} is not an IANA time zone (e.g. \"UTC\", \"Europe/Paris\")",
                zone.text()
            ),
        );
    }
}

fn validate_snowflake(s: &SnowflakeSourceConfig, e: &mut Errors<'_>) {
    e.non_empty(&s.account, "source.account");
    e.non_empty(&s.user, "source.user");
    for (key, value) in [
        ("source.warehouse", Some(&s.warehouse)),
        ("source.database", Some(&s.database)),
        ("source.schema", Some(&s.schema)),
        ("source.role", s.role.as_ref()),
    ] {
        if let Some(value) = value {
            e.identifier(value, key);
        }
    }
    no_timestamp_unit(&s.timestamp, "Snowflake", e);
    valid_timezone(&s.timezone, e);
    e.range(
        s.max_staleness_ms,
        s.poll_interval_ms,
        86_400_000,
        "source.max_staleness_ms",
    );
    e.range(
        s.query_timeout_ms,
        1_000,
        3_600_000,
        "source.query_timeout_ms",
    );
    if let Some(endpoint) = &s.endpoint {
        e.parsed_url(endpoint, "source.endpoint");
    }
    let a = &s.auth;
    let methods = [
        a.password_env.is_some(),
        a.private_key_file.is_some(),
        a.private_key_env.is_some(),
    ];
    match methods.iter().filter(|m| **m).count() {
        1 => {}
        0 => e.at(
            "source.auth",
            "set one of password_env, private_key_file or private_key_env",
        ),
        _ => e.at(
            "source.auth",
            "set only one of password_env, private_key_file or private_key_env",
        ),
    }
    if a.passphrase_env.is_some() && a.password_env.is_some() {
        e.at(
            "source.auth.passphrase_env",
            "a passphrase unlocks a private key, not a password",
        );
    }
    e.env_name(a.password_env.as_ref(), "source.auth.password_env");
    e.env_name(a.private_key_env.as_ref(), "source.auth.private_key_env");
    e.env_name(a.passphrase_env.as_ref(), "source.auth.passphrase_env");
}

/// `[state]`: each kind's keys, and none of the other's.
fn validate_state(state: &super::StateConfig, e: &mut Errors<'_>) {
    use super::StateKind;
    let has_path = !state.path.as_os_str().is_empty();
    match state.kind {
        StateKind::Sqlite => {
            e.check(has_path, "path", "must not be empty");
            e.check(
                state.url_env.is_none(),
                "url_env",
                "is for kind = \"postgres\"; an SQLite store is a file (`path`)",
            );
        }
        StateKind::Postgres => {
            e.check(
                !has_path,
                "path",
                "is for kind = \"sqlite\"; a PostgreSQL store is named by `url_env`",
            );
            match &state.url_env {
                None => e.check(
                    false,
                    "url_env",
                    "missing: the environment variable holding the connection string",
                ),
                Some(name) => e.check(
                    is_env_name(name),
                    "url_env",
                    format!("{name:?} is not an environment variable name"),
                ),
            }
            e.check(
                (1_000..=600_000).contains(&state.lease_ttl_ms),
                "lease_ttl_ms",
                format!(
                    "must be between 1000 and 600000, not {}",
                    state.lease_ttl_ms
                ),
            );
        }
    }
}
