//! Secrets: every setting that names one holds a typed reference —
//! [`SecretEnv`] (`*_env` settings), [`SecretTemplate`] (`${VAR}` in a
//! webhook header), [`SecretFile`] (a private key file) — whose value can
//! only be read through the owning tenant's [`Secrets`]. Ownership is
//! checked there, at the one place a secret is read, so a new setting that
//! reads a secret cannot skip the check: it has no other way to read it.
//!
//! Validation finds every variable a pipeline names without a list of the
//! settings that name one: [`env_references`] walks the pipeline's
//! serialized form, in which each reference stands out, so `freshet validate`
//! reports a foreign variable at its key before anything is built.
//!
//! A tenant owns the environment variables listed in
//! `tenants.NAME.secrets` and the files inside `tenants.NAME.secret_dir`
//! (after symlinks and `..` are resolved). A host without `[tenants]` has
//! one operator, who owns every secret.

use crate::config::{Config, PipelineConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// An environment variable holding a secret. Its name is not secret; its
/// value is read only by [`Secrets::env`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretEnv(String);

impl SecretEnv {
    /// The variable's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretEnv {
    fn from(name: &str) -> Self {
        Self(name.to_owned())
    }
}

/// How a reference stands out in a config's serialized form: a prefix no
/// TOML value can hold (a NUL), then its kind.
const MARK_ENV: &str = "\u{0}secret-env\u{0}";
const MARK_TEMPLATE: &str = "\u{0}secret-template\u{0}";

impl Serialize for SecretEnv {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{MARK_ENV}{}", self.0))
    }
}

impl Serialize for SecretTemplate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{MARK_TEMPLATE}{}", self.0))
    }
}

