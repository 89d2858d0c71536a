//! Operating a host: Prometheus metrics scraped by a real Prometheus, the
//! admin API over real HTTP (tenant isolation, uploads, switching and
//! rolling back plugin versions while rows arrive, pause/reset/resume, dead
//! letters), `/readyz` against an unreachable source, the status page in
//! headless Chromium, and JSON logs. Every host is the real `freshet run`.

use freshet_tests::ops::*;
use freshet_tests::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::time::{Duration, Instant};

const ACME_TOKEN: &str = "acme-token-0123456789abc";
const GLOBEX_TOKEN: &str = "globex-token-0123456789ab";
const TOKENS: &[(&str, &str)] = &[
    ("ACME_ADMIN_TOKEN", ACME_TOKEN),
    ("GLOBEX_ADMIN_TOKEN", GLOBEX_TOKEN),
];

fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn orders(ids: std::ops::RangeInclusive<i64>, status: &str) -> Vec<Order> {
    let base = now_ms() - 60_000;
    ids.map(|id| Order::new(id, status, base + id)).collect()
}

/// Two tenants, `acme` (pipeline `shop`) and `globex` (pipeline `store`),
/// each over its own table, with their admin tokens; `engine` lines added.
struct TwoTenants {
    shop: Setup,
    store: Setup,
    port: u16,
}

impl TwoTenants {
    fn new() -> Self {
        let mut shop = Setup::new(plugins::ORDERS_PLUGIN);
        shop.pipeline.name = "shop".into();
        shop.pipeline.tenant = Some("acme".into());
        let mut store = Setup::new(plugins::ORDERS_PLUGIN);
        store.pipeline.name = "store".into();
        store.pipeline.tenant = Some("globex".into());
        Self {
            shop,
            store,
            port: free_port(),
        }
    }

    fn config(&self, receiver: &Receiver) -> String {
        let tenant = |name: &str, var: &str| {
            format!(
                "[tenants.{name}]\nsecrets = [\"FRESHET_TEST_HOOK_KEY\"]\nadmin_token_env = \"{var}\"\n\n"
            )
        };
        format!(
            "{}{}{}{}{}{}",
            self.shop.pipeline.render_head(),
            admin_table(self.port),
            tenant("acme", "ACME_ADMIN_TOKEN"),
            tenant("globex", "GLOBEX_ADMIN_TOKEN"),
            self.shop.pipeline_text(receiver),
            self.store.pipeline_text(receiver),
        )
    }

    async fn start(&self, receiver: &Receiver) -> HostProcess {
        HostProcess::start(
            self.shop.dir.path(),
            &self.config(receiver),
            self.port,
            TOKENS,
        )
        .await
    }
}

/// A receiver whose AEP refuses the message at `index` of the first
/// request (400, `message`).
async fn refusing(index: usize, message: &str) -> Receiver {
    let receiver = Receiver::start(true).await.unwrap();
    receiver.script_aep(Scripted::RejectMessage {
        index,
        status: 400,
        message: message.into(),
    });
    receiver
}

