//! The record target: each action as a JSON line in a file, synced once per
//! page before the pipeline commits. Serves the quickstart and dry runs, and any action
//! kind whose real executor a deployment does not use.

use super::{ActionRequest, ActionResult, ActionView};
use anyhow::Context as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Appends action requests to an NDJSON file.
pub struct RecordTarget {
    path: PathBuf,
    file: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl RecordTarget {
    /// Opens the file for appending; `key` names the target in errors.
    pub fn open(path: &Path, key: &str) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{key}.path: creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{key}.path: opening {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(std::io::BufWriter::with_capacity(256 * 1024, file)),
        })
    }

    /// Makes every recorded line durable; the pipeline calls it once per page,
    /// before committing, rather than syncing each line.
    pub fn sync(&self) -> std::io::Result<()> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("lock poisoned"))?;
        file.flush()?;
        file.get_ref().sync_data()
    }

    /// Writes one action (durable after [`RecordTarget::sync`]).
    pub async fn record(&self, request: &ActionRequest) -> ActionResult {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            idempotency_key: &'a str,
            identity: &'a str,
            action: ActionView<'a>,
        }
        let line = Line {
            idempotency_key: &request.key,
            identity: &request.identity,
            action: ActionView(&request.action),
        };
        let line = match serde_json::to_string(&line) {
            Ok(line) => line,
            Err(e) => {
                return ActionResult::Failed {
                    outcome: "error".into(),
                    reason: format!("serializing the action: {e}"),
                }
            }
        };
        let written = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("lock poisoned"))
            .and_then(|mut f| {
                f.write_all(line.as_bytes())?;
                f.write_all(b"\n")
            });
        match written {
            Ok(()) => ActionResult::Done("recorded".into()),
            Err(e) => ActionResult::Failed {
                outcome: "error".into(),
                reason: format!("{}: {e}", self.path.display()),
            },
        }
    }
}
