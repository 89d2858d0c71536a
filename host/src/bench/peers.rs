//! The benchmark's loopback peers, each run as a process of its own from
//! the `freshet-peers` binary built beside `freshet`: the AEP, webhook and
//! CRM receiver, so that no figure is flattered by a receiver sharing the
//! runtime it measures, and the Snowflake emulator. Neither the server
//! framework nor the emulator's paths are in this binary.

use anyhow::{bail, ensure, Context as _};
use serde::Deserialize;
use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Where `freshet-peers` is: `FRESHET_PEERS_BIN`, else beside this binary
/// (where `cargo build --release --workspace` puts both).
fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FRESHET_PEERS_BIN") {
        return Ok(path.into());
    }
    let beside = std::env::current_exe()?.with_file_name("freshet-peers");
    ensure!(
        beside.exists(),
        "the benchmark runs its loopback peers as the `freshet-peers` binary, which is not at {}: \
         build it with `cargo build --release -p freshet-peers`, or name it in FRESHET_PEERS_BIN",
        beside.display()
    );
    Ok(beside)
}

/// A running `freshet-peers` process; killed when dropped (and it exits by
/// itself when this process does, as its stdin closes).
pub struct PeerProcess {
    child: Child,
    port: u16,
}

impl PeerProcess {
    /// Starts `freshet-peers ARGS` and waits until it listens.
    pub fn spawn<S: AsRef<OsStr>>(args: &[S]) -> anyhow::Result<Self> {
        let bin = binary()?;
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting the benchmark's loopback peer {} (FRESHET_PEERS_BIN, else beside freshet)",
                    bin.display()
                )
            })?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("the peer's stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(port) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!(
                "{} did not start (it printed {line:?}); see its errors above",
                bin.display()
            );
        };
        let port = port.parse().context("the peer's port")?;
        Ok(Self { child, port })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the receiver counted (`GET /freshet-peer/counts`).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Counts {
    /// AEP messages accepted.
    pub messages: u64,
    /// AEP requests received, whatever their answer.
    pub requests: u64,
    /// Webhook calls answered 2xx.
    pub hooks: u64,
}

impl Counts {
    /// What was counted after `before`: one run's share of a receiver
    /// several runs share.
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            messages: self.messages - before.messages,
            requests: self.requests - before.requests,
            hooks: self.hooks - before.hooks,
        }
    }
}

/// A webhook's body or an AEP message's envelope, and when it arrived.
#[derive(Debug, Clone, Deserialize)]
pub struct Arrival {
    /// The JSON received.
    pub body: serde_json::Value,
    /// When, in µs since the Unix epoch (the receiver's wall clock: the
    /// same machine's as this process's).
    pub at_unix_us: u64,
}

/// The AEP/webhook/CRM receiver in a process of its own.
pub struct RemoteReceiver {
    peer: PeerProcess,
    http: reqwest::Client,
}

impl RemoteReceiver {
    /// Starts one; with `keep` it keeps every message and webhook for
    /// [`Self::hooks`] and [`Self::messages`], else it only counts them.
    pub fn start(keep: bool) -> anyhow::Result<Self> {
        let mut args = vec!["receiver"];
        if keep {
            args.push("--keep");
        }
        Ok(Self {
            peer: PeerProcess::spawn(&args)?,
            http: reqwest::Client::new(),
        })
    }

    /// Its base URL (AEP's, and webhooks under `/hooks/`).
    pub fn url(&self) -> String {
        self.peer.url()
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, what: &str) -> anyhow::Result<T> {
        let url = format!("{}/freshet-peer/{what}", self.url());
        let answer = self.http.get(&url).send().await?.error_for_status()?;
        answer.json().await.with_context(|| url)
    }

    /// What it counted so far.
    pub async fn counts(&self) -> anyhow::Result<Counts> {
        self.get("counts").await
    }

    /// The webhook calls it answered 2xx (kept only with `keep`).
    pub async fn hooks(&self) -> anyhow::Result<Vec<Arrival>> {
        self.get("hooks").await
    }

    /// The AEP messages it accepted (kept only with `keep`).
    pub async fn messages(&self) -> anyhow::Result<Vec<Arrival>> {
        self.get("messages").await
    }
}