/// Waits (30 s at most) until `check` holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_host_and_counts_every_delivered_row() {
    // AEP refuses one event: a dead letter to count too.
    let receiver = refusing(0, "schema mismatch").await;
    let host = TwoTenants::new();
    host.shop.insert(&orders(1..=250, "confirmed"));
    host.store.insert(&orders(1..=120, "pending"));
    let running = host.start(&receiver).await;
    assert!(wait_for_messages(&receiver, 369, Duration::from_secs(30)).await);
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{}", host.port)]).await;

    let rows = || prometheus.by_label("freshet_rows_read_total", "pipeline");
    eventually("Prometheus has both pipelines' rows", || async {
        rows().await == [("shop".to_owned(), 250.0), ("store".to_owned(), 120.0)]
    })
    .await;
    let delivered = prometheus
        .value(r#"sum(freshet_events_total{outcome="delivered"})"#)
        .await;
    assert_eq!(delivered, Some(receiver.message_count() as f64));
    // Each confirmed order's actions ran once; the API's counters agree.
    let api = Api::of(&running.url);
    let (_, shop) = api.get("/api/v1/pipelines/shop", OPERATOR_TOKEN).await;
    let actions = prometheus
        .value(r#"sum(freshet_actions_total{pipeline="shop",outcome="done"})"#)
        .await;
    assert_eq!(actions, shop["stats"]["actions"].as_f64());
    assert!(actions.unwrap() >= 250.0, "{actions:?}");
    let lags = prometheus
        .value(r#"freshet_delivery_lag_seconds_count{pipeline="shop"}"#)
        .await;
    assert_eq!(lags, Some(250.0), "one delivery lag per row");
    let calls = prometheus
        .value(r#"freshet_plugin_calls_total{pipeline="shop"}"#)
        .await;
    assert!(calls >= Some(5.0), "250 rows in batches of 50: {calls:?}");
    let fuel = prometheus
        .value(r#"freshet_plugin_fuel_used_total{pipeline="shop"}"#)
        .await;
    assert!(fuel > Some(250.0 * 1000.0), "{fuel:?}");
    let refused = prometheus
        .value(r#"sum(freshet_events_total{outcome="refused"})"#)
        .await;
    let dead = prometheus
        .value(r#"sum(freshet_dead_letters_total{code="http_400"})"#)
        .await;
    assert_eq!((refused, dead), (Some(1.0), Some(1.0)));
    let loads = prometheus.value("sum(freshet_plugin_loads_total)").await;
    assert!(loads >= Some(1.0), "{loads:?}");
    // Every series the Grafana dashboard reads is one the host exports.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../host/grafana/freshet-dashboard.json"),
    )
    .unwrap();
    let exported = api.metrics().await;
    let read = dashboard.split("freshet_").skip(1).filter_map(|rest| {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        (!name.is_empty()).then(|| format!("freshet_{name}"))
    });
    // (a family is declared even before its first series: `# TYPE` names it)
    let family = |name: &str| {
        let base = name.trim_end_matches("_total").trim_end_matches("_bucket");
        exported.contains(&format!("# TYPE {base} "))
    };
    let read: Vec<String> = read.collect();
    assert!(read.len() >= 14, "the dashboard's queries: {read:?}");
    let missing: Vec<&String> = read.iter().filter(|name| !family(name)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard reads families the host lacks: {missing:?}"
    );
    let stats = running.stop();
    let rows: Vec<_> = stats
        .iter()
        .map(|s| (s["pipeline"].clone(), s["stats"]["rows"].clone()))
        .collect();
    assert_eq!(
        rows,
        [(json!("shop"), json!(250)), (json!("store"), json!(120))]
    );
}

/// Every endpoint of the API, on pipeline `name` / tenant `tenant`, with a
/// body that would do something if it were allowed.
fn every_call(name: &str, tenant: &str) -> Vec<(&'static str, String, Option<String>)> {
    let p = format!("/api/v1/pipelines/{name}");
    let some = |v: Value| Some(v.to_string());
    vec![
        ("GET", p.clone(), None),
        ("POST", format!("{p}/pause"), None),
        ("POST", format!("{p}/resume"), None),
        ("PUT", format!("{p}/offset"), some(json!({"to": 0}))),
        ("GET", format!("{p}/dead-letters"), None),
        ("POST", format!("{p}/dead-letters/replay"), some(json!({}))),
        (
            "PUT",
            format!("{p}/plugin"),
            some(json!({"version": "0".repeat(64)})),
        ),
        ("DELETE", format!("{p}/plugin"), None),
        ("POST", format!("{p}/plugin/rollback"), None),
        (
            "POST",
            format!("{p}/test"),
            some(json!({"rows": [{"id": 1}]})),
        ),
        ("GET", format!("/api/v1/tenants/{tenant}/plugins"), None),
        ("POST", format!("/api/v1/tenants/{tenant}/plugins"), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_reaches_only_its_own_tenant_and_no_token_reaches_anything() {
    let receiver = Receiver::start(true).await.unwrap();
    let host = TwoTenants::new();
    host.store.insert(&orders(1..=20, "confirmed"));
    let running = host.start(&receiver).await;
    let api = Api::of(&running.url);
    assert!(wait_for_messages(&receiver, 20, Duration::from_secs(30)).await);
    let v2 = new_build_of(plugins::ORDERS_PLUGIN, "isolation");

    let names = |answer: &Value| -> Vec<String> {
        let list = answer["pipelines"].as_array().unwrap();
        list.iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&api.get("/api/v1/pipelines", OPERATOR_TOKEN).await.1),
        ["shop", "store"]
    );
    assert_eq!(
        names(&api.get("/api/v1/pipelines", ACME_TOKEN).await.1),
        ["shop"]
    );
    assert_eq!(
        names(&api.get("/api/v1/pipelines", GLOBEX_TOKEN).await.1),
        ["store"]
    );

    // acme tries every call on globex's pipeline and tenant: each is as if
    // it did not exist, and a problem document says so.
    for (method, path, body) in every_call("store", "globex") {
        let body = match (method, path.ends_with("/plugins")) {
            ("POST", true) => Some(v2.clone().into()),
            _ => body.map(Into::into),
        };
        let (status, problem) = api.send(method, &path, Some(ACME_TOKEN), body).await;
        assert_eq!(status, 404, "{method} {path}: {problem}");
        assert_eq!(problem["status"], 404, "{method} {path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with("no "),
            "{problem}"
        );
    }
    // Nor can acme run a version globex uploaded, by its digest.
    let theirs = new_build_of(plugins::ORDERS_PLUGIN, "globex");
    let (status, _) = api.upload("globex", GLOBEX_TOKEN, theirs.clone()).await;
    assert_eq!(status, 201);
    for (method, path) in [
        ("PUT", "/api/v1/pipelines/shop/plugin"),
        ("POST", "/api/v1/pipelines/shop/test"),
    ] {
        let body = match method {
            "PUT" => json!({"version": hash(&theirs)}),
            _ => json!({"version": hash(&theirs), "rows": []}),
        };
        let (status, problem) = api.json(method, path, ACME_TOKEN, body).await;
        assert_eq!(
            (status, &problem["field"]),
            (404, &json!("version")),
            "{method} {path}: {problem}"
        );
    }
    // No token, a malformed header and a wrong token reach nothing, not even
    // the caller's own pipeline.
    for (method, path, _) in every_call("shop", "acme") {
        let (status, problem) = api.send(method, &path, None, None).await;
        assert_eq!(status, 401, "{method} {path}: {problem}");
        let (status, _) = api
            .send(method, &path, Some("not-a-valid-token-at-all"), None)
            .await;
        assert_eq!(status, 401, "{method} {path}");
    }
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/pipelines", running.url))
        .header("authorization", format!("Basic {ACME_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Nothing of globex's changed: still running, no versions, no switch.
    let (_, store) = api.get("/api/v1/pipelines/store", GLOBEX_TOKEN).await;
    assert_eq!(store["phase"], "running", "{store}");
    assert_eq!(store["plugin"]["pinned"], Value::Null);
    assert_eq!(
        store["plugin"]["version"],
        hash(&std::fs::read(plugins::ORDERS_PLUGIN).unwrap())
    );
    let (_, versions) = api
        .get("/api/v1/tenants/globex/plugins", GLOBEX_TOKEN)
        .await;
    let digests: Vec<&Value> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["digest"])
        .collect();
    assert_eq!(digests, [&json!(hash(&theirs))], "only its own upload");

    // The operator reaches both; every path tried is in the OpenAPI
    // description, which is served without a token.
    let (status, _) = api
        .get("/api/v1/pipelines/store/dead-letters", OPERATOR_TOKEN)
        .await;
    assert_eq!(status, 200);
    let (status, spec) = api.send("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    for (method, path, _) in every_call("{name}", "{tenant}") {
        let path = path.strip_prefix("/api/v1").unwrap();
        let operation = &spec["paths"][path][method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {path} is not in openapi.json"
        );
    }
    let (status, body) = api
        .send("GET", "/api/v1/no-such-thing", Some(OPERATOR_TOKEN), None)
        .await;
    assert_eq!((status, &body["status"]), (404, &json!(404)), "{body}");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_do_not_load_are_refused_with_their_reasons_and_change_nothing() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut host = TwoTenants::new();
    // The orders plugin starts from the component cache; every upload here
    // must compile, within 100 ms, and weigh at most 4 MiB.
    freshet::plugin::Runtime::new(&freshet::plugin::EngineSettings {
        cache_dir: Some(plugins::COMPONENT_CACHE.into()),
        ..Default::default()
    })
    .unwrap()
    .load(std::path::Path::new(plugins::ORDERS_PLUGIN))
    .unwrap();
    host.shop.pipeline.engine = "max_component_bytes = 4_194_304\ncompile_timeout_ms = 100".into();
    let running = host.start(&receiver).await;
    let api = Api::of(&running.url);
    let go = std::fs::read(plugins::GO_PLUGIN).unwrap();
    assert!(go.len() > 4 << 20, "the Go plugin is over the limit");
    // An empty component: valid, of a world with nothing in it.
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let slow = new_build_of(
        plugins::JS_QUICKJS_PLUGIN,
        &format!("slow-{}", std::process::id()),
    );
    let cases = [
        (go, 413, "exceeds engine.max_component_bytes (4194304)"),
        (
            b"this is not wasm".to_vec(),
            422,
            "not a valid WebAssembly component",
        ),
        (
            empty_component,
            422,
            "does not fit the freshet:plugin contract",
        ),
        (slow, 422, "engine.compile_timeout_ms"),
    ];
    for (bytes, status, reason) in cases {
        let (got, problem) = api.upload("acme", ACME_TOKEN, bytes).await;
        assert_eq!(got, status, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(reason),
            "{problem}"
        );
        assert_eq!(problem["field"], "body", "{problem}");
    }
    let (_, versions) = api.get("/api/v1/tenants/acme/plugins", ACME_TOKEN).await;
    assert_eq!(versions["versions"], json!([]));
    let stored = std::fs::read_dir(host.shop.path("plugin-versions"))
        .unwrap()
        .count();
    assert_eq!(stored, 0, "nothing stored");
    let (_, shop) = api.get("/api/v1/pipelines/shop", ACME_TOKEN).await;
    assert_eq!(shop["phase"], "running");

    // Malformed requests are problem documents naming the field.
    let (status, problem) = api
        .json(
            "PUT",
            "/api/v1/pipelines/shop/plugin",
            ACME_TOKEN,
            json!({"versoin": "x"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `versoin`"),
        "{problem}"
    );
    let (status, problem) = api
        .json(
            "PUT",
            "/api/v1/pipelines/shop/offset",
            ACME_TOKEN,
            json!({"to": "yesterday"}),
        )
        .await;
    assert_eq!(
        (status, &problem["field"]),
        (400, &json!("to")),
        "{problem}"
    );
    let (status, problem) = api
        .json(
            "POST",
            "/api/v1/pipelines/shop/test",
            ACME_TOKEN,
            json!({"rows": 5}),
        )
        .await;
    assert_eq!(
        (status, &problem["field"]),
        (400, &json!("rows")),
        "{problem}"
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_switched_in_while_rows_arrive_loses_and_repeats_nothing_and_rolls_back() {
    let receiver = Receiver::start(true).await.unwrap();
    let host = TwoTenants::new();
    let v1 = hash(&std::fs::read(plugins::ORDERS_PLUGIN).unwrap());
    let v2_bytes = new_build_of(plugins::ORDERS_PLUGIN, "v2");
    let v2 = hash(&v2_bytes);
    let running = host.start(&receiver).await;
    let api = Api::of(&running.url);

    let (status, uploaded) = api.upload("acme", ACME_TOKEN, v2_bytes.clone()).await;
    assert_eq!(status, 201, "{uploaded}");
    assert_eq!(
        (&uploaded["digest"], &uploaded["contract"]),
        (&json!(v2), &json!("0.2"))
    );
    let (status, _) = api.upload("acme", ACME_TOKEN, v2_bytes).await;
    assert_eq!(status, 200, "the same bytes again: already stored");
    let (_, versions) = api.get("/api/v1/tenants/acme/plugins", ACME_TOKEN).await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);

    // A dry run of the stored version touches nothing.
    let (status, tried) = api
        .json(
            "POST",
            "/api/v1/pipelines/shop/test",
            ACME_TOKEN,
            json!({"version": v2, "rows": [{"id": 7, "customer_email": "a@example.com", "status": "confirmed",
                   "amount": {"decimal": "12.50"}, "currency": "EUR", "updated_at": {"timestamp": "2026-12-01T10:00:00Z"}}]}),
        )
        .await;
    assert_eq!(status, 200, "{tried}");
    assert_eq!(
        (&tried["version"], &tried["failed"]),
        (&json!(v2), &json!(0)),
        "{tried}"
    );
    assert_eq!(
        tried["rows"][0]["events"].as_array().unwrap().len(),
        1,
        "{tried}"
    );
    assert_eq!(receiver.message_count(), 0, "nothing delivered");

    // Rows keep arriving, a few every 20 ms, across a switch and a rollback.
    let mut next = 1;
    let mut insert = |n: i64| {
        host.shop.insert(&orders(next..=next + n - 1, "confirmed"));
        next += n;
        next - 1
    };
    insert(100);
    assert!(wait_for_messages(&receiver, 100, Duration::from_secs(30)).await);
    let (status, switched) = api
        .json(
            "PUT",
            "/api/v1/pipelines/shop/plugin",
            ACME_TOKEN,
            json!({"version": v2}),
        )
        .await;
    assert_eq!(status, 200, "{switched}");
    assert_eq!(
        (&switched["version"], &switched["previous"]),
        (&json!(v2), &json!(v1))
    );
    let seen = |version: &str| {
        versions_by_order(&receiver)
            .values()
            .any(|v| v.contains(&version.to_owned()))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen(&v2) {
        assert!(Instant::now() < deadline, "v2 never took over");
        insert(5);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    insert(50);
    let (status, rolled) = api
        .post("/api/v1/pipelines/shop/plugin/rollback", ACME_TOKEN)
        .await;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(
        (&rolled["version"], &rolled["previous"]),
        (&json!(v1), &json!(v2))
    );
    let last = insert(100);
    assert!(wait_for_messages(&receiver, last as u64, Duration::from_secs(30)).await);
    assert_exactly_once(received_order_ids(&receiver), 1..=last);
    // In source order: v1, then v2 from the switch, then v1 again.
    let mut runs: Vec<String> = versions_by_order(&receiver)
        .into_values()
        .map(|v| v[0].clone())
        .collect();
    runs.dedup();
    assert_eq!(
        runs,
        [v1.clone(), v2.clone(), v1.clone()],
        "versions by order id"
    );

    // Switched again, the version outlives a restart.
    let (status, _) = api
        .json(
            "PUT",
            "/api/v1/pipelines/shop/plugin",
            ACME_TOKEN,
            json!({"version": v2}),
        )
        .await;
    assert_eq!(status, 200);
    running.stop();
    let running = host.start(&receiver).await;
    let api = Api::of(&running.url);
    let (_, shop) = api.get("/api/v1/pipelines/shop", ACME_TOKEN).await;
    assert_eq!(
        (&shop["plugin"]["version"], &shop["plugin"]["pinned"]),
        (&json!(v2), &json!(v2))
    );
    // An edit of the config file (watched every second) leaves it too.
    let file = host.shop.path("freshet.toml");
    let edited = std::fs::read_to_string(&file).unwrap() + "\n# edited\n";
    std::fs::write(&file, edited).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = insert(10);
    assert!(wait_for_messages(&receiver, last as u64, Duration::from_secs(30)).await);
    assert_eq!(versions_by_order(&receiver)[&last], [v2.as_str()]);
    assert!(
        running.logs().contains("switched to an uploaded version"),
        "{}",
        running.logs()
    );
    // Rollbacks undo switches one at a time, down to the config's file.
    let v3_bytes = new_build_of(plugins::ORDERS_PLUGIN, "v3");
    let v3 = hash(&v3_bytes);
    let (status, _) = api.upload("acme", ACME_TOKEN, v3_bytes).await;
    assert_eq!(status, 201);
    let plugin = "/api/v1/pipelines/shop/plugin";
    let rollback = "/api/v1/pipelines/shop/plugin/rollback";
    let steps = [
        ("PUT", plugin, Some(json!({"version": v3})), 200, Some(&v3)),
        ("POST", rollback, None, 200, Some(&v2)),
        ("DELETE", plugin, None, 200, Some(&v1)),
        ("POST", rollback, None, 200, Some(&v2)),
        ("POST", rollback, None, 200, Some(&v1)),
        ("POST", rollback, None, 409, None),
    ];
    for (method, path, body, status, version) in steps {
        let body = body.map(|b| b.to_string().into());
        let (got, answer) = api.send(method, path, Some(ACME_TOKEN), body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        if let Some(version) = version {
            assert_eq!(&answer["version"], &json!(version), "{method} {path}");
        }
    }
    let (_, shop) = api.get("/api/v1/pipelines/shop", ACME_TOKEN).await;
    assert_eq!(
        (&shop["plugin"]["version"], &shop["plugin"]["pinned"]),
        (&json!(v1), &Value::Null)
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_reset_and_resume_reread_without_repeating_actions_and_dead_letters_replay() {
    // AEP refuses the second event of the first request.
    let receiver = refusing(1, "schema mismatch").await;
    let host = TwoTenants::new();
    let first = orders(1..=3, "confirmed");
    let start_secs = first[0].updated_at / 1000;
    host.shop.insert(&first);
    let running = host.start(&receiver).await;
    let api = Api::of(&running.url);
    let letters = || api.get("/api/v1/pipelines/shop/dead-letters", ACME_TOKEN);
    eventually("a dead letter", || async {
        letters().await.1["dead_letters"].as_array().unwrap().len() == 1
    })
    .await;
    let (_, dead) = letters().await;
    let letter = &dead["dead_letters"][0];
    assert_eq!(
        (&letter["code"], &letter["kind"]),
        (&json!("http_400"), &json!("refused")),
        "{dead}"
    );
    let (status, replayed) = api
        .json(
            "POST",
            "/api/v1/pipelines/shop/dead-letters/replay",
            ACME_TOKEN,
            json!({"ids": [letter["id"]]}),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"][0]["result"], "delivered", "{replayed}");
    assert_eq!(letters().await.1["dead_letters"], json!([]));
    assert_exactly_once(received_order_ids(&receiver), 1..=3);
    let emails = host.shop.ndjson("emails.ndjson").len();
    assert_eq!(emails, 3, "one confirmation each");

    // An offset moves only while paused.
    let reset = || {
        let body = json!({"to": start_secs});
        api.json("PUT", "/api/v1/pipelines/shop/offset", ACME_TOKEN, body)
    };
    let (status, problem) = reset().await;
    assert_eq!(status, 409, "{problem}");
    // A resume while a page is still in flight (AEP answers 503 once, so
    // its delivery waits a second and retries) leaves the pipeline running
    // once that page commits.
    receiver.script_aep(Scripted::Status {
        status: 503,
        retry_after: Some(1),
    });
    let requests = receiver.request_count();
    host.shop.insert(&orders(4..=4, "confirmed"));
    eventually("the 503", || async { receiver.request_count() > requests }).await;
    let (status, view) = api.post("/api/v1/pipelines/shop/pause", ACME_TOKEN).await;
    assert_eq!((status, &view["phase"]), (202, &json!("pausing")), "{view}");
    let (status, _) = api.post("/api/v1/pipelines/shop/resume", ACME_TOKEN).await;
    assert_eq!(status, 200);
    assert!(wait_for_messages(&receiver, 4, Duration::from_secs(30)).await);
    host.shop.insert(&orders(5..=5, "confirmed"));
    assert!(
        wait_for_messages(&receiver, 5, Duration::from_secs(30)).await,
        "still running"
    );

    let (status, _) = api.post("/api/v1/pipelines/shop/pause", ACME_TOKEN).await;
    assert_eq!(status, 202);
    api.wait_for_phase("shop", "paused").await;
    let exported = api.metrics().await;
    let paused = "freshet_pipeline_paused{tenant=\"acme\",pipeline=\"shop\"} 1";
    assert!(exported.contains(paused), "{exported}");
    host.shop.insert(&orders(6..=10, "confirmed"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.message_count(),
        5,
        "a paused pipeline reads nothing"
    );
    let (status, moved) = reset().await;
    assert_eq!(status, 200, "{moved}");
    let (status, _) = api.post("/api/v1/pipelines/shop/resume", ACME_TOKEN).await;
    assert_eq!(status, 200);
    // Orders 1-5 are read again (at least once to AEP), 6-10 for the first
    // time; the ledger keeps every confirmation e-mail to one.
    assert!(wait_for_messages(&receiver, 5 + 10, Duration::from_secs(30)).await);
    let mut ids = received_order_ids(&receiver);
    ids.sort();
    assert_eq!(ids, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 10]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        host.shop.ndjson("emails.ndjson").len(),
        10,
        "no e-mail twice"
    );
    let (status, _) = api.post("/api/v1/pipelines/shop/resume", ACME_TOKEN).await;
    assert_eq!(status, 409, "not paused");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_pipeline_whose_source_is_unreachable_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut emulator = snowflake::emulator::Emulator::start(dir.path(), snowflake::CHUNK_ROWS)
        .expect("start the Snowflake emulator");
    let setup = snowflake::SnowflakeSetup::new(
        &emulator,
        plugins::ORDERS_PLUGIN,
        snowflake::ORDERS_TABLE,
        "UTC",
    )
    .await;
    setup.insert(&orders(1..=5, "pending")).await;
    let receiver = Receiver::start(true).await.unwrap();
    let port = free_port();
    let pipeline = &setup.setup.pipeline;
    let config = format!(
        "{}{}{}",
        pipeline.render_head(),
        admin_table(port),
        setup.setup.pipeline_text(&receiver)
    );
    let running = HostProcess::start(setup.setup.dir.path(), &config, port, &[]).await;
    assert!(wait_for_messages(&receiver, 5, Duration::from_secs(30)).await);
    let api = Api::of(&running.url);
    let ready = || api.send("GET", "/readyz", None, None);
    assert_eq!(ready().await, (200, json!({"ready": true, "problems": []})));

    emulator.kill();
    eventually("not ready", || async { ready().await.0 == 503 }).await;
    let (_, body) = ready().await;
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{body}");
    let problem = problems[0].as_str().unwrap();
    assert!(
        problem.starts_with("pipeline orders: retrying: "),
        "{problem}"
    );
    let (_, view) = api.get("/api/v1/pipelines/orders", OPERATOR_TOKEN).await;
    assert_eq!(view["phase"], "retrying", "{view}");

    emulator.restart().expect("emulator restarts");
    eventually("ready again", || async { ready().await.0 == 200 }).await;
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_every_pipeline_in_headless_chromium_without_console_errors() {
    let receiver = refusing(0, "a reason the page shows").await;
    let host = TwoTenants::new();
    host.shop.insert(&orders(1..=40, "confirmed"));
    host.store.insert(&orders(1..=25, "pending"));
    let running = host.start(&receiver).await;
    assert!(wait_for_messages(&receiver, 64, Duration::from_secs(30)).await);
    let profile = tempfile::tempdir().unwrap();
    let page = format!("{}/#token={OPERATOR_TOKEN}", running.url);

    let out = chromium(profile.path())
        .arg("--dump-dom")
        .arg(&page)
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        console_messages(&stderr),
        Vec::<String>::new(),
        "console errors"
    );
    for (pipeline, rows) in [("shop", 40), ("store", 25)] {
        let row = dom
            .split(&format!("data-pipeline=\"{pipeline}\""))
            .nth(1)
            .and_then(|rest| rest.split("</tr>").next())
            .unwrap_or_else(|| panic!("no row for {pipeline}:\n{dom}"));
        assert!(
            row.contains(&format!("<td class=\"num\">{rows}</td>")),
            "{pipeline}: {row}"
        );
        assert!(row.contains("running"), "{row}");
    }
    assert!(
        dom.contains("a reason the page shows"),
        "the dead letter's reason:\n{dom}"
    );

    // Beside the build: <target>/test-artifacts/status-page.png.
    let target = std::path::Path::new(plugins::COMPONENT_CACHE)
        .ancestors()
        .nth(2)
        .unwrap();
    let artifacts = target.join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(profile.path())
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&page)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );

    // The console check sees errors when there are some.
    let broken = "data:text/html,<script>console.error('broken page'); undefinedFn()</script>";
    let out = chromium(profile.path())
        .arg("--dump-dom")
        .arg(broken)
        .output()
        .unwrap();
    let messages = console_messages(&String::from_utf8_lossy(&out.stderr));
    assert!(
        messages.iter().any(|m| m.contains("broken page")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("Uncaught ReferenceError")),
        "{messages:?}"
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let receiver = Receiver::start(true).await.unwrap();
    let setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.insert(&orders(1..=5, "confirmed"));
    let config = setup.path("freshet.toml");
    std::fs::write(&config, setup.config_text(&receiver)).unwrap();
    let out = freshet()
        .args(["run", "--once", "--config"])
        .arg(&config)
        .env("FRESHET_LOG", "info")
        .env("FRESHET_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["message"] == "pipeline started")
        .expect("a start line");
    assert_eq!(
        (&started["level"], &started["pipeline"]),
        (&json!("INFO"), &json!("orders"))
    );
    let out = freshet()
        .args(["run", "--once", "--config"])
        .arg(&config)
        .env("FRESHET_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("FRESHET_LOG_FORMAT=\"yaml\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_an_unset_short_or_shared_token_or_a_busy_address_does_not_start() {
    let receiver = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.pipeline.tenant = Some("acme".into());
    let tenant = "[tenants.acme]\nsecrets = [\"FRESHET_TEST_HOOK_KEY\"]\nadmin_token_env = \"ACME_ADMIN_TOKEN\"\n\n";
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cases = [
        (free_port(), None, ACME_TOKEN, "admin.operator_token_env: environment variable FRESHET_TEST_OPERATOR_TOKEN is not set"),
        (free_port(), Some("short"), ACME_TOKEN, "admin.operator_token_env: FRESHET_TEST_OPERATOR_TOKEN holds 5 characters; a token needs at least 16"),
        (free_port(), Some(OPERATOR_TOKEN), OPERATOR_TOKEN, "tenants.acme.admin_token_env: ACME_ADMIN_TOKEN holds the same token as admin.operator_token_env"),
        (busy.local_addr().unwrap().port(), Some(OPERATOR_TOKEN), ACME_TOKEN, "admin.listen: cannot listen on 127.0.0.1:"),
    ];
    for (port, operator, acme, error) in cases {
        let config = setup.path("freshet.toml");
        let text = setup.pipeline.render_head()
            + &admin_table(port)
            + tenant
            + &setup.pipeline_text(&receiver);
        std::fs::write(&config, text).unwrap();
        let mut command = freshet();
        command
            .args(["run", "--once", "--config"])
            .arg(&config)
            .env("ACME_ADMIN_TOKEN", acme);
        match operator {
            Some(token) => command.env("FRESHET_TEST_OPERATOR_TOKEN", token),
            None => command.env_remove("FRESHET_TEST_OPERATOR_TOKEN"),
        };
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(error), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_as_its_openapi_description_says() {
    // schemathesis generates requests from the description, valid and not,
    // and checks each answer against it: no server errors, only documented
    // statuses and shapes, valid requests accepted and invalid ones refused.
    let receiver = refusing(0, "schema mismatch").await;
    let host = TwoTenants::new();
    host.shop.insert(&orders(1..=20, "confirmed"));
    let running = host.start(&receiver).await;
    assert!(wait_for_messages(&receiver, 19, Duration::from_secs(30)).await);
    let spec = format!("{}/api/v1/openapi.json", running.url);
    let bearer = format!("Authorization: Bearer {ACME_TOKEN}");
    // Any bytes are a schema-valid upload, but only a component loads: the
    // upload is held to every check but accepting them.
    let runs: [&[&str]; 2] = [
        &[
            "--exclude-operation-id",
            "uploadPluginVersion",
            "--checks",
            "all",
        ],
        &[
            "--include-operation-id",
            "uploadPluginVersion",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ],
    ];
    for args in runs {
        let out = schemathesis(host.shop.dir.path(), "acme", "shop")
            .args([
                "run",
                &spec,
                "-H",
                &bearer,
                "--max-examples",
                "40",
                "--seed",
                "20261203",
            ])
            .args(args)
            .output()
            .expect("schemathesis runs (.ci/setup installs it)");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}:\n{report}\n{}",
            running.logs()
        );
    }
    running.stop();
}
