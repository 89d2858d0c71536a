//! Many tenants in one host: a hostile tenant's plugin is contained while
//! another tenant's pipeline delivers every row; a plugin file replaced
//! mid-run takes over without losing a row, and each event names the
//! version that produced it.

use freshet::config::Config;
use freshet::{RunOptions, Stats};
use freshet_tests::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The variable `Setup`'s webhook target reads its header from.
const HOOK_KEY: &str = "FRESHET_TEST_HOOK_KEY";

/// What each hostile row does, and the dead letter code it must end with.
const HOSTILE: &[(&str, &str)] = &[
    ("loop", "out_of_fuel"),
    ("alloc", "memory_exceeded"),
    ("trap", "trap"),
    ("recurse", "trap"),
    ("huge", "output_too_large"),
    ("log-flood", "log_exceeded"),
    ("reject", "reject"),
    ("internal", "guest_error"),
];

/// Two tenants' pipelines in one file: `shop` (tenant `good`) and `evil`
/// (tenant `evil`), each over its own table, one state store.
fn two_tenants(good: &Setup, evil: &Setup, receiver: &Receiver) -> Config {
    let text = format!(
        "{}[tenants.good]\nsecrets = [\"{HOOK_KEY}\"]\n[tenants.evil]\nsecrets = [\"{HOOK_KEY}\"]\n\n{}{}",
        good.pipeline.render_head(),
        good.pipeline_text(receiver),
        evil.pipeline_text(receiver),
    );
    let config = freshet::config::parse(&text).expect("parses");
    assert_eq!(config.validate(), vec![], "{text}");
    config
}

