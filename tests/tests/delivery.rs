//! AEP answering badly: failures scripted on a real loopback receiver, the
//! real HTTP client retrying. Nothing may be lost; only a message AEP refuses
//! for good goes to dead letters, with AEP's reason.

use freshet::state::DeadKind;
use freshet_tests::*;
use std::time::{Duration, Instant};

fn pending(ids: std::ops::Range<i64>) -> Vec<Order> {
    let base = now_ms() - 60_000;
    ids.map(|id| Order::new(id, "pending", base + id)).collect()
}

fn confirmed(ids: std::ops::Range<i64>) -> Vec<Order> {
    let base = now_ms() - 60_000;
    ids.map(|id| Order::new(id, "confirmed", base + id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_then_a_200_loses_nothing() {
    let receiver = Receiver::start(true).await.unwrap();
    receiver.script_aep(Scripted::Status {
        status: 500,
        retry_after: None,
    });
    receiver.script_aep(Scripted::Status {
        status: 503,
        retry_after: None,
    });
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&pending(1..41));
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.delivered, 40);
    assert_eq!(receiver.request_count(), 3, "two failures, one success");
    assert_exactly_once(received_order_ids(&receiver), 1..41);
    assert!(setup.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_the_retry_after_it_names() {
    let receiver = Receiver::start(true).await.unwrap();
    receiver.script_aep(Scripted::Status {
        status: 429,
        retry_after: Some(1),
    });
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&pending(1..11));
    let started = Instant::now();
    let stats = setup.run_once(&receiver).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    assert_eq!(stats.delivered, 10);
    assert_eq!(receiver.request_count(), 2);
    assert_exactly_once(received_order_ids(&receiver), 1..11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_207_rejecting_one_message_dead_letters_it_with_the_reason() {
    let receiver = Receiver::start(true).await.unwrap();
    receiver.script_aep(Scripted::RejectMessage {
        index: 3,
        status: 400,
        message: "XDM validation failed: commerce.order.priceTotal must be a number".into(),
    });
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&pending(1..21));
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.delivered, 19);
    assert_eq!(stats.rejected, 1);
    assert_exactly_once(received_order_ids(&receiver), (1..21).filter(|&id| id != 4));

    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.kind(), DeadKind::Refused);
    assert_eq!(letter.code, "http_400");
    assert!(
        letter.reason.contains("priceTotal must be a number"),
        "{}",
        letter.reason
    );
    assert!(letter.identity.starts_with("4@"), "{}", letter.identity);
    let listed = serde_json::to_value(letter).unwrap();
    assert_eq!(
        listed["envelope"]["body"]["xdmEntity"]["_acme"]["orderId"], "4",
        "the envelope is kept for replay"
    );
    // The offset moved past the rejected row: a rerun sends nothing again.
    assert_eq!(setup.run_once(&receiver).await.unwrap().rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_for_good_is_dead_lettered_and_a_5xx_is_retried() {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    // Two confirmed orders: the first webhook call gets a 503 (retried), the
    // second a 404 (never retried).
    let base = now_ms() - 60_000;
    setup.insert(&[
        Order::new(1, "confirmed", base),
        Order::new(2, "confirmed", base + 1),
    ]);
    receiver.script_hook(Scripted::Status {
        status: 503,
        retry_after: None,
    });
    receiver.script_hook(Scripted::Status {
        status: 404,
        retry_after: None,
    });
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.actions, 4, "two e-mails, two webhooks");
    // Actions run concurrently, so which row got which failure is not fixed:
    // exactly one retried into success, one dead-lettered with http_404.
    assert_eq!(receiver.hooks().len(), 1);
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].kind(), DeadKind::Action);
    assert_eq!(dead[0].code, "http_404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_inlet_gets_the_bearer_token_from_the_environment() {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&pending(1..4));
    std::env::set_var("FRESHET_TEST_AEP_TOKEN", "tok-123");
    let text = setup.config_text(&receiver).replace(
        "timeout_ms = 5000\n\n",
        "timeout_ms = 5000\ntoken_env = \"FRESHET_TEST_AEP_TOKEN\"\n\n",
    );
    assert!(
        text.contains("token_env"),
        "the deliver table takes token_env"
    );
    let config = freshet::config::parse(&text).unwrap();
    let results = freshet::run(
        &config,
        Default::default(),
        freshet::RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(results[0].1.delivered, 3);
    assert_eq!(
        receiver.authorizations(),
        [Some("Bearer tok-123".to_owned())]
    );

    // A missing variable stops the start, naming the key and the variable.
    let missing = text.replace("FRESHET_TEST_AEP_TOKEN", "FRESHET_TEST_UNSET_TOKEN");
    let config = freshet::config::parse(&missing).unwrap();
    let error = freshet::run(
        &config,
        Default::default(),
        freshet::RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        format!("{error:#}"),
        "pipelines.orders.deliver.token_env: environment variable `FRESHET_TEST_UNSET_TOKEN` is not set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_aep_commits_nothing_and_the_next_run_delivers_everything() {
    // A port nobody listens on: every request is refused and retried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&pending(1..31));
    let text = setup.config_text(&receiver).replace(
        &format!("base_url = {:?}", receiver.url()),
        &format!("base_url = {dead_url:?}"),
    );
    assert!(text.contains(&dead_url));
    let running = Running::start(freshet::config::parse(&text).unwrap());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stats = running.stop().await;
    assert_eq!(
        stats.pages, 0,
        "nothing committed while AEP was down: {stats:?}"
    );
    assert!(
        setup.dead_letters().is_empty(),
        "a refused connection is not a rejection"
    );

    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.delivered, 30);
    assert_exactly_once(received_order_ids(&receiver), 1..31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_plugin_is_named() {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    let bogus = setup.path("bogus.wasm");
    std::fs::write(&bogus, b"\0asm not really").unwrap();
    let text = setup.config_text(&receiver).replace(
        &format!("{:?}", plugins::ORDERS_PLUGIN),
        &format!("{bogus:?}"),
    );
    let config = freshet::config::parse(&text).unwrap();
    let error = freshet::run(
        &config,
        Default::default(),
        freshet::RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.starts_with("pipelines.orders.plugin: ")
            && message.contains("not a valid WebAssembly component"),
        "{message}"
    );
    assert!(message.contains("bogus.wasm"), "{message}");
}

/// How a receiver verifies a signed webhook (the README says the same).
fn verify(secret: &[u8], timestamp: &str, raw_body: &str, signature: &str) -> bool {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{timestamp}.{raw_body}").as_bytes());
    let Some(hex_sig) = signature.strip_prefix("v1=") else {
        return false;
    };
    let Ok(bytes) = hex::decode(hex_sig) else {
        return false;
    };
    mac.verify_slice(&bytes).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_verify_at_the_receiver() {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&confirmed(1..6));
    std::env::set_var("FRESHET_TEST_SIGNING", "whsec-test");
    let hook_url = format!("url = \"{}/hooks/order-confirmed\"\n", receiver.url());
    let text = setup.config_text(&receiver).replace(
        &hook_url,
        &format!("{hook_url}signing_secret_env = \"FRESHET_TEST_SIGNING\"\n"),
    );
    assert!(text.contains("signing_secret_env"));
    let config = freshet::config::parse(&text).unwrap();
    freshet::run(
        &config,
        Default::default(),
        freshet::RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let hooks = receiver.hooks();
    assert_eq!(hooks.len(), 5);
    let now = chrono::Utc::now().timestamp();
    for hook in &hooks {
        let timestamp = hook.headers["x-freshet-timestamp"].to_str().unwrap();
        let signature = hook.headers["x-freshet-signature"].to_str().unwrap();
        assert!(
            (now - timestamp.parse::<i64>().unwrap()).abs() < 60,
            "a fresh timestamp"
        );
        assert!(
            verify(b"whsec-test", timestamp, &hook.raw, signature),
            "{signature}"
        );
        assert!(
            !verify(
                b"whsec-test",
                timestamp,
                &format!("{} ", hook.raw),
                signature
            ),
            "a changed body fails"
        );
        assert!(
            !verify(b"other-secret", timestamp, &hook.raw, signature),
            "another secret fails"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ims_tokens_are_cached_renewed_before_expiry_and_after_a_401() {
    let receiver = Receiver::start(true).await.unwrap();
    // Tokens live 2 s; AEP refuses any token that is unknown or expired.
    receiver.require_ims("cid", "csecret", 2);
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    std::env::set_var("FRESHET_TEST_IMS_ID", "cid");
    std::env::set_var("FRESHET_TEST_IMS_SECRET", "csecret");
    let text = format!(
        "{}\n[pipelines.orders.deliver.ims]\ntoken_url = \"{}/ims/token/v3\"\nclient_id_env = \"FRESHET_TEST_IMS_ID\"\nclient_secret_env = \"FRESHET_TEST_IMS_SECRET\"\n",
        setup.config_text(&receiver),
        receiver.url()
    );
    let config = freshet::config::parse(&text).unwrap();
    assert!(config.validate().is_empty());
    let running = Running::start(config);
    let wait_for = |n: u64| wait_for_messages(&receiver, n, Duration::from_secs(10));

    setup.insert(&pending(1..11));
    wait_for(10).await;
    assert_eq!(receiver.tokens_issued(), 1, "one token for the first page");

    // Past the token's life: the host renews before AEP would refuse it.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    setup.insert(&pending(11..21));
    wait_for(20).await;
    assert_eq!(receiver.tokens_issued(), 2, "renewed once, never refused");

    // AEP refuses a token (revoked, say): a new one is fetched and the request resent.
    receiver.script_aep(Scripted::Status {
        status: 401,
        retry_after: None,
    });
    setup.insert(&pending(21..31));
    wait_for(30).await;
    running.stop().await;
    assert_eq!(receiver.tokens_issued(), 3);
    assert_exactly_once(received_order_ids(&receiver), 1..31);
    assert!(setup.dead_letters().is_empty());
    let bearers: Vec<String> = receiver.authorizations().into_iter().flatten().collect();
    assert!(
        bearers.iter().all(|b| b.starts_with("Bearer tok-")),
        "{bearers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_request_and_loses_nothing() {
    let receiver = Receiver::start(true).await.unwrap();
    receiver.script_aep(Scripted::Status {
        status: 413,
        retry_after: None,
    });
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&pending(1..41));
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.delivered, 40);
    assert_eq!(
        receiver.request_count(),
        3,
        "refused whole, then two halves"
    );
    assert_exactly_once(received_order_ids(&receiver), 1..41);
    assert!(setup.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_a_targets_cap_are_refused_as_capped() {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&confirmed(1..6));
    let text = format!(
        "{}\n[pipelines.orders.targets.order-confirmed.capping]\nmax_calls = 3\nperiod_ms = 60000\nmax_connections = 2\n",
        setup.config_text(&receiver)
    );
    let config = freshet::config::parse(&text).unwrap();
    assert!(config.validate().is_empty());
    let stats = freshet::run(
        &config,
        Default::default(),
        freshet::RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .unwrap()[0]
        .1;
    assert_eq!(receiver.hooks().len(), 3, "three calls fit the cap");
    let capped: Vec<_> = setup
        .dead_letters()
        .into_iter()
        .filter(|d| d.code == "capped")
        .collect();
    assert_eq!(capped.len(), 2, "two were refused, and kept");
    assert_eq!(
        stats.actions, 10,
        "five e-mails and five webhook attempts finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_answer_is_retried_and_loses_nothing() {
    let receiver = Receiver::start(true).await.unwrap();
    receiver.script_aep(Scripted::Hangup);
    receiver.script_aep(Scripted::Hangup);
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&pending(1..51));
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.delivered, 50);
    assert_exactly_once(received_order_ids(&receiver), 1..51);
    assert!(receiver.request_count() >= 3, "two cut, then answered");
    assert!(setup.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_validation_sends_each_message_alone_and_dead_letters_the_violations() {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&pending(1..6));
    let config = setup.config_text(&receiver).replace(
        "flow_id = \"flow-1\"",
        "flow_id = \"flow-1\"\nsync_validation = true",
    );
    let config = freshet::config::parse(&config).unwrap();
    receiver.script_aep(Scripted::RejectMessage {
        index: 0,
        status: 400,
        message: "expected type: Number, found: String".into(),
    });
    let results = freshet::run(
        &config,
        tokio_util::sync::CancellationToken::new(),
        freshet::RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let stats = results[0].1;
    assert_eq!((stats.delivered, stats.rejected), (4, 1), "{stats:?}");
    assert_eq!(
        receiver.validated_count(),
        4,
        "through the validating endpoint"
    );
    assert_eq!(receiver.request_count(), 5, "one request per message");
    // Requests run concurrently: whichever came first was refused.
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 1);
    let refused: i64 = dead[0].identity.split('@').next().unwrap().parse().unwrap();
    assert_exactly_once(
        received_order_ids(&receiver),
        (1..6).filter(|id| *id != refused),
    );
    assert_eq!(dead[0].code, "http_400");
    assert_eq!(
        dead[0].reason,
        "AEP validation failed: #/_acme/amount: expected type: Number, found: String"
    );
}

/// Bug: AEP's 401 and 403 were retried forever inside the sink. A refused
/// credential is renewed once; refused again, the batch fails with an error
/// that names the credentials (nothing dead-lettered: the pipeline retries
/// the page after its backoff until an operator fixes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_refused_twice_fails_the_batch_naming_it() {
    use freshet::deliver::aep::{AepSettings, AepSink};
    use freshet::deliver::auth::Tokens;
    use freshet::deliver::{DeliverError, Message, Sink as _};
    let receiver = Receiver::start(true).await.unwrap();
    for status in [401, 403, 401] {
        receiver.script_aep(Scripted::Status {
            status,
            retry_after: None,
        });
    }
    let settings = AepSettings {
        base_url: receiver.url(),
        connection_id: "c".into(),
        flow_id: None,
        max_request_bytes: 1_000_000,
        concurrency: 1,
        timeout: Duration::from_secs(5),
        backoff: (Duration::from_millis(10), Duration::from_millis(50)),
        sync_validation: false,
    };
    let sink = AepSink::new(
        settings,
        Tokens::Fixed("revoked".into()),
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    let envelope = r#"{"header":{},"body":{"xdmEntity":{"_id":"1"}}}"#;
    let messages = [Message {
        json: envelope.into(),
    }];
    let err = sink.deliver(&messages).await.unwrap_err();
    assert!(
        matches!(err, DeliverError::Unauthorized { status: 403, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("deliver.token_env"), "{err}");
    assert_eq!(receiver.request_count(), 2, "one renewal, then it gives up");
    // The next attempt (the page read again): one more refusal, a renewal,
    // and AEP accepts.
    let delivered = sink.deliver(&messages).await.unwrap();
    assert_eq!(delivered, [freshet::deliver::Delivery::Delivered]);
    assert_eq!(receiver.request_count(), 4);
}
