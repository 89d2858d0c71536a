//! `kill -9` at random points of a 10,000-row run, ten times, restarting
//! each time: every event reaches AEP at least once and every action happens
//! once as the receivers see it, except in the one window the design names
//! (a crash after an action's call and before its page's commit), which this
//! test measures and reports. Every such repeat carries the same
//! `Idempotency-Key` as the first call, so a receiver can drop it.

use freshet_tests::*;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

const ROWS: i64 = 10_000;
const KILLS: usize = 10;

/// Where a run keeps its state.
#[derive(Clone, Copy)]
enum Store {
    Sqlite,
    /// With a one-second lease: a killed host's successor claims the
    /// pipeline a second after the kill.
    Postgres,
}

/// `rows` sample orders in pages of 200, and a config file delivering them
/// to `receiver`, with state in `store`.
fn sample_orders(receiver: &Receiver, rows: i64, store: Store) -> (Setup, std::path::PathBuf) {
    let mut setup = match store {
        Store::Sqlite => Setup::new(plugins::ORDERS_PLUGIN),
        Store::Postgres => Setup::new(plugins::ORDERS_PLUGIN).with_postgres_state(1_000),
    };
    setup.pipeline.page_size = 200;
    let base = now_ms() - 3_600_000;
    setup.insert(
        &(1..=rows)
            .map(|id| Order::new(id, freshet::bench::sample::status_of(id as u64), base + id))
            .collect::<Vec<_>>(),
    );
    let config = setup.path("freshet.toml");
    std::fs::write(&config, setup.config_text(receiver)).unwrap();
    (setup, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kill_9s_lose_nothing_and_repeat_only_inside_the_named_window() {
    ten_kills(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kill_9s_with_the_postgres_store_lose_nothing_and_repeat_only_inside_the_window() {
    ten_kills(Store::Postgres).await;
}

async fn ten_kills(store: Store) {
    let receiver = Receiver::start(true).await.unwrap();
    let (setup, config) = sample_orders(&receiver, ROWS, store);

    // Kill when AEP has seen a pseudo-random number more messages, or (every
    // other time) the webhook receiver more calls: in the middle of a page's
    // actions, where the window is. A fixed seed: the same points every run.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut kills = 0;
    while kills < KILLS {
        let mut child = freshet()
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let on_hooks = kills % 2 == 1;
        let seen = |r: &Receiver| {
            if on_hooks {
                r.hooks().len() as u64
            } else {
                r.message_count()
            }
        };
        let target = seen(&receiver) + 100 + seed % 500;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen(&receiver) < target
            && receiver.message_count() < ROWS as u64
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if receiver.message_count() >= ROWS as u64 {
            break;
        }
    }
    assert_eq!(kills, KILLS, "the run ended before ten kills");

    // A last, clean run drains the rest.
    succeed(freshet().args(["run", "--once", "--config"]).arg(&config));

    // Events: at least once each (AEP dedupes by the deterministic `_id`).
    let mut delivered = received_order_ids(&receiver);
    let sent = delivered.len();
    delivered.sort_unstable();
    delivered.dedup();
    assert_eq!(delivered, (1..=ROWS).collect::<Vec<_>>());
    println!(
        "kill -9 x{kills}: {sent} events sent for {ROWS} rows ({} resent after a kill, same _id)",
        sent - delivered.len()
    );

    // Actions: one webhook per confirmed order, repeats only of calls made
    // before a kill and not yet committed, with the first call's key.
    let mut calls: HashMap<String, usize> = HashMap::new();
    for hook in receiver.hooks() {
        *calls
            .entry(hook.idempotency_key.expect("every call has a key"))
            .or_default() += 1;
    }
    let confirmed = (1..=ROWS)
        .filter(|id| freshet::bench::sample::status_of(*id as u64) == "confirmed")
        .count();
    assert_eq!(
        calls.len(),
        confirmed,
        "every confirmed order's webhook, once per key"
    );
    let repeated: usize = calls.values().map(|n| n - 1).sum();
    println!(
        "kill -9 x{kills}: {} webhook calls for {confirmed} actions; {repeated} repeated inside the window ({:.2} %), each with its first call's Idempotency-Key",
        calls.values().sum::<usize>(),
        100.0 * repeated as f64 / confirmed as f64
    );
    // At most the actions in flight at each kill: a page's worth.
    assert!(repeated <= kills * 200, "{repeated} repeats");
    // And the ledger agrees: nothing left started-but-unfinished.
    let state = setup.state();
    let keys: Vec<String> = calls.keys().cloned().collect();
    assert_eq!(state.finished_actions(&keys).unwrap().len(), confirmed);
}

/// SIGTERM — what systemd, Docker and Kubernetes send to stop a service —
/// finishes and commits the pages in flight exactly as Ctrl-C does: the
/// process exits 0, and a restart sends no event and runs no action twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_and_commits_the_pages_in_flight() {
    sigterm(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_postgres_store_commits_the_pages_in_flight_and_gives_the_lease_back() {
    sigterm(Store::Postgres).await;
}

async fn sigterm(store: Store) {
    const ROWS: i64 = 3_000;
    let receiver = Receiver::start(true).await.unwrap();
    // Kept alive: it owns the folder the table and config live in.
    let (setup, config) = sample_orders(&receiver, ROWS, store);
    let mut child = freshet()
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.message_count() < 400 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "freshet did not stop within 60 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "a clean exit, not death by signal: {status:?}"
    );
    if let Store::Postgres = store {
        // Given back at exit, not left to run out: the next host (the
        // restart below) claims it at once.
        let leases = setup.state().leases().unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].owner, None, "{leases:?}");
    }
    let stopped_at = receiver.message_count();
    assert!(
        stopped_at < ROWS as u64,
        "stopped mid-run ({stopped_at} events)"
    );

    // A restart drains the rest: nothing committed before is sent again.
    succeed(freshet().args(["run", "--once", "--config"]).arg(&config));
    assert_exactly_once(received_order_ids(&receiver), 1..=ROWS);
    let mut keys: Vec<String> = receiver
        .hooks()
        .into_iter()
        .map(|h| h.idempotency_key.expect("every call has a key"))
        .collect();
    let calls = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), calls, "no webhook ran twice");
}
