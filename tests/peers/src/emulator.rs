//! A local Snowflake for tests and benchmarks: the fakesnow emulator behind
//! the project's adapter (`tests/snowflake/adapter.py`), started as a child
//! process on loopback. Tables are seeded through the product's own driver
//! (`freshet::bench::seed`).
//!
//! The emulator comes from `.ci/setup` (a Python virtual environment under
//! the cache folder). The child exits when this process does: the adapter
//! stops when its stdin closes.

use anyhow::{bail, Context as _};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The Python that has the test peers (fakesnow, aiosmtpd):
/// `FRESHET_PEERS_PYTHON`, else the virtual environment `.ci/setup` makes
/// under the cache folder.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FRESHET_PEERS_PYTHON") {
        return p.into();
    }
    let cache = std::env::var_os("FRESHET_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/freshet")))
        .unwrap_or_else(|| PathBuf::from(".cache/freshet"));
    cache.join("peers-venv/bin/python")
}

/// The adapter script: `FRESHET_SNOWFLAKE_ADAPTER`, else the checkout's
/// `tests/snowflake/adapter.py` found from the package `cargo test` runs
/// (its `CARGO_MANIFEST_DIR` at run time), else the one beside this crate's
/// sources when it was compiled. Run time first: a target folder shared by
/// several checkouts (CI's fresh clone) can hold this crate compiled in
/// another one, since moved or deleted.
pub fn adapter() -> PathBuf {
    if let Some(path) = std::env::var_os("FRESHET_SNOWFLAKE_ADAPTER") {
        return PathBuf::from(path);
    }
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../snowflake/adapter.py");
    let running = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let found = running
        .iter()
        .flat_map(|dir| dir.ancestors())
        .find_map(|dir| {
            let script = dir.join("tests/snowflake/adapter.py");
            script.is_file().then_some(script)
        });
    found.unwrap_or(compiled)
}

/// What an emulator saw.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct EmulatorStats {
    /// Every SQL text received, in order.
    pub queries: Vec<String>,
    /// Result chunks downloaded.
    pub chunks_served: u64,
    /// Logins (new sessions).
    pub logins: u64,
}

/// A running emulator.
pub struct Emulator {
    child: Child,
    port: u16,
    db_dir: PathBuf,
    chunk_rows: usize,
}

impl Emulator {
    /// Starts one keeping its databases in `db_dir`, serving results of
    /// more than `chunk_rows` rows in chunks.
    pub fn start(db_dir: &Path, chunk_rows: usize) -> anyhow::Result<Self> {
        let (child, port) = spawn(db_dir, 0, chunk_rows)?;
        Ok(Self {
            child,
            port,
            db_dir: db_dir.to_owned(),
            chunk_rows,
        })
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base URL (`source.endpoint`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL): connections drop, sessions are forgotten.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and databases, after [`Self::kill`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let (child, _) = spawn(&self.db_dir, self.port, self.chunk_rows)?;
        self.child = child;
        Ok(())
    }

    /// What the emulator saw since it (re)started.
    pub async fn stats(&self) -> anyhow::Result<EmulatorStats> {
        Ok(
            reqwest::get(format!("{}/freshet-adapter/stats", self.url()))
                .await?
                .error_for_status()?
                .json()
                .await?,
        )
    }

    /// Makes every current session expire, as Snowflake's do after hours.
    pub async fn expire_sessions(&self) -> anyhow::Result<()> {
        reqwest::Client::new()
            .post(format!("{}/freshet-adapter/expire-sessions", self.url()))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(db_dir: &Path, port: u16, chunk_rows: usize) -> anyhow::Result<(Child, u16)> {
    let args = [
        "--port".into(),
        port.to_string().into(),
        "--chunk-rows".into(),
        chunk_rows.to_string().into(),
        "--db-dir".into(),
        db_dir.as_os_str().to_owned(),
    ];
    spawn_python(&adapter(), &args)
}

/// Starts a Python peer of the tests (a script that prints `listening on
/// PORT` when ready and exits when its stdin closes) with the peers'
/// Python; returns it and its port.
pub fn spawn_python(script: &Path, args: &[std::ffi::OsString]) -> anyhow::Result<(Child, u16)> {
    let python = python();
    if !python.exists() {
        bail!(
            "the tests' Python peers are not installed ({} is missing): run .ci/setup, which installs them into that virtual environment",
            python.display()
        );
    }
    let mut child = Command::new(&python)
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    let stdout = child.stdout.take().context("peer stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(port) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        bail!(
            "{} did not start (it printed {line:?}); see its errors above",
            script.display()
        );
    };
    Ok((child, port.parse()?))
}