/// Why running `config` once failed (it must fail).
async fn run_error(config: &Config) -> String {
    freshet::run(
        config,
        CancellationToken::new(),
        RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err()
    .to_string()
}

fn tenant_setup(plugin: &str, name: &str, tenant: &str) -> Setup {
    let mut setup = Setup::new(plugin);
    setup.pipeline.name = name.into();
    setup.pipeline.tenant = Some(tenant.into());
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_is_contained_and_the_other_delivers_every_row() {
    let receiver = Receiver::start(true).await.unwrap();
    let good = tenant_setup(plugins::ORDERS_PLUGIN, "shop", "good");
    let mut evil = tenant_setup(plugins::HOSTILE_PLUGIN, "evil", "evil");
    // A generous deadline: the evil pipeline is soon demoted to the idle
    // class, where a busy machine can hold a call for seconds of wall time,
    // and each hostile row must fail by its own breach, not the clock.
    evil.pipeline.limits =
        "fuel_per_row = 100_000_000\nmemory_mib = 24\nlog_bytes_per_row = 4096\ntimeout_ms = 10_000"
            .into();
    let base = now_ms() - 60_000;
    let orders: Vec<Order> = (1..=300)
        .map(|id| Order::new(id, "confirmed", base + id))
        .collect();
    good.insert(&orders);
    // Hostile rows between harmless ones, twice over.
    let mut rows = Vec::new();
    for round in 0..2 {
        for (i, (behaviour, _)) in HOSTILE.iter().enumerate() {
            let id = 1000 + round * 100 + 2 * i as i64;
            rows.push(Order::new(id, behaviour, base + id));
            rows.push(Order::new(id + 1, "fine", base + id + 1));
        }
    }
    rows.push(Order::new(2000, "probe", base + 2000));
    evil.insert(&rows);

    let results = freshet::run(
        &two_tenants(&good, &evil, &receiver),
        CancellationToken::new(),
        RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .expect("the host survives");
    let stats: BTreeMap<String, Stats> = results.into_iter().collect();

    let shop = &stats["shop"];
    assert_eq!((shop.rows, shop.delivered), (300, 300), "{shop:?}");
    assert_eq!(shop.plugin_errors.total(), 0);
    assert_exactly_once(received_order_ids(&receiver), 1..=300);
    let version = hex::encode(Sha256::digest(
        std::fs::read(plugins::ORDERS_PLUGIN).unwrap(),
    ));
    let shop_versions: Vec<_> = receiver
        .messages()
        .iter()
        .filter(|m| m.envelope["body"]["xdmEntity"]["_acme"]["orderId"].is_string())
        .map(|m| m.envelope["header"]["source"]["pluginVersion"].clone())
        .collect();
    assert!(shop_versions.iter().all(|v| *v == version.as_str()));

    let evil_stats = &stats["evil"];
    let harmless = HOSTILE.len() as u64 * 2 + 1;
    assert_eq!(evil_stats.delivered, harmless, "{evil_stats:?}");
    let dead: Vec<_> = good.state().dead_letters(Some("evil")).unwrap();
    assert_eq!(dead.len(), HOSTILE.len() * 2, "{dead:#?}");
    for round in 0..2 {
        for (i, (behaviour, code)) in HOSTILE.iter().enumerate() {
            let id = 1000 + round * 100 + 2 * i as i64;
            let letter = dead
                .iter()
                .find(|d| d.identity.starts_with(&format!("{id}@")))
                .unwrap_or_else(|| panic!("no dead letter for {behaviour}"));
            assert_eq!(letter.code, *code, "{behaviour}: {}", letter.reason);
        }
    }
    for (_, code) in HOSTILE {
        let expected = 2 * HOSTILE.iter().filter(|(_, c)| c == code).count() as u64;
        assert_eq!(evil_stats.plugin_errors.get(code), expected, "{code}");
    }
    // The probe row: every ambient capability denied inside the sandbox.
    let probe = receiver
        .messages()
        .into_iter()
        .find(|m| m.envelope["body"]["xdmEntity"]["file"].is_string())
        .expect("the probe's event");
    let report = &probe.envelope["body"]["xdmEntity"];
    for capability in ["file", "dir", "socket"] {
        let outcome = report[capability].as_str().unwrap();
        assert!(outcome.starts_with("denied"), "{capability}: {outcome}");
    }
    assert_eq!(report["env"], "0 variables");
    assert_eq!(report["clock_secs"], 0);
}

/// A pipeline may only read its own tenant's secrets and load plugins from
/// its tenant's folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_use_another_tenants_secrets_or_plugins() {
    let receiver = Receiver::start(true).await.unwrap();
    let good = tenant_setup(plugins::ORDERS_PLUGIN, "shop", "good");
    let text = format!(
        "{}[tenants.good]\nsecrets = [\"GOOD_TOKEN\"]\nplugin_dir = {:?}\n\n[tenants.evil]\nsecrets = [\"FRESHET_TEST_HOOK_KEY\"]\n\n{}",
        good.pipeline.render_head(),
        good.path("plugins"),
        good.pipeline_text(&receiver),
    );
    // The plugin inside its folder; the secret another tenant's.
    std::fs::create_dir(good.path("plugins")).unwrap();
    std::fs::copy(plugins::ORDERS_PLUGIN, good.path("plugins/orders.wasm")).unwrap();
    let plugin_line = format!(
        "plugin = {:?}",
        std::path::Path::new(plugins::ORDERS_PLUGIN)
    );
    let inside_line = format!("plugin = {:?}", good.path("plugins/orders.wasm"));
    let foreign = text.replace(&plugin_line, &inside_line);
    let config = freshet::config::parse(&foreign).unwrap();
    let foreign_key = "pipelines.shop.targets.order-confirmed.headers.x-api-key: \
                       `FRESHET_TEST_HOOK_KEY` is not one of tenant good's secrets \
                       (tenants.good.secrets)";
    let errors: Vec<String> = config.validate().iter().map(ToString::to_string).collect();
    assert_eq!(errors, vec![foreign_key]);
    let err = run_error(&config).await;
    assert!(err.contains(foreign_key), "{err}");
    assert_eq!(receiver.message_count(), 0, "nothing ran");
    std::fs::remove_file(good.path("plugins/orders.wasm")).unwrap();
    // With the secret its own, the plugin outside its folder is refused.
    let text = text.replace(r#"["GOOD_TOKEN"]"#, r#"["FRESHET_TEST_HOOK_KEY"]"#);
    let config = freshet::config::parse(&text).unwrap();
    assert_eq!(config.validate(), vec![]);
    let err = run_error(&config).await;
    assert!(
        err.contains("pipelines.shop.plugin:") && err.contains("outside tenant good's plugin_dir"),
        "{err}"
    );
    // A symlink inside the folder does not let it out either.
    std::os::unix::fs::symlink(plugins::ORDERS_PLUGIN, good.path("plugins/orders.wasm")).unwrap();
    let inside = text.replace(&plugin_line, &inside_line);
    let config = freshet::config::parse(&inside).unwrap();
    let err = run_error(&config).await;
    assert!(err.contains("outside tenant good's plugin_dir"), "{err}");
    // A real copy inside runs.
    std::fs::remove_file(good.path("plugins/orders.wasm")).unwrap();
    std::fs::copy(plugins::ORDERS_PLUGIN, good.path("plugins/orders.wasm")).unwrap();
    let config = freshet::config::parse(&inside).unwrap();
    freshet::run(
        &config,
        CancellationToken::new(),
        RunOptions {
            once: true,
            ..Default::default()
        },
    )
    .await
    .expect("a plugin inside its tenant's folder runs");
}

/// A key file is a secret like a variable: a tenant reads only files inside
/// its `secret_dir`, whatever path its config names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_read_another_tenants_key_file() {
    let mut good = tenant_setup(plugins::ORDERS_PLUGIN, "shop", "good");
    let (mine, theirs) = (good.path("secrets/good"), good.path("secrets/evil"));
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("rsa_key.p8"), "evil's key").unwrap();
    // Never reached: the secret is refused before any connection.
    let mut snowflake = SnowflakeOrders::new("http://127.0.0.1:9", "SHOP");
    let config_of = |good: &Setup| {
        let mut pipeline = good.pipeline.clone();
        pipeline.aep_url = "http://127.0.0.1:9".into();
        let text = format!(
            "{}[tenants.good]\nsecret_dir = {mine:?}\n[tenants.evil]\nsecret_dir = {theirs:?}\n\n{}",
            pipeline.render_head(),
            pipeline.render_pipeline(),
        );
        freshet::config::parse(&text).unwrap()
    };
    for key in [theirs.join("rsa_key.p8"), mine.join("../evil/rsa_key.p8")] {
        snowflake.auth = format!("private_key_file = {key:?}");
        good.pipeline.source = OrdersSource::Snowflake(snowflake.clone());
        let config = config_of(&good);
        assert_eq!(config.validate(), vec![]);
        let err = run_error(&config).await;
        assert!(
            err.contains("pipelines.shop.source.auth.private_key_file:")
                && err.contains("outside tenant good's secret_dir"),
            "{err}"
        );
    }
    // Its own file is read (and then found not to be a key).
    std::fs::write(mine.join("rsa_key.p8"), "not a key").unwrap();
    snowflake.auth = format!("private_key_file = {:?}", mine.join("rsa_key.p8"));
    good.pipeline.source = OrdersSource::Snowflake(snowflake.clone());
    let config = config_of(&good);
    let err = run_error(&config).await;
    assert!(!err.contains("secret_dir"), "{err}");
}

/// Writes `bytes` to `path` the way a deploy does: a new file renamed over
/// the old one.
fn replace_file(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_plugin_file_mid_run_swaps_versions_without_losing_a_row() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    let plugin = setup.path("plugin.wasm");
    let v1 = std::fs::read(plugins::ORDERS_PLUGIN).unwrap();
    std::fs::write(&plugin, &v1).unwrap();
    setup.pipeline.plugin = plugin.clone();
    setup.pipeline.engine = "reload_interval_ms = 100".into();
    let hash = |b: &[u8]| hex::encode(Sha256::digest(b));
    let running = Running::start(setup.config(&receiver));

    // Rows keep arriving throughout, a few every 20 ms.
    let base = now_ms() - 60_000;
    let mut next = 1;
    let mut insert = |n: i64| {
        let orders: Vec<Order> = (next..next + n)
            .map(|id| Order::new(id, "confirmed", base + id))
            .collect();
        setup.insert(&orders);
        next += n;
        next - 1
    };
    insert(100);
    assert!(wait_for_messages(&receiver, 100, Duration::from_secs(20)).await);

    let v2 = new_build_of(plugins::ORDERS_PLUGIN, "v2");
    replace_file(&plugin, &v2);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !versions_by_order(&receiver)
        .values()
        .any(|v| v.contains(&hash(&v2)))
    {
        assert!(std::time::Instant::now() < deadline, "v2 never took over");
        insert(5);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A broken build: refused, v2 keeps running.
    replace_file(&plugin, b"\0asm this is not a component");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = insert(100);
    assert!(wait_for_messages(&receiver, last as u64, Duration::from_secs(20)).await);
    let stats = running.stop().await;

    assert_exactly_once(received_order_ids(&receiver), 1..=last);
    let versions = versions_by_order(&receiver);
    let (old, new) = (hash(&v1), hash(&v2));
    // Rows in order: v1 up to the swap, v2 from it on, nothing else.
    let swap = versions
        .iter()
        .find(|(_, v)| v[0] == new)
        .map(|(id, _)| *id)
        .unwrap();
    for (id, seen) in &versions {
        let expected = if *id < swap { &old } else { &new };
        assert_eq!(&seen[0], expected, "order {id}");
    }
    assert!(swap > 100, "the first 100 rows were mapped by v1");
    assert_eq!((stats.reloads, stats.reload_failures), (1, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pointing_the_config_file_at_another_plugin_switches_without_a_restart() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.pipeline.engine = "reload_interval_ms = 100".into();
    let v2 = setup.path("orders-v2.wasm");
    std::fs::write(&v2, new_build_of(plugins::ORDERS_PLUGIN, "v2")).unwrap();
    let config_path = setup.path("freshet.toml");
    let text = setup.config_text(&receiver);
    std::fs::write(&config_path, &text).unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (path, shutdown) = (config_path.clone(), shutdown.clone());
        async move { freshet::run_file(&path, shutdown, RunOptions::default()).await }
    });
    let base = now_ms() - 60_000;
    let orders = |ids: std::ops::RangeInclusive<i64>| -> Vec<Order> {
        ids.map(|id| Order::new(id, "confirmed", base + id))
            .collect()
    };
    setup.insert(&orders(1..=50));
    assert!(wait_for_messages(&receiver, 50, Duration::from_secs(20)).await);

    // A config that does not validate changes nothing.
    std::fs::write(
        &config_path,
        text.replace("batch_size = 50", "batch_size = 0"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The config now names the new build.
    let repointed = text.replace(
        &format!(
            "plugin = {:?}",
            std::path::Path::new(plugins::ORDERS_PLUGIN)
        ),
        &format!("plugin = {v2:?}"),
    );
    assert_ne!(repointed, text);
    std::fs::write(&config_path, repointed).unwrap();
    let new = hex::encode(Sha256::digest(std::fs::read(&v2).unwrap()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut next = 51;
    while !versions_by_order(&receiver)
        .values()
        .any(|v| v.contains(&new))
    {
        assert!(std::time::Instant::now() < deadline, "v2 never took over");
        setup.insert(&orders(next..=next));
        next += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    let results = running.await.unwrap().unwrap();
    assert_exactly_once(received_order_ids(&receiver), 1..next);
    let old = hex::encode(Sha256::digest(
        std::fs::read(plugins::ORDERS_PLUGIN).unwrap(),
    ));
    let versions = versions_by_order(&receiver);
    assert!((1..=50).all(|id| versions[&id][0] == old));
    assert_eq!(results[0].1.reloads, 1, "{:?}", results[0].1);
}
