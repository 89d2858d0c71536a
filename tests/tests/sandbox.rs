//! A plugin that misbehaves on some rows: each such row fails with the right
//! typed error and lands in dead letters; the rows around it, in the same
//! batch, are delivered; the run goes on.

use freshet::plugin::{CallContext, Grants, Limits, PluginError, Runtime, Sandbox};
use freshet::state::DeadKind;
use freshet_tests::*;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

/// The hostile plugin, loaded (compiled once, then from the tests' cache).
fn hostile_plugin() -> freshet::plugin::Plugin {
    let runtime = Runtime::new(&freshet::plugin::EngineSettings {
        cache_dir: Some(plugins::COMPONENT_CACHE.into()),
        ..Default::default()
    })
    .unwrap();
    runtime
        .load(std::path::Path::new(plugins::HOSTILE_PLUGIN))
        .unwrap()
}

/// The hostile plugin in a sandbox of its own under `limits`.
fn hostile_sandbox(limits: Limits) -> Sandbox {
    Sandbox::new(
        hostile_plugin(),
        CallContext::new("t", "p", limits, Default::default(), Grants::default()),
    )
}

/// A batch of `n` rows whose `status` is `status` (the hostile plugin's cue).
fn statuses(status: &str, n: usize) -> freshet::plugin::contract::RowBatch {
    freshet::plugin::contract::RowBatch {
        columns: vec!["status".to_owned()],
        rows: (0..n)
            .map(|i| freshet::plugin::contract::Row {
                identity: format!("{i}@0"),
                cells: vec![freshet::plugin::contract::Value::Text(status.into())],
            })
            .collect(),
    }
}

