//! `freshet dlq replay`: dead letters sent again once their cause is fixed.

use freshet::state::DeadKind;
use freshet_tests::*;

fn orders(ids: std::ops::Range<i64>, status: &str) -> Vec<Order> {
    let base = now_ms() - 60_000;
    ids.map(|id| Order::new(id, status, base + id)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_and_a_failed_action_are_replayed_and_removed() {
    let receiver = Receiver::start(true).await.unwrap();
    // AEP refuses order 2's event; order 3's webhook answers 404.
    receiver.script_aep(Scripted::RejectMessage {
        index: 1,
        status: 400,
        message: "schema mismatch".into(),
    });
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&orders(1..2, "pending"));
    setup.insert(&orders(2..3, "pending"));
    setup.run_once(&receiver).await.unwrap();
    receiver.script_hook(Scripted::Status {
        status: 404,
        retry_after: None,
    });
    setup.insert(&orders(3..4, "confirmed"));
    setup.run_once(&receiver).await.unwrap();
    let dead = setup.dead_letters();
    assert_eq!(
        dead.iter()
            .map(|d| (d.kind, d.code.as_str()))
            .collect::<Vec<_>>(),
        [
            (DeadKind::Event, "http_400"),
            (DeadKind::Action, "http_404")
        ]
    );
    let hook_key = |d: &freshet::state::DeadLetter| {
        serde_json::from_str::<serde_json::Value>(&d.payload).unwrap()["idempotency_key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let action_key = hook_key(&dead[1]);

    // The causes are fixed (the receiver now accepts both): replay all.
    let config = setup.config(&receiver);
    let replayed = freshet::pipeline::replay(&config, None, &[]).await.unwrap();
    let results: Vec<_> = replayed
        .iter()
        .map(|r| (r.id, r.result, r.code.as_str()))
        .collect();
    assert_eq!(
        results,
        [
            (dead[0].id, "delivered", "delivered"),
            (dead[1].id, "done", "http_200")
        ]
    );
    assert_eq!(
        received_order_ids(&receiver),
        [1, 3, 2],
        "order 2's envelope, as it was"
    );
    let hooks = receiver.hooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(
        hooks[0].idempotency_key.as_deref(),
        Some(action_key.as_str()),
        "its original key"
    );
    assert!(
        setup.dead_letters().is_empty(),
        "replayed letters are removed"
    );
    // The ledger has the action finished: a replay of its row skips it.
    use freshet::state::StateStore as _;
    assert_eq!(
        setup.state().finished_actions(&[action_key]).unwrap().len(),
        1
    );
    // Nothing left: a second replay does nothing.
    assert!(freshet::pipeline::replay(&config, None, &[])
        .await
        .unwrap()
        .is_empty());
}

#[test]
fn the_cli_replays_only_the_ids_given_and_fails_when_one_fails_again() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = rt.block_on(Receiver::start(true)).unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    // Two webhooks fail for good.
    receiver.script_hook(Scripted::Status {
        status: 404,
        retry_after: None,
    });
    receiver.script_hook(Scripted::Status {
        status: 404,
        retry_after: None,
    });
    setup.insert(&orders(1..3, "confirmed"));
    rt.block_on(setup.run_once(&receiver)).unwrap();
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 2);
    let config = setup.path("freshet.toml");
    std::fs::write(&config, setup.config_text(&receiver)).unwrap();

    // The first, with the endpoint still failing: exit 1, the letter stays.
    receiver.script_hook(Scripted::Status {
        status: 410,
        retry_after: None,
    });
    let out = freshet()
        .args(["dlq", "replay", "--config"])
        .arg(&config)
        .args(["--id", &dead[0].id.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["result"], "failed");
    assert_eq!(line["code"], "http_410");
    let after = setup.dead_letters();
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].code, "http_410", "the new reason is kept");

    // Then only the second: it is done, the first stays.
    let out = freshet()
        .args(["dlq", "replay", "--config"])
        .arg(&config)
        .args(["--id", &dead[1].id.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        setup
            .dead_letters()
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        [dead[0].id]
    );
    // An id that does not exist is named.
    let out = freshet()
        .args(["dlq", "replay", "--config"])
        .arg(&config)
        .args(["--id", "999"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dead letter 999"));
}
