//! Hosts sharing pipelines through PostgreSQL: the state store itself
//! (the same behaviour as SQLite's, the fence), then real `freshet run`
//! processes on one real PostgreSQL server — balance, a host killed, a host
//! paused past its lease, the database restarted, a host joining.

use freshet::source::{Cursor, Key, Timestamp};
use freshet::state::postgres::PostgresState;
use freshet::state::sqlite::SqliteState;
use freshet::state::{
    raw_json, ActionOutcome, Commit, Fence, Finished, Letter, NewDeadLetter, PluginVersion,
    RowLetter, Settled, StateError, StateStore,
};
use freshet_tests::postgres::{query, Postgres};

fn outcome(key: &str, outcome: &str, done: bool) -> ActionOutcome {
    ActionOutcome {
        key: key.into(),
        outcome: outcome.into(),
        done,
    }
}

fn row_letter(identity: &str) -> NewDeadLetter {
    NewDeadLetter {
        identity: identity.into(),
        code: "bad_row".into(),
        reason: format!("{identity} is malformed"),
        letter: Letter::Row(RowLetter {
            row: raw_json(&format!(r#"{{"identity":"{identity}"}}"#)),
        }),
    }
}

/// What every state store must do alike: offsets, the ledger, dead
/// letters, plugin versions.
fn exercise(store: &dyn StateStore) {
    // Offsets: the first initial one sticks; reset moves and forgets.
    let first = Cursor::before(Timestamp(1_000));
    assert_eq!(store.offset("p").unwrap(), None);
    assert_eq!(store.init_offset("p", &first).unwrap(), first);
    let later = Cursor::before(Timestamp(2_000));
    assert_eq!(store.init_offset("p", &later).unwrap(), first);
    let keyed = Cursor::after(Timestamp(3_000), Key::Text("k-7".into()));
    store.reset_offset("p", Some(&keyed)).unwrap();
    assert_eq!(store.offset("p").unwrap(), Some(keyed.clone()));
    store.reset_offset("q", Some(&first)).unwrap();
    store.reset_offset("q", None).unwrap();
    assert_eq!(store.offset("q").unwrap(), None);

    // The ledger: new keys start, a commit finishes or fails them, and a
    // page read again skips what finished.
    let keys: Vec<String> = (0..1_200).map(|i| format!("p/r{i:05}/0")).collect();
    assert!(store.start_actions("p", &keys, false).unwrap().is_empty());
    let mut actions: Vec<_> = keys.iter().map(|k| outcome(k, "recorded", true)).collect();
    actions[1] = outcome(&keys[1], "http_500", false);
    actions.push(outcome("p/unmarked/0", "http_200", true));
    let cursor = Cursor::after(Timestamp(4_000), Key::Int(42));
    store
        .commit(
            "p",
            &Commit {
                cursor: Some(cursor.clone()),
                actions,
                dead_letters: vec![row_letter("a@1"), row_letter("b@2")],
                fence: None,
            },
        )
        .unwrap();
    assert_eq!(store.offset("p").unwrap(), Some(cursor.clone()));
    let fresh = "p/fresh/0".to_string();
    let again = [keys[0].clone(), keys[1].clone(), fresh.clone()];
    let finished = store.start_actions("p", &again, false).unwrap();
    assert_eq!(finished.len(), 2, "{finished:?}");
    assert_eq!(finished[&keys[0]], Finished::Done);
    assert_eq!(finished[&keys[1]], Finished::Failed);
    // `dlq replay` runs the failed one again; never the done one.
    let finished = store.start_actions("p", &again, true).unwrap();
    assert_eq!(finished.len(), 1, "{finished:?}");
    let all = store
        .finished_actions(&[keys[0].clone(), "p/unmarked/0".into(), fresh])
        .unwrap();
    assert_eq!(all.len(), 2, "{all:?}");

    // Dead letters, oldest first; settling one removes or updates it.
    let letters = store.dead_letters(Some("p")).unwrap();
    let identities: Vec<&str> = letters.iter().map(|l| l.identity.as_str()).collect();
    assert_eq!(identities, ["a@1", "b@2"]);
    assert!(store.dead_letters(Some("other")).unwrap().is_empty());
    store
        .settle_dead_letter(
            "p",
            letters[0].id,
            &Settled::Failed {
                code: "still_bad".into(),
                reason: "again".into(),
            },
        )
        .unwrap();
    store
        .settle_dead_letter("p", letters[1].id, &Settled::Done(Commit::default()))
        .unwrap();
    let left = store.dead_letters(None).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].code, "still_bad");
    assert_eq!(left[0].letter, letters[0].letter);

    // Plugin versions and each pipeline's stack of switches.
    let version = PluginVersion {
        tenant: "acme".into(),
        digest: "ab".repeat(32),
        size: 1234,
        contract: "0.2".into(),
        uploaded_ms: 5,
    };
    store.add_plugin_version(&version).unwrap();
    store.add_plugin_version(&version).unwrap();
    assert_eq!(store.plugin_versions("acme").unwrap(), vec![version.clone()]);
    store.pin_plugin("p", Some(&version.digest)).unwrap();
    store.pin_plugin("p", None).unwrap();
    let pins = store.plugin_pins("p").unwrap();
    assert_eq!(pins.len(), 2);
    assert_eq!(pins[0].digest, None);
    store.pop_plugin_pin("p").unwrap();
    assert_eq!(
        store.plugin_pins("p").unwrap()[0].digest.as_deref(),
        Some(&*version.digest)
    );
    store.check().unwrap();
}