/// Every environment variable `section` names as a secret, with the key
/// path (under the section) of the setting naming it. Found in the
/// section's serialized form, so a setting of a secret type anywhere in it
/// is found without being listed; a malformed `${` is left to validation.
pub fn env_references<T: Serialize>(section: &T) -> Vec<(String, String)> {
    fn walk(value: &serde_json::Value, key: &str, out: &mut Vec<(String, String)>) {
        let at = |k: &str| {
            if key.is_empty() {
                k.to_owned()
            } else {
                format!("{key}.{k}")
            }
        };
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    walk(v, &at(k), out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{key}[{i}]"), out);
                }
            }
            serde_json::Value::String(s) => {
                if let Some(var) = s.strip_prefix(MARK_ENV) {
                    out.push((key.to_owned(), var.to_owned()));
                } else if let Some(text) = s.strip_prefix(MARK_TEMPLATE) {
                    let vars = crate::config::env_references(text).unwrap_or_default();
                    out.extend(vars.into_iter().map(|v| (key.to_owned(), v.to_owned())));
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    // A section that does not serialize (a path that is not UTF-8) is
    // checked where its secrets are read instead.
    if let Ok(value) = serde_json::to_value(section) {
        walk(&value, "", &mut out);
    }
    out
}

/// A file holding a secret (a private key), read only by [`Secrets::file`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct SecretFile(PathBuf);

impl SecretFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Makes a relative path relative to `base` (the config file's folder).
    pub(crate) fn rebase(&mut self, base: &Path) {
        if self.0.is_relative() {
            self.0 = base.join(&self.0);
        }
    }
}

impl From<PathBuf> for SecretFile {
    fn from(path: PathBuf) -> Self {
        Self(path)
    }
}

/// A text in which `${VAR}` stands for an environment variable's value,
/// expanded only by [`Secrets::expand`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretTemplate(String);

impl SecretTemplate {
    /// The variables the text refers to; an error for a malformed one.
    pub fn references(&self) -> Result<Vec<&str>, String> {
        crate::config::env_references(&self.0)
    }
}

impl From<&str> for SecretTemplate {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

/// Why a secret could not be read: the key that names it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SecretError {
    /// The setting's full key path.
    pub key: String,
    /// What is wrong (never the secret's value).
    pub message: String,
}

fn error(key: &str, message: String) -> SecretError {
    SecretError {
        key: key.to_owned(),
        message,
    }
}

/// What one tenant owns.
#[derive(Debug, Clone)]
struct Owned {
    tenant: String,
    env: Vec<String>,
    dir: Option<PathBuf>,
}

/// The secrets a pipeline may read: its tenant's. The only way to read a
/// secret a config names.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// `None`: no tenants are declared, the operator owns everything.
    owned: Option<Owned>,
}

impl Secrets {
    /// The secrets of `pipeline`'s tenant.
    pub fn of(config: &Config, pipeline: &PipelineConfig) -> Self {
        let tenant = config.tenant_of(pipeline);
        let owned = config.tenants.get(tenant).map(|t| Owned {
            tenant: tenant.to_owned(),
            env: t.secrets.clone(),
            dir: t.secret_dir.clone(),
        });
        Self { owned }
    }

    /// The secrets of a host without tenants: every one.
    pub fn unrestricted() -> Self {
        Self { owned: None }
    }

    /// Whether the tenant owns variable `var`, named at `key`: pure, for
    /// validation; every read checks it too.
    pub fn check_env(&self, var: &str, key: &str) -> Result<(), SecretError> {
        match &self.owned {
            Some(o) if !o.env.iter().any(|v| v == var) => Err(error(
                key,
                format!(
                    "`{var}` is not one of tenant {t}'s secrets (tenants.{t}.secrets)",
                    t = o.tenant
                ),
            )),
            _ => Ok(()),
        }
    }

    fn read_env(&self, var: &str, key: &str) -> Result<String, SecretError> {
        self.check_env(var, key)?;
        std::env::var(var)
            .map_err(|_| error(key, format!("environment variable `{var}` is not set")))
    }

    /// The value of the variable `secret` names; `key` is the setting's path.
    pub fn env(&self, secret: &SecretEnv, key: &str) -> Result<String, SecretError> {
        self.read_env(&secret.0, key)
    }

    /// [`Secrets::env`] for an optional setting.
    pub fn env_opt(
        &self,
        secret: Option<&SecretEnv>,
        key: &str,
    ) -> Result<Option<String>, SecretError> {
        secret.map(|s| self.env(s, key)).transpose()
    }

    /// `template` with each `${VAR}` replaced by the variable's value.
    pub fn expand(&self, template: &SecretTemplate, key: &str) -> Result<String, SecretError> {
        let mut out = template.0.clone();
        for var in template.references().map_err(|e| error(key, e))? {
            let value = self.read_env(var, key)?;
            out = out.replace(&format!("${{{var}}}"), &value);
        }
        Ok(out)
    }

    /// The text of the file `secret` names, if it lies inside the tenant's
    /// `secret_dir`.
    pub fn file(&self, secret: &SecretFile, key: &str) -> Result<String, SecretError> {
        let path = &secret.0;
        if let Some(o) = &self.owned {
            let t = &o.tenant;
            let Some(dir) = &o.dir else {
                return Err(error(key, format!("tenant {t} has no secret_dir (tenants.{t}.secret_dir), so its pipelines cannot read secret files")));
            };
            let canonical = |p: &Path, what: &str| {
                p.canonicalize()
                    .map_err(|e| error(what, format!("{}: {e}", p.display())))
            };
            let dir = canonical(dir, &format!("tenants.{t}.secret_dir"))?;
            let file = canonical(path, key)?;
            if !file.starts_with(&dir) {
                return Err(error(
                    key,
                    format!(
                        "{} is outside tenant {t}'s secret_dir {}",
                        file.display(),
                        dir.display()
                    ),
                ));
            }
        }
        std::fs::read_to_string(path)
            .map_err(|e| error(key, format!("cannot read {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(env: &[&str], dir: Option<PathBuf>) -> Secrets {
        Secrets {
            owned: Some(Owned {
                tenant: "acme".into(),
                env: env.iter().map(|s| (*s).to_owned()).collect(),
                dir,
            }),
        }
    }

    #[test]
    fn a_tenant_reads_only_its_own_variables() {
        std::env::set_var("FRESHET_SECRETS_TEST_OWN", "mine");
        std::env::set_var("FRESHET_SECRETS_TEST_OTHER", "theirs");
        let acme = tenant(&["FRESHET_SECRETS_TEST_OWN"], None);
        let own = SecretEnv::from("FRESHET_SECRETS_TEST_OWN");
        assert_eq!(acme.env(&own, "k").unwrap(), "mine");
        let other = SecretEnv::from("FRESHET_SECRETS_TEST_OTHER");
        let e = acme
            .env(&other, "pipelines.p.deliver.token_env")
            .unwrap_err();
        assert_eq!(e.to_string(), "pipelines.p.deliver.token_env: `FRESHET_SECRETS_TEST_OTHER` is not one of tenant acme's secrets (tenants.acme.secrets)");
        let header = SecretTemplate::from(
            "Bearer ${FRESHET_SECRETS_TEST_OWN}/${FRESHET_SECRETS_TEST_OTHER}",
        );
        assert!(acme
            .expand(&header, "h")
            .unwrap_err()
            .message
            .contains("OTHER"));
        let header = SecretTemplate::from("Bearer ${FRESHET_SECRETS_TEST_OWN}");
        assert_eq!(acme.expand(&header, "h").unwrap(), "Bearer mine");
        assert_eq!(Secrets::unrestricted().env(&other, "k").unwrap(), "theirs");
        let unset = SecretEnv::from("FRESHET_SECRETS_TEST_UNSET");
        assert!(Secrets::unrestricted()
            .env(&unset, "k")
            .unwrap_err()
            .message
            .contains("not set"));
    }

    #[test]
    fn a_tenant_reads_only_files_inside_its_secret_dir() {
        let root = tempfile::tempdir().unwrap();
        let (mine, theirs) = (root.path().join("acme"), root.path().join("globex"));
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::write(mine.join("key.pem"), "A").unwrap();
        std::fs::write(theirs.join("key.pem"), "G").unwrap();
        let acme = tenant(&[], Some(mine.clone()));
        let own = SecretFile::from(mine.join("key.pem"));
        assert_eq!(acme.file(&own, "k").unwrap(), "A");
        // Directly, and through `..`: both resolve outside.
        for path in [theirs.join("key.pem"), mine.join("../globex/key.pem")] {
            let e = acme
                .file(
                    &SecretFile::from(path),
                    "pipelines.p.source.auth.private_key_file",
                )
                .unwrap_err();
            assert!(
                e.message.contains("outside tenant acme's secret_dir"),
                "{e}"
            );
        }
        let no_dir = tenant(&[], None);
        assert!(no_dir
            .file(&own, "k")
            .unwrap_err()
            .message
            .contains("has no secret_dir"));
        assert_eq!(Secrets::unrestricted().file(&own, "k").unwrap(), "A");
    }
}
