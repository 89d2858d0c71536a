//! The file sink: the exact envelopes AEP would get, one JSON line each,
//! flushed to disk before the pipeline commits its offset.

use super::{DeliverError, Delivery, Message, Sink};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Appends envelopes to an NDJSON file.
pub struct FileSink {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl FileSink {
    /// Opens (creating) the file for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn deliver(&self, messages: &[Message]) -> Result<Vec<Delivery>, DeliverError> {
        let mut buf = String::with_capacity(messages.iter().map(|m| m.json.len() + 1).sum());
        for m in messages {
            buf.push_str(&m.json);
            buf.push('\n');
        }
        let io = |e: std::io::Error| DeliverError::Io(format!("{}: {e}", self.path.display()));
        let mut file = self
            .file
            .lock()
            .map_err(|_| DeliverError::Io("file sink lock poisoned".into()))?;
        file.write_all(buf.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(vec![Delivery::Delivered; messages.len()])
    }
}
