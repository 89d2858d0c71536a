//! E-mail actions through a real SMTP server (aiosmtpd) on loopback: the
//! host renders the operator's template with the plugin's variables and
//! sends it with `lettre`.

use freshet_tests::smtp::SmtpServer;
use freshet_tests::*;

/// A setup whose `order-confirmation` target sends through `smtp`; `extra`
/// adds lines to the target.
fn mailing(smtp: &SmtpServer, extra: &str) -> Setup {
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup
        .targets
        .insert("order-confirmation", email_target(smtp.port, extra));
    setup
}

fn confirmed(ids: std::ops::Range<i64>) -> Vec<Order> {
    let base = now_ms() - 60_000;
    ids.map(|id| Order::new(id, "confirmed", base + id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_orders_are_emailed_with_the_rendered_template() {
    let smtp = SmtpServer::start(None).unwrap();
    let receiver = Receiver::start(true).await.unwrap();
    let setup = mailing(&smtp, "");
    let mut orders = confirmed(1..6);
    orders[0].currency = "A&B".into();
    setup.insert(&orders);
    setup.insert(&[Order::new(6, "pending", now_ms() - 1_000)]);
    let stats = setup.run_once(&receiver).await.unwrap();

    let mut mails = smtp.messages();
    mails.sort_by_key(|m| m.to.clone());
    assert_eq!(mails.len(), 5, "one per confirmed order: {stats:?}");
    for (order, mail) in orders.iter().zip(&mails) {
        let (id, currency) = (order.id, &order.currency);
        assert_eq!(mail.to, format!("c{id}@example.com"));
        assert_eq!(mail.from, "Shop <orders@example.com>");
        assert_eq!(mail.subject, format!("Order {id} confirmed"));
        assert_eq!(
            mail.text.trim_end(),
            format!("Thank you! Order {id}: {} {currency}.", order.amount)
        );
        // The HTML part escapes the plugin's values, not the template's own text.
        let escaped = currency.replace('&', "&amp;");
        assert_eq!(
            mail.html.as_deref().map(str::trim_end),
            Some(
                format!(
                    "<p>Order <b>{id}</b>: {} {escaped} & more</p>",
                    order.amount
                )
                .as_str()
            )
        );
        // The action's idempotency key, hashed: the same on any replay.
        assert!(
            mail.message_id.starts_with('<') && mail.message_id.ends_with("@freshet>"),
            "{}",
            mail.message_id
        );
    }
    let mut ids: Vec<_> = mails.iter().map(|m| m.message_id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5, "one Message-ID per action");
    assert!(setup.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_address_is_dead_lettered_and_a_greylisted_one_retried() {
    let smtp = SmtpServer::start(None).unwrap();
    let receiver = Receiver::start(true).await.unwrap();
    let setup = mailing(&smtp, "");
    let mut orders = confirmed(1..4);
    orders[0].email = "bounce1@example.com".into();
    orders[1].email = "greylist2@example.com".into();
    setup.insert(&orders);
    setup.run_once(&receiver).await.unwrap();

    let mut to: Vec<_> = smtp.messages().into_iter().map(|m| m.to).collect();
    to.sort();
    assert_eq!(to, ["c3@example.com", "greylist2@example.com"]);
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].code, "smtp_550");
    assert!(
        dead[0].reason.contains("No such mailbox"),
        "{}",
        dead[0].reason
    );
    // The row's other actions ran: its webhook fired.
    assert_eq!(receiver.hooks().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_credentials_come_from_the_environment() {
    let smtp = SmtpServer::start(Some(("shop", "s3cret"))).unwrap();
    std::env::set_var("FRESHET_TEST_SMTP_USER", "shop");
    std::env::set_var("FRESHET_TEST_SMTP_PASSWORD", "s3cret");
    std::env::set_var("FRESHET_TEST_SMTP_WRONG", "guess");
    let receiver = Receiver::start(true).await.unwrap();
    let setup = mailing(
        &smtp,
        "username_env = \"FRESHET_TEST_SMTP_USER\"\npassword_env = \"FRESHET_TEST_SMTP_WRONG\"",
    );
    setup.insert(&confirmed(1..2));
    setup.run_once(&receiver).await.unwrap();
    assert!(smtp.messages().is_empty());
    let dead = setup.dead_letters();
    assert_eq!(dead[0].code, "smtp_535", "{dead:?}");

    let setup = mailing(
        &smtp,
        "username_env = \"FRESHET_TEST_SMTP_USER\"\npassword_env = \"FRESHET_TEST_SMTP_PASSWORD\"",
    );
    setup.insert(&confirmed(1..3));
    setup.run_once(&receiver).await.unwrap();
    assert_eq!(smtp.messages().len(), 2);
    assert!(setup.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_needing_a_variable_the_plugin_did_not_give_sends_nothing() {
    let smtp = SmtpServer::start(None).unwrap();
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.targets.insert(
        "order-confirmation",
        email_target(smtp.port, "").replace("{{ currency }}.\"", "{{ currency }} {{ coupon }}.\""),
    );
    setup.insert(&confirmed(1..3));
    setup.run_once(&receiver).await.unwrap();
    assert!(smtp.messages().is_empty());
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].code, "template");
    assert!(
        dead[0]
            .reason
            .contains("uses coupon, which the plugin's variables lack"),
        "{}",
        dead[0].reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_the_targets_cap_are_refused_as_capped() {
    let smtp = SmtpServer::start(None).unwrap();
    let receiver = Receiver::start(true).await.unwrap();
    let setup = mailing(
        &smtp,
        "capping = { max_calls = 2, period_ms = 60000, max_connections = 1 }",
    );
    setup.insert(&confirmed(1..4));
    setup.run_once(&receiver).await.unwrap();
    assert_eq!(smtp.messages().len(), 2);
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].code, "capped");
    assert!(
        dead[0]
            .reason
            .contains("`order-confirmation` is capped at 2 calls per 60s"),
        "{}",
        dead[0].reason
    );
}

/// A private CA and a `localhost` certificate it signed, as a company relay
/// has: (CA cert, server cert, server key), PEM.
fn private_ca(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(
        path("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    [path("ca.pem"), path("cert.pem"), path("key.pem")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_required_and_the_relays_own_ca_is_trusted_when_named() {
    let certs = tempfile::tempdir().unwrap();
    let [ca, cert, key] = private_ca(certs.path());
    let smtp = SmtpServer::start_tls(&cert, &key).unwrap();
    let receiver = Receiver::start(true).await.unwrap();
    let target = |extra: &str| {
        email_target(smtp.port, extra)
            .replace("host = \"127.0.0.1\"", "host = \"localhost\"")
            .replace("tls = \"none\"", "tls = \"starttls\"")
    };

    // A certificate no public root vouches for: refused, nothing sent in clear.
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.targets.insert("order-confirmation", target(""));
    setup.insert(&confirmed(1..2));
    setup.run_once(&receiver).await.unwrap();
    assert!(smtp.messages().is_empty());
    assert_eq!(
        setup.dead_letters().len(),
        1,
        "the TLS failure is dead-lettered"
    );

    // Trusting the relay's CA: sent over STARTTLS.
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup
        .targets
        .insert("order-confirmation", target(&format!("ca_file = {ca:?}")));
    setup.insert(&confirmed(1..3));
    setup.run_once(&receiver).await.unwrap();
    assert_eq!(smtp.messages().len(), 2, "{:?}", setup.dead_letters());
}
