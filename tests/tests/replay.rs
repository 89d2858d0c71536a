//! `freshet dlq replay`: dead letters sent again once their cause is fixed.

use freshet::state::{DeadKind, Letter};
use freshet_tests::*;

fn orders(ids: std::ops::Range<i64>, status: &str) -> Vec<Order> {
    let base = now_ms() - 60_000;
    ids.map(|id| Order::new(id, status, base + id)).collect()
}

/// Order 1 (pending) and order 2 (`status`) in a new setup, with AEP
/// scripted to refuse order 2's event (`http_400`) on the first run.
async fn second_event_refused(status: &str) -> (Receiver, Setup) {
    let receiver = Receiver::start(true).await.unwrap();
    receiver.script_aep(Scripted::RejectMessage {
        index: 1,
        status: 400,
        message: "schema mismatch".into(),
    });
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&orders(1..2, "pending"));
    setup.insert(&orders(2..3, status));
    (receiver, setup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_and_a_failed_action_are_replayed_and_removed() {
    // AEP refuses order 2's event; order 3's webhook answers 404.
    let (receiver, setup) = second_event_refused("pending").await;
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
            .map(|d| (d.kind(), d.code.as_str()))
            .collect::<Vec<_>>(),
        [
            (DeadKind::Refused, "http_400"),
            (DeadKind::Action, "http_404")
        ]
    );
    let Letter::Action(keyed) = &dead[1].letter else {
        panic!("not an action: {:?}", dead[1]);
    };
    let action_key = keyed.key.clone();

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
    succeed(
        freshet()
            .args(["dlq", "replay", "--config"])
            .arg(&config)
            .args(["--id", &dead[1].id.to_string()]),
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

/// Bug: a refused event's actions were lost (the dead letter kept only the
/// envelope, and its replay settled without running them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_confirmed_order_runs_its_actions_once_its_replay_is_delivered() {
    // AEP refuses order 2's event; order 2 is confirmed: an e-mail and a
    // webhook wait on it.
    let (receiver, setup) = second_event_refused("confirmed").await;
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!((stats.delivered, stats.rejected, stats.actions), (1, 1, 0));
    assert!(
        receiver.hooks().is_empty(),
        "no journey for an event AEP never saw"
    );
    assert!(setup.ndjson("emails.ndjson").is_empty());
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let Letter::Refused(refused) = &dead[0].letter else {
        panic!("not refused: {:?}", dead[0]);
    };
    let keys: Vec<String> = refused.actions.iter().map(|a| a.key.clone()).collect();
    assert_eq!(keys.len(), 2, "the e-mail and the webhook wait with it");

    let config = setup.config(&receiver);
    let replayed = freshet::pipeline::replay(&config, None, &[]).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].result, "delivered");
    let counts = replayed[0].actions.expect("its actions ran");
    assert_eq!((counts.done, counts.failed, counts.skipped), (2, 0, 0));
    assert!(!replayed[0].failed());
    assert_eq!(received_order_ids(&receiver), [1, 2], "the event, then");
    let hooks = receiver.hooks();
    assert_eq!(hooks.len(), 1, "the webhook ran once");
    assert!(
        keys.contains(hooks[0].idempotency_key.as_ref().unwrap()),
        "under its key"
    );
    let emails = setup.ndjson("emails.ndjson");
    assert_eq!(emails.len(), 1, "the e-mail was sent once");
    assert!(keys
        .iter()
        .any(|k| emails[0]["idempotency_key"] == k.as_str()));
    assert!(setup.dead_letters().is_empty());
    assert_eq!(setup.state().finished_actions(&keys).unwrap().len(), 2);

    // The same letter again (as if the replay had crashed before removing
    // it): the ledger runs neither action a second time.
    let letter = freshet::state::NewDeadLetter {
        identity: dead[0].identity.clone(),
        code: dead[0].code.clone(),
        reason: dead[0].reason.clone(),
        letter: dead[0].letter.clone(),
    };
    let commit = freshet::state::Commit {
        dead_letters: vec![letter],
        ..Default::default()
    };
    setup.state().commit("orders", &commit).unwrap();
    let replayed = freshet::pipeline::replay(&config, None, &[]).await.unwrap();
    let counts = replayed[0].actions.expect("its actions were considered");
    assert_eq!((counts.done, counts.skipped), (0, 2));
    assert_eq!(receiver.hooks().len(), 1);
    assert_eq!(setup.ndjson("emails.ndjson").len(), 1);
}
