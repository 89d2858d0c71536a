//! The page record, without I/O: keys, settling, dead letters.

use super::*;
use crate::plugin::contract::{Instant, Value, WebhookRequest};
use crate::state::DeadKind;

fn hook(n: u32) -> Action {
    Action::Webhook(WebhookRequest {
        target: "hook".into(),
        body: format!("{{\"n\":{n}}}"),
    })
}

fn event(identity: &str, id: &str, actions: Result<Vec<Action>, PluginError>) -> EventWork {
    EventWork {
        event: Event {
            id: id.into(),
            timestamp: Instant {
                seconds: 0,
                nanos: 0,
            },
            body: "{}".into(),
        },
        decision: actions.map(|a| ActionWork::keyed("p", identity, id, a)),
        envelope: format!("{{\"body\":\"{id}\"}}"),
        delivery: None,
    }
}

fn page(rows: Vec<Result<Vec<EventWork>, PluginError>>) -> PageWork {
    PageWork {
        last: Cursor::before(Timestamp(5)),
        version: "v".into(),
        columns: vec!["id".into()],
        rows: rows
            .into_iter()
            .enumerate()
            .map(|(i, result)| RowWork {
                row: Row {
                    identity: format!("r{}", i + 1),
                    cells: vec![Value::Integer(i as i64)],
                },
                result,
            })
            .collect(),
        read_at: std::time::Instant::now(),
        stamps: Vec::new(),
    }
}

#[test]
fn keys_depend_on_the_event_alone_and_never_collide() {
    // FNV-1a's published test vectors: the hash must never change.
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(action_key("p", "7", "a", 0), "p/7/af63dc4c8601ec8c/0");
    assert_ne!(
        action_key("p", "a/b", "c", 0),
        action_key("p", "a", "b/c", 0)
    );
    assert!(action_key("p", "a/b%", "c", 12).starts_with("p/a%2Fb%25/"));
    assert_ne!(action_key("p", "r", "e1", 0), action_key("p", "r", "e2", 0));
    // The second event's keys are the same whether the first decided
    // (two actions) or failed.
    let first_failed = ActionWork::keyed("p", "r", "e2", vec![hook(1)]);
    assert_eq!(first_failed[0].request.key, action_key("p", "r", "e2", 0));
}

#[test]
fn a_refused_event_keeps_its_actions_keyed_and_undecided_events_are_named() {
    let mut work = page(vec![
        Ok(vec![
            event("r1", "e1", Ok(vec![hook(1), hook(2)])),
            event("r1", "e2", Err(PluginError::Reject("no".into()))),
        ]),
        Err(PluginError::OutOfFuel { budget: 9 }),
        Ok(vec![event("r3", "e3", Ok(vec![hook(3)]))]),
    ]);
    let deliveries = [
        Delivery::Rejected {
            code: "http_400".into(),
            reason: "schema".into(),
        },
        Delivery::Delivered,
        Delivery::Delivered,
    ];
    for (e, d) in work.events_mut().zip(deliveries) {
        e.delivery = Some(d);
    }
    for a in work.deliverable_actions() {
        a.state = ActionState::Ran(ActionResult::Failed {
            outcome: "http_404".into(),
            reason: "gone".into(),
        });
    }
    let mut stats = Stats::default();
    let commit = work.settle(&mut stats).unwrap();
    let kinds: Vec<_> = commit
        .dead_letters
        .iter()
        .map(|d| (d.letter.kind(), d.identity.as_str(), d.code.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (DeadKind::Refused, "r1", "http_400"),
            (DeadKind::Undecided, "r1", "reject"),
            (DeadKind::Row, "r2", "out_of_fuel"),
            (DeadKind::Action, "r3", "http_404"),
        ]
    );
    let Letter::Refused(refused) = &commit.dead_letters[0].letter else {
        panic!()
    };
    let keys: Vec<_> = refused.actions.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            action_key("p", "r1", "e1", 0),
            action_key("p", "r1", "e1", 1)
        ]
    );
    assert_eq!(refused.envelope.get(), r#"{"body":"e1"}"#);
    assert_eq!(
        commit.actions.len(),
        1,
        "only the delivered event's action ran"
    );
    assert_eq!(
        (stats.rows, stats.events, stats.delivered, stats.rejected),
        (3, 3, 2, 1)
    );
    assert_eq!((stats.actions, stats.dead_letters), (1, 4));
    assert_eq!(commit.cursor, Some(Cursor::before(Timestamp(5))));
}

#[test]
fn an_unfinished_record_is_an_error_not_a_silent_skip() {
    let mut stats = Stats::default();
    let work = page(vec![Ok(vec![event("r1", "e1", Ok(vec![]))])]);
    assert!(work
        .settle(&mut stats)
        .unwrap_err()
        .to_string()
        .contains("never delivered"));
    let mut work = page(vec![Ok(vec![event("r1", "e1", Ok(vec![hook(1)]))])]);
    work.events_mut()
        .for_each(|e| e.delivery = Some(Delivery::Delivered));
    assert!(work
        .settle(&mut stats)
        .unwrap_err()
        .to_string()
        .contains("never run"));
}
