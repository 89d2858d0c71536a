//! Fixtures for the operations surface: a `freshet run` process with
//! `[admin]`, an HTTP client for its API, a real Prometheus server scraping
//! it, and headless Chromium loading its status page. Every peer is a real
//! program on loopback, started here in a temporary folder.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The operator's token in every admin test.
pub const OPERATOR_TOKEN: &str = "operator-token-0123456789";

/// A port free on loopback now (the OS picks; the listener is dropped).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The `[admin]` table listening on `port`, the operator's token in
/// `FRESHET_TEST_OPERATOR_TOKEN`.
pub fn admin_table(port: u16) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\noperator_token_env = \"FRESHET_TEST_OPERATOR_TOKEN\"\n\n"
    )
}

/// `freshet run` of a config file, in the background.
pub struct HostProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl HostProcess {
    /// Writes `config` to `dir/freshet.toml` and runs it with the tokens in
    /// `env` (plus the operator's), until `/healthz` answers on `port`.
    pub async fn start(dir: &Path, config: &str, port: u16, env: &[(&str, &str)]) -> Self {
        let file = dir.join("freshet.toml");
        std::fs::write(&file, config).expect("write the config");
        let log = dir.join(format!("host-{port}.log"));
        let mut command = crate::freshet();
        command
            .args(["run", "--config"])
            .arg(&file)
            .env("FRESHET_LOG", "info")
            .env("FRESHET_TEST_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = command.spawn().expect("start freshet");
        let mut host = Self {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", host.url)).send().await {
                if r.status().is_success() {
                    return host;
                }
            }
            if let Some(status) = host
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("freshet exited ({status}) before serving:\n{}", host.logs());
            }
            assert!(
                Instant::now() < deadline,
                "no /healthz in 60 s:\n{}",
                host.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then its stdout (the pipelines' counters, one JSON line each)
    /// once it exited; fails unless it exited 0.
    pub fn stop(mut self) -> Vec<Value> {
        let child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let out = child.wait_with_output().expect("freshet exits");
        assert!(out.status.success(), "freshet failed:\n{}", self.logs());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client of a host's admin API.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

/// An answer: status and JSON body (`Value::Null` when not JSON).
pub type Answer = (u16, Value);

impl Api {
    /// The API of the host at `url`.
    pub fn of(url: &str) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: url.to_owned(),
        }
    }

    /// Sends `method path` with `token` (none: no header) and a body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<reqwest::Body>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("the admin API answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.send("GET", path, Some(token), None).await
    }

    /// `POST path` without a body.
    pub async fn post(&self, path: &str, token: &str) -> Answer {
        self.send("POST", path, Some(token), None).await
    }

    /// The host's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base);
        let response = self.client.get(url).send().await.expect("/metrics answers");
        response.text().await.expect("metrics text")
    }

    /// Uploads a component as `tenant`'s plugin version.
    pub async fn upload(&self, tenant: &str, token: &str, component: Vec<u8>) -> Answer {
        let path = format!("/api/v1/tenants/{tenant}/plugins");
        self.send("POST", &path, Some(token), Some(component.into()))
            .await
    }

    /// `method path` with a JSON body.
    pub async fn json(&self, method: &str, path: &str, token: &str, body: Value) -> Answer {
        self.send(method, path, Some(token), Some(body.to_string().into()))
            .await
    }

    /// Waits until pipeline `name` is in `phase` (20 s at most); its view.
    pub async fn wait_for_phase(&self, name: &str, phase: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, view) = self
                .get(&format!("/api/v1/pipelines/{name}"), OPERATOR_TOKEN)
                .await;
            assert_eq!(status, 200, "{view}");
            if view["phase"] == phase {
                return view;
            }
            assert!(Instant::now() < deadline, "never {phase}: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A Prometheus server scraping `targets` every second, on loopback, with
/// its data in a temporary folder. Stopped on drop.
pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `prometheus` (Debian's package: `.ci/setup` installs it) and
    /// waits until it is ready.
    pub async fn start(targets: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: freshet\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus (apt-get install prometheus; .ci/setup does)");
        let prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await
            {
                if r.status().is_success() {
                    return prometheus;
                }
            }
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of an instant `query` with one series, if it has one.
    pub async fn value(&self, query: &str) -> Option<f64> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let result = answer["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// Every series of a query, by the value of `label`.
    pub async fn by_label(&self, query: &str, label: &str) -> Vec<(String, f64)> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("JSON");
        let mut out: Vec<(String, f64)> = answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["metric"][label].as_str().unwrap_or_default().to_owned(),
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium (Debian's package: `.ci/setup` installs it) with a
/// fresh profile, the flags a closed network needs, and console messages
/// logged to stderr.
pub fn chromium(profile: &Path) -> Command {
    let mut command = Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--log-level=0",
        "--virtual-time-budget=5000",
        "--window-size=1400,900",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// schemathesis (`.ci/setup` installs it in the cache folder's `api-venv`),
/// run with its configuration file in `dir` setting the path parameters
/// `tenant` and `name` (so its cases reach a real pipeline, not 404s).
pub fn schemathesis(dir: &Path, tenant: &str, pipeline: &str) -> Command {
    let cache = std::env::var_os("FRESHET_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/freshet")))
        .unwrap_or_else(|| PathBuf::from(".cache/freshet"));
    let config = dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!("[parameters]\n\"path.tenant\" = {tenant:?}\n\"path.name\" = {pipeline:?}\n"),
    )
    .expect("write schemathesis.toml");
    let mut command = Command::new(cache.join("api-venv/bin/schemathesis"));
    command.arg("--config-file").arg(config);
    command
}

/// The console messages (`console.*` and uncaught errors) Chromium logged.
pub fn console_messages(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .map(str::to_owned)
        .collect()
}