/// Runs rows 1..=9 through the hostile plugin, row 5 behaving as `behaviour`;
/// returns the dead letter of row 5.
async fn one_bad_row(behaviour: &str, limits: &str) -> freshet::state::DeadLetter {
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::HOSTILE_PLUGIN);
    setup.pipeline.limits = limits.to_owned();
    let base = now_ms() - 60_000;
    let rows: Vec<Order> = (1..10)
        .map(|id| Order::new(id, if id == 5 { behaviour } else { "fine" }, base + id))
        .collect();
    setup.insert(&rows);
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!(stats.rows, 9);
    assert_eq!(
        stats.delivered, 8,
        "every other row of the batch was delivered"
    );
    assert_eq!(receiver.hooks().len(), 8, "and its action ran");
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].kind(), DeadKind::Row);
    assert!(dead[0].identity.starts_with("5@"));
    let listed = serde_json::to_value(&dead[0]).unwrap();
    assert_eq!(
        listed["row"]["cells"]["status"], behaviour,
        "the row is kept for replay"
    );
    dead[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_runs_out_of_fuel() {
    let dead = one_bad_row("loop", "fuel_per_row = 5_000_000\nfuel_per_input_byte = 0").await;
    assert_eq!(dead.code, "out_of_fuel");
    assert!(dead.reason.contains("5000000"), "{}", dead.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_with_fuel_to_spare_hits_the_deadline() {
    let dead = one_bad_row("loop", "fuel_per_row = 10_000_000_000\ntimeout_ms = 200").await;
    assert_eq!(dead.code, "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_hits_the_memory_cap() {
    let dead = one_bad_row("alloc", "memory_mib = 16\nfuel_per_row = 1_000_000_000").await;
    assert_eq!(dead.code, "memory_exceeded");
    assert!(
        dead.reason.contains(&(16u64 << 20).to_string()),
        "{}",
        dead.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_trap() {
    let dead = one_bad_row("trap", "").await;
    assert_eq!(dead.code, "trap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_is_a_trap() {
    let dead = one_bad_row("recurse", "").await;
    assert_eq!(dead.code, "trap");
    assert!(dead.reason.contains("stack"), "{}", dead.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_row_is_dead_lettered_with_the_plugins_reason() {
    let dead = one_bad_row("reject", "").await;
    assert_eq!(dead.code, "reject");
    assert!(
        dead.reason.contains("rejected on purpose"),
        "{}",
        dead.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_over_the_limit_is_refused() {
    let dead = one_bad_row("huge", "output_bytes_per_row = 1_048_576").await;
    assert_eq!(dead.code, "output_too_large");
}

/// The typed errors, straight from the runtime (what `freshet plugin test` shows).
#[test]
fn the_runtime_reports_each_breach_as_its_own_error() {
    let plugin = hostile_plugin();
    assert!(
        plugin.uses_wasi(),
        "a Rust std guest imports WASI and still links"
    );
    let ctx =
        |limits: Limits| CallContext::new("t", "t", limits, Default::default(), Default::default());
    let row = |status: &str| freshet::plugin::contract::Row {
        identity: "1@0".into(),
        cells: vec![freshet::plugin::contract::Value::Text(status.into())],
    };
    let columns = vec!["status".to_owned()];
    let probe = |status: &str, limits: Limits| {
        Sandbox::new(plugin.clone(), ctx(limits)).probe(&columns, &row(status))
    };

    let (ok, usage) = probe("fine", Limits::default());
    let (events, actions) = ok.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(actions.len(), 1);
    assert!(
        usage.fuel > 0 && usage.fuel < Limits::default().fuel_per_row,
        "{usage:?}"
    );
    assert!(usage.peak_memory > 0, "{usage:?}");

    let small_fuel = Limits {
        fuel_per_row: 100_000,
        fuel_per_input_byte: 0,
        ..Limits::default()
    };
    assert_eq!(
        probe("loop", small_fuel.clone()).0.unwrap_err(),
        PluginError::OutOfFuel { budget: 100_000 }
    );
    // The budget grows with the input: "1@0" and "loop" are 7 bytes.
    let per_byte = Limits {
        fuel_per_input_byte: 1_000,
        ..small_fuel
    };
    assert_eq!(
        probe("loop", per_byte).0.unwrap_err(),
        PluginError::OutOfFuel { budget: 107_000 }
    );
    let memory = Limits {
        memory_mib: 8,
        ..Limits::default()
    };
    assert!(
        matches!(probe("alloc", memory).0.unwrap_err(), PluginError::MemoryExceeded { cap, .. } if cap == 8 << 20)
    );
    assert!(matches!(
        probe("trap", Limits::default()).0.unwrap_err(),
        PluginError::Trap(_)
    ));
    assert!(matches!(
        probe("internal", Limits::default()).0.unwrap_err(),
        PluginError::Guest(_)
    ));
}

/// Runs each job on a thread of its own, and holds it until every job the
/// calls handed out has started (or two seconds pass): the jobs overlap.
struct Together {
    expected: usize,
    started: Arc<AtomicUsize>,
}

impl freshet::plugin::calls::Runner for Together {
    fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> impl std::future::Future<Output = R> + Send {
        let (started, expected) = (self.started.clone(), self.expected);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            started.fetch_add(1, SeqCst);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while started.load(SeqCst) < expected && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            let _ = tx.send(job());
        });
        async move { rx.await.expect("the job's thread answers") }
    }
}

/// A pipeline's `instances`: its batches are shared out, in order, among
/// that many calls at once, each on its own warm instance, and the answers
/// are those of one instance, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_instances_map_a_page_at_once_and_answer_in_order() {
    use freshet::plugin::calls::MAP_ROWS;
    use freshet::plugin::contract::{Row, RowBatch, Value};
    let plugin = hostile_plugin();
    let columns = vec!["status".to_owned()];
    // Batches long enough (milliseconds) that calls started together overlap.
    const ROWS: usize = 10_000;
    let batches: Vec<Arc<RowBatch>> = (0..6)
        .map(|b| {
            let rows = (0..ROWS)
                .map(|r| Row {
                    identity: format!("{}@0", b * ROWS + r),
                    cells: vec![Value::Text(if r == 3 { "reject" } else { "fine" }.into())],
                })
                .collect();
            Arc::new(RowBatch {
                columns: columns.clone(),
                rows,
            })
        })
        .collect();
    let context = |instances| CallContext {
        instances,
        ..CallContext::new(
            "t",
            "p",
            Limits::default(),
            Default::default(),
            Grants::default(),
        )
    };
    let one = Sandbox::new(plugin.clone(), context(1));
    let expected: Vec<_> = batches.iter().flat_map(|b| one.map_rows(b)).collect();

    let three = Sandbox::new(plugin, context(3));
    let runner = Together {
        expected: 3,
        started: Arc::default(),
    };
    let never = tokio_util::sync::CancellationToken::new();
    let got = MAP_ROWS
        .call(&three.session(), &batches, &runner, &never)
        .await
        .unwrap();
    assert_eq!(got.len(), 6 * ROWS);
    assert_eq!(got, expected, "the same answers, in the same order");
    assert!(
        matches!(got[3], Err(PluginError::Reject(_))),
        "{:?}",
        got[3]
    );
    assert_eq!(runner.started.load(SeqCst), 3, "three calls of two batches");
    assert_eq!(
        three.warm_instances(),
        3,
        "each on its own instance, kept warm"
    );
    three.release();
    assert_eq!(three.warm_instances(), 0);
}

/// An event left without an `_id` gets the host's, from the row's identity
/// and the event's index: the same on every call, in a pipeline's calls and
/// in `plugin test`'s alike.
#[test]
fn events_without_an_id_get_one_derived_from_the_row() {
    use freshet::plugin::contract::{Row, RowBatch, Value};
    let sandbox = hostile_sandbox(Limits::default());
    let row = Row {
        identity: "9@5".into(),
        cells: vec![Value::Text("no-ids".into())],
    };
    let columns = vec!["status".to_owned()];
    let batch = RowBatch {
        columns: columns.clone(),
        rows: vec![row.clone()],
    };
    let expected = [
        freshet::plugin::derived_id("9@5", 0),
        freshet::plugin::derived_id("9@5", 1),
    ];
    let ids = |decided: Vec<freshet::plugin::Outcome<freshet::plugin::Decided>>| -> Vec<String> {
        let row = decided.into_iter().next().unwrap().unwrap();
        row.into_iter().map(|d| d.event.id).collect()
    };
    assert_eq!(ids(sandbox.process(&batch)), expected);
    assert_eq!(ids(sandbox.process(&batch)), expected, "the same again");
    let (events, _) = sandbox.probe(&columns, &row).0.unwrap();
    let probed: Vec<String> = events.into_iter().map(|e| e.id).collect();
    assert_eq!(probed, expected);
}

/// An instance whose memory grew by more than its start size and 16 MiB
/// during a call is not kept warm: the next call gets a fresh one (small
/// again), and every call is answered. One that grew less is kept.
#[test]
fn an_instance_that_grew_is_retired_after_its_call() {
    let sandbox = hostile_sandbox(Limits {
        memory_mib: 64,
        // Zeroing 24 MiB takes more than a row's default fuel.
        fuel_per_row: 1_000_000_000,
        ..Limits::default()
    });
    let batch = |status: &str| statuses(status, 1);
    let delivered = |outcomes: Vec<freshet::plugin::Outcome<freshet::plugin::contract::Event>>| {
        outcomes
            .into_iter()
            .next()
            .unwrap()
            .expect("the row maps")
            .len()
    };
    assert_eq!(delivered(sandbox.map_rows(&batch("fine"))), 1);
    assert_eq!(
        sandbox.warm_instances(),
        1,
        "a call that kept its size keeps its instance"
    );
    // Four 24 MiB leaks would outgrow the 64 MiB cap in one instance; each
    // call retires its instance instead, so each is answered in full.
    for call in 0..4 {
        assert_eq!(
            delivered(sandbox.map_rows(&batch("leak"))),
            1,
            "call {call}"
        );
        assert_eq!(
            sandbox.warm_instances(),
            0,
            "call {call}: the grown instance was kept"
        );
    }
    assert_eq!(delivered(sandbox.map_rows(&batch("fine"))), 1);
    assert_eq!(sandbox.warm_instances(), 1);
}

/// The benchmarks' breakdown of a warm batch call: the guest's time is
/// measured for either contract, and a call the sandbox stops is an error,
/// not a timing.
#[test]
fn a_warm_batch_call_is_timed_on_each_side_of_the_boundary() {
    let sandbox = hostile_sandbox(Limits::default());
    let batch = |status: &str| statuses(status, 50);
    let timing = sandbox
        .session()
        .time_batch(&batch("chatty"))
        .expect("timed");
    assert!(timing.guest > std::time::Duration::ZERO, "{timing:?}");
    assert!(
        timing.host > std::time::Duration::ZERO,
        "logging is host time: {timing:?}"
    );
    let stopped = sandbox.session().time_batch(&batch("trap")).unwrap_err();
    assert_eq!(stopped.code(), "trap", "{stopped}");
}

/// A plugin built with Rust's std imports WASI; it links, and every ambient
/// capability it reaches for is denied: no file, no directory, no
/// environment, no socket (even to a port that is listening), a clock
/// stopped at the epoch and the same "random" bytes on every call.
#[test]
fn a_wasi_plugin_gets_no_ambient_authority() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let plugin = hostile_plugin();
    let settings = [("probe_port".to_owned(), port)].into();
    let sandbox = Sandbox::new(
        plugin.clone(),
        CallContext::new("t", "t", Limits::default(), settings, Grants::default()),
    );
    let row = freshet::plugin::contract::Row {
        identity: "1@0".into(),
        cells: vec![freshet::plugin::contract::Value::Text("probe".into())],
    };
    let columns = vec!["status".to_owned()];
    let observe = || {
        let (result, _) = sandbox.probe(&columns, &row);
        let (events, _) = result.expect("the probe maps");
        serde_json::from_str::<serde_json::Value>(&events[0].body).expect("the probe's report")
    };
    let seen = observe();
    for capability in ["file", "dir", "socket"] {
        let outcome = seen[capability].as_str().unwrap();
        assert!(outcome.starts_with("denied"), "{capability}: {outcome}");
    }
    assert_eq!(seen["env"], "0 variables");
    assert_eq!(seen["clock_secs"], 0, "the clock is stopped at the epoch");
    assert_eq!(
        observe()["random"],
        seen["random"],
        "randomness is a fixed stream"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing connected to the listening port"
    );
}

/// With `[pipelines.NAME.grants]`, the operator can give one pipeline the
/// real clock and randomness; files, environment and sockets stay denied.
#[test]
fn granted_clock_and_randomness_are_real() {
    let plugin = hostile_plugin();
    let grants = Grants {
        clock: true,
        random: true,
    };
    let sandbox = Sandbox::new(
        plugin,
        CallContext::new("t", "t", Limits::default(), Default::default(), grants),
    );
    let row = freshet::plugin::contract::Row {
        identity: "1@0".into(),
        cells: vec![freshet::plugin::contract::Value::Text("probe".into())],
    };
    let observe = || {
        let (events, _) = sandbox.probe(&["status".to_owned()], &row).0.unwrap();
        serde_json::from_str::<serde_json::Value>(&events[0].body).unwrap()
    };
    let seen = observe();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock = seen["clock_secs"].as_u64().unwrap();
    assert!(now.abs_diff(clock) < 5, "clock {clock}, now {now}");
    assert_ne!(
        observe()["random"],
        seen["random"],
        "real randomness differs"
    );
    assert_eq!(seen["env"], "0 variables");
    assert!(seen["file"].as_str().unwrap().starts_with("denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_stopped_with_its_own_error() {
    let dead = one_bad_row("log-flood", "log_bytes_per_row = 4096").await;
    assert_eq!(dead.code, "log_exceeded");
    assert!(dead.reason.contains("4096"), "{}", dead.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_the_input_limit_never_reaches_the_plugin() {
    let big = "x".repeat(8_000);
    let dead = one_bad_row(&big, "input_bytes_per_row = 4096").await;
    assert_eq!(dead.code, "input_too_large");
    assert!(dead.reason.contains("4096"), "{}", dead.reason);
}

/// Lines over `log_lines_per_second` are dropped and counted, not failed.
#[test]
fn plugin_log_lines_over_the_rate_are_dropped_and_counted() {
    let plugin = hostile_plugin();
    let limits = Limits {
        log_lines_per_second: 5,
        ..Limits::default()
    };
    let ctx = CallContext::new("t", "t", limits, Default::default(), Grants::default());
    let logs = ctx.logs.clone();
    let sandbox = Sandbox::new(plugin, ctx);
    let batch = freshet::plugin::contract::RowBatch {
        columns: vec!["status".into()],
        rows: (0..10)
            .map(|i| freshet::plugin::contract::Row {
                identity: format!("{i}@0"),
                cells: vec![freshet::plugin::contract::Value::Text("chatty".into())],
            })
            .collect(),
    };
    // The host logs plugin lines at `info` (where `chatty` writes).
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    let outcomes = tracing::subscriber::with_default(subscriber, || sandbox.map_rows(&batch));
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    // 100 lines in well under a second: the burst of 5 got through.
    assert_eq!(logs.dropped(), 95);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_aeps_one_megabyte_is_dead_lettered_not_sent() {
    // Let out of the sandbox, refused before AEP: a request holds 1 MB.
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::HOSTILE_PLUGIN);
    setup.pipeline.limits = "output_bytes_per_row = 8_388_608".into();
    let base = now_ms() - 60_000;
    setup.insert(&[Order::new(1, "fine", base), Order::new(2, "huge", base + 1)]);
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!((stats.delivered, stats.rejected), (1, 1), "{stats:?}");
    let dead = setup.dead_letters();
    assert_eq!(
        (dead[0].kind(), dead[0].code.as_str()),
        (DeadKind::Refused, "too_large")
    );
    assert!(
        dead[0].reason.contains("at most 1000000 bytes per request"),
        "{}",
        dead[0].reason
    );
    assert_eq!(receiver.hooks().len(), 1, "its action waits with it");
    let listed = serde_json::to_value(&dead[0]).unwrap();
    assert_eq!(
        listed["actions"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
}

/// Bug: keys counted actions across a row's events, so when an earlier
/// event that had failed to decide decided on a later run, the keys of the
/// actions after it moved and the ledger ran them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actions_key_stays_put_when_a_neighbour_decides_on_a_later_run() {
    use freshet::source::{Cursor, Timestamp};
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::HOSTILE_PLUGIN);
    setup.insert(&[Order::new(1, "pair", now_ms() - 60_000)]);
    // Event `a` runs out of fuel deciding; event `b` decides and its
    // webhook runs.
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!((stats.events, stats.actions), (2, 1), "{stats:?}");
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0].kind(), dead[0].code.as_str()),
        (DeadKind::Undecided, "out_of_fuel")
    );
    let first = receiver.hooks();
    assert_eq!(first.len(), 1);

    // The operator raises the budget and has the row read again.
    setup.pipeline.limits = "fuel_per_row = 1_000_000_000".into();
    let start = Cursor::before(Timestamp(0));
    setup.state().reset_offset("orders", Some(&start)).unwrap();
    let stats = setup.run_once(&receiver).await.unwrap();
    assert_eq!((stats.actions, stats.actions_skipped), (1, 1), "{stats:?}");
    let hooks = receiver.hooks();
    assert_eq!(
        hooks.len(),
        2,
        "only `a`'s webhook is new: `b`'s kept its key"
    );
    let keys: Vec<_> = hooks
        .iter()
        .map(|h| h.idempotency_key.clone().unwrap())
        .collect();
    assert_ne!(keys[0], keys[1]);
    // The first call was `b`'s, under the key of `b`'s `_id` and index 0.
    let b_id = first[0].body["id"].as_str().unwrap();
    let identity = b_id.strip_suffix("#b").expect("event b's _id");
    assert_eq!(
        keys[0],
        freshet::pipeline::action_key("orders", identity, b_id, 0)
    );
}
