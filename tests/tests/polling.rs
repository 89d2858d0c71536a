//! Polling that is quick when rows flow and cheap when they don't: a full
//! page is followed at once, an empty poll waits the interval, and shutdown
//! finishes and commits what is in flight.

use freshet_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pages_are_read_back_to_back_without_waiting_the_interval() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.pipeline.page_size = 100;
    setup.pipeline.poll_interval_ms = 60_000;
    let base = now_ms() - 60_000;
    setup.insert(
        &(1..1001)
            .map(|id| Order::new(id, "pending", base + id))
            .collect::<Vec<_>>(),
    );
    let running = Running::start(setup.config(&receiver));
    // Ten pages; waiting the interval after any full one would take minutes.
    let drained = wait_for_messages(&receiver, 1000, Duration::from_secs(30)).await;
    let stats = running.stop().await;
    assert!(
        drained,
        "only {} of 1000 rows arrived",
        receiver.message_count()
    );
    assert_eq!(stats.pages, 10);
    assert_eq!(
        stats.polls, 11,
        "ten full pages, then one empty poll: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_table_is_polled_at_the_interval_not_in_a_loop() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.pipeline.poll_interval_ms = 200;
    let running = Running::start(setup.config(&receiver));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // A row arriving while idle is picked up by the next poll.
    setup.insert(&[Order::new(1, "pending", now_ms())]);
    assert!(wait_for_messages(&receiver, 1, Duration::from_secs(5)).await);
    let stats = running.stop().await;
    assert!(
        (3..=12).contains(&stats.polls),
        "about one poll per 200 ms: {stats:?}"
    );
    assert_eq!(stats.rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_every_page_it_delivered() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.pipeline.page_size = 50;
    let base = now_ms() - 60_000;
    setup.insert(
        &(1..2001)
            .map(|id| Order::new(id, "confirmed", base + id))
            .collect::<Vec<_>>(),
    );
    let running = Running::start(setup.config(&receiver));
    assert!(wait_for_messages(&receiver, 1, Duration::from_secs(10)).await);
    let stats = running.stop().await;

    // What reached AEP was committed, with its actions: nothing is left
    // half-done for the next start to redo.
    let delivered = received_order_ids(&receiver);
    assert!(
        !delivered.is_empty() && delivered.len() < 2000,
        "stopped part-way: {}",
        delivered.len()
    );
    assert_eq!(stats.delivered, delivered.len() as u64);
    assert_eq!(
        receiver.hooks().len(),
        delivered.len(),
        "every delivered order's webhook fired"
    );
    let offset = setup.state().offset("orders").unwrap().expect("an offset");
    assert_eq!(
        offset.key,
        Some(freshet::source::Key::Int(*delivered.iter().max().unwrap()))
    );
}