#[test]
fn the_sqlite_store_keeps_state_as_every_store_must() {
    let dir = tempfile::tempdir().unwrap();
    exercise(&SqliteState::open(&dir.path().join("state.db")).unwrap());
}

#[test]
fn the_postgres_store_keeps_state_as_the_sqlite_one_does() {
    let url = Postgres::get().database("store");
    let store = PostgresState::connect(&url).unwrap();
    exercise(&store);
    // A second host's connection finds the schema there and migrates
    // nothing; the offsets are the same rows.
    let other = PostgresState::connect(&url).unwrap();
    assert_eq!(
        other.offset("p").unwrap(),
        Some(Cursor::after(Timestamp(4_000), Key::Int(42)))
    );
    assert_eq!(query(&url, "SELECT max(version) FROM freshet.migrations"), [["1"]]);
}

#[tokio::test]
async fn a_commit_under_a_lost_lease_is_refused_and_changes_nothing() {
    let url = Postgres::get().database("fence");
    let store = PostgresState::connect(&url).unwrap();
    let ttl = std::time::Duration::from_millis(300);
    let pipelines = vec!["p".to_string()];
    store.add_pipelines(&pipelines).await.unwrap();
    let a = store.claim("host-a", &pipelines, 10, ttl).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].epoch, 1);
    // Held: nobody else can claim it.
    assert!(store.claim("host-b", &pipelines, 10, ttl).await.unwrap().is_empty());
    let fence_a = Fence {
        owner: "host-a".into(),
        epoch: 1,
    };
    let page = |ts: i64, fence: &Fence| Commit {
        cursor: Some(Cursor::before(Timestamp(ts))),
        actions: vec![outcome(&format!("p/{ts}/0"), "recorded", true)],
        dead_letters: vec![row_letter(&format!("x@{ts}"))],
        fence: Some(fence.clone()),
    };
    store.commit("p", &page(10, &fence_a)).unwrap();
    // Host A stalls past its lease; host B claims the pipeline.
    std::thread::sleep(ttl * 2);
    let b = store.claim("host-b", &pipelines, 10, ttl).await.unwrap();
    assert_eq!(b[0].epoch, 2);
    let refused = store.commit("p", &page(20, &fence_a)).unwrap_err();
    assert!(
        matches!(&refused, StateError::Fenced { epoch: 1, now, .. } if now == "host-b at epoch 2"),
        "{refused}"
    );
    // Nothing of A's late page landed: the offset, ledger and dead letters
    // are as A's last good commit left them.
    assert_eq!(store.offset("p").unwrap(), Some(Cursor::before(Timestamp(10))));
    assert!(store.finished_actions(&["p/20/0".into()]).unwrap().is_empty());
    assert_eq!(store.dead_letters(None).unwrap().len(), 1);
    // A cannot give back what it lost, nor renew it; B can commit.
    assert!(!store.release("host-a", &a[0]).await.unwrap());
    assert!(store.renew("host-a", &pipelines, ttl).await.unwrap().is_empty());
    let fence_b = Fence {
        owner: "host-b".into(),
        epoch: 2,
    };
    store.commit("p", &page(30, &fence_b)).unwrap();
    // The history shows one claim ending where the next began.
    let history = query(
        &url,
        "SELECT epoch, owner, ended FROM freshet.lease_history ORDER BY epoch",
    );
    assert_eq!(history, [["1", "host-a", "expired"], ["2", "host-b", ""]]);
    // Given back, it is free at once, and the next claim is epoch 3.
    assert!(store.release("host-b", &b[0]).await.unwrap());
    let a2 = store.claim("host-a", &pipelines, 10, ttl).await.unwrap();
    assert_eq!(a2[0].epoch, 3);
}
