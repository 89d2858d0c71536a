//! The e-mail executor: SMTP through `lettre`, the message rendered by the
//! host from the operator's template with the plugin's variables (MiniJinja;
//! strict: a variable the template needs and the plugin did not give fails
//! the action instead of sending a half-filled e-mail).
//!
//! SMTP has no idempotency key, so the action's key becomes the message's
//! `Message-ID` (`<sha256(key)@freshet>`): a replay of the one window the
//! ledger cannot close sends the same `Message-ID`, which mail systems use
//! to drop duplicates. A 5xx answer is permanent (`smtp_<code>`, dead
//! letter); a 4xx answer or a lost connection is retried within the window.

use super::attempts::{within_window, Attempt};
use super::ActionResult;
use crate::config::{EmailTargetConfig, SmtpTls};
use crate::secrets::Secrets;
use anyhow::{anyhow, Context as _};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use minijinja::{Environment, UndefinedBehavior};
use std::time::Duration;

/// One configured SMTP target.
pub struct EmailTarget {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    templates: Environment<'static>,
    window: Duration,
    max_retries: u32,
    server: String,
}

/// A template's parts, as named in the environment.
fn part(template: &str, part: &str) -> String {
    // The `.html` suffix turns on MiniJinja's HTML escaping for that part.
    format!("{template}.{part}")
}

impl EmailTarget {
    /// Builds the target; `key` is its config key path; its secrets come
    /// through `secrets`.
    pub fn build(config: &EmailTargetConfig, key: &str, secrets: &Secrets) -> anyhow::Result<Self> {
        let port = config.port.unwrap_or(match config.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        });
        let mut builder = match config.tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                .with_context(|| format!("{key}.host"))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .with_context(|| format!("{key}.host"))?,
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host),
        }
        .port(port)
        .timeout(Some(Duration::from_millis(config.timeout_ms)));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow!("{key}.ca_file: cannot read {}: {e}", ca.display()))?;
            let params = TlsParameters::builder(config.host.clone())
                .add_root_certificate(
                    Certificate::from_pem(&pem).map_err(|e| anyhow!("{key}.ca_file: {e}"))?,
                )
                .build_rustls()
                .map_err(|e| anyhow!("{key}.ca_file: {e}"))?;
            builder = builder.tls(match config.tls {
                SmtpTls::Starttls => Tls::Required(params),
                SmtpTls::Tls => Tls::Wrapper(params),
                SmtpTls::None => Tls::None,
            });
        }
        if let (Some(user), Some(password)) = (&config.username_env, &config.password_env) {
            builder = builder.credentials(Credentials::new(
                secrets.env(user, &format!("{key}.username_env"))?,
                secrets.env(password, &format!("{key}.password_env"))?,
            ));
        }
        let from = (config.from.value())
            .map_err(|e| anyhow!("{key}.from: {e}"))?
            .clone();
        let mut templates = Environment::new();
        templates.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, t) in &config.templates {
            let parts = [
                ("subject", Some(&t.subject)),
                ("txt", Some(&t.text)),
                ("html", t.html.as_ref()),
            ];
            for (p, source) in parts {
                if let Some(source) = source {
                    templates
                        .add_template_owned(part(name, p), source.clone())
                        .map_err(|e| anyhow!("{key}.templates.{name}: {e}"))?;
                }
            }
        }
        Ok(Self {
            transport: builder.build(),
            from,
            templates,
            window: Duration::from_millis(config.timeout_ms),
            max_retries: config.max_retries,
            server: format!("{}:{port}", config.host),
        })
    }

    /// Renders and sends one e-mail, until it is accepted, refused for good,
    /// or the window closes.
    pub async fn send(&self, key: &str, to: &str, template: &str, variables: &str) -> ActionResult {
        let message = match self.message(key, to, template, variables) {
            Ok(message) => message,
            Err((outcome, reason)) => return ActionResult::Failed { outcome, reason },
        };
        within_window(self.window, self.max_retries, &self.server, |left| {
            let message = message.clone();
            async move {
                match tokio::time::timeout(left, self.transport.send(message)).await {
                    Ok(Ok(response)) => Attempt::Done(format!("smtp_{}", response.code())),
                    Ok(Err(e)) => {
                        let outcome = e
                            .status()
                            .map_or("error".to_owned(), |c| format!("smtp_{c}"));
                        let reason = format!("{}: {e}", self.server);
                        if e.is_permanent() {
                            Attempt::Fail { outcome, reason }
                        } else {
                            Attempt::Retry {
                                outcome,
                                reason,
                                retry_after: None,
                            }
                        }
                    }
                    Err(_) => Attempt::Retry {
                        outcome: "timedout".into(),
                        reason: format!("{}: no answer within the window", self.server),
                        retry_after: None,
                    },
                }
            }
        })
        .await
    }

    /// The message, or why it cannot be made (outcome, reason).
    fn message(
        &self,
        key: &str,
        to: &str,
        template: &str,
        variables: &str,
    ) -> Result<Message, (String, String)> {
        let fail = |outcome: &str, reason: String| (outcome.to_owned(), reason);
        if self
            .templates
            .get_template(&part(template, "subject"))
            .is_err()
        {
            return Err(fail(
                "no_template",
                format!("the target has no template `{template}`"),
            ));
        }
        let to: Mailbox = to
            .parse()
            .map_err(|e| fail("bad_address", format!("{to:?}: {e}")))?;
        let variables: serde_json::Value = serde_json::from_str(variables)
            .map_err(|e| fail("template", format!("variables are not JSON: {e}")))?;
        let render = |p: &str| -> Result<Option<String>, (String, String)> {
            let Ok(t) = self.templates.get_template(&part(template, p)) else {
                return Ok(None);
            };
            t.render(&variables).map(Some).map_err(|e| {
                // Name what is missing: strict rendering only says "undefined".
                let mut missing: Vec<String> = t
                    .undeclared_variables(false)
                    .into_iter()
                    .filter(|v| variables.get(v).is_none())
                    .collect();
                missing.sort();
                let reason = if missing.is_empty() {
                    format!("template `{template}` ({p}): {e:#}")
                } else {
                    format!(
                        "template `{template}` ({p}) uses {}, which the plugin's variables lack",
                        missing.join(", ")
                    )
                };
                fail("template", reason)
            })
        };
        let subject = render("subject")?.unwrap_or_default();
        let text = render("txt")?.unwrap_or_default();
        let html = render("html")?;
        let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject.trim_end_matches(['\r', '\n']))
            .message_id(Some(format!("<{id}@freshet>")));
        match html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(text, html)),
            None => builder.singlepart(SinglePart::plain(text)),
        }
        .map_err(|e| fail("error", format!("building the message: {e}")))
    }
}
