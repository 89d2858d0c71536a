//! A real SMTP server for the e-mail tests: aiosmtpd running
//! `tests/smtp/server.py` on loopback, each accepted message a file.

use freshet_peers::emulator::spawn_python;
use std::path::{Path, PathBuf};
use std::process::Child;

/// A running SMTP server.
pub struct SmtpServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

/// One received message, parsed.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `To:`.
    pub to: String,
    /// `From:`.
    pub from: String,
    /// `Subject:` (decoded).
    pub subject: String,
    /// `Message-ID:`.
    pub message_id: String,
    /// The `text/plain` part (decoded).
    pub text: String,
    /// The `text/html` part (decoded), if any.
    pub html: Option<String>,
}

impl SmtpServer {
    /// Starts one; with `auth`, AUTH with that user and password is required.
    pub fn start(auth: Option<(&str, &str)>) -> anyhow::Result<Self> {
        Self::start_with(auth, None)
    }

    /// Starts one requiring STARTTLS with this certificate and key (PEM).
    pub fn start_tls(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Self::start_with(None, Some((cert, key)))
    }

    fn start_with(auth: Option<(&str, &str)>, tls: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut args = vec!["--dir".into(), dir.path().as_os_str().to_owned()];
        if let Some((cert, key)) = tls {
            args.extend(["--cert".into(), cert.into(), "--key".into(), key.into()]);
        }
        if let Some((user, password)) = auth {
            args.extend([
                "--user".into(),
                user.into(),
                "--password".into(),
                password.into(),
            ]);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp/server.py");
        let (child, port) = spawn_python(&script, &args)?;
        Ok(Self { child, port, dir })
    }

    /// Every message accepted so far, in arrival order.
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        files.sort();
        files
            .iter()
            .map(|p| parse(&std::fs::read(p).expect("a message file")))
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(raw: &[u8]) -> Mail {
    let mail = mailparse::parse_mail(raw).expect("a MIME message");
    let header = |name: &str| {
        mail.headers
            .iter()
            .find(|h| h.get_key().eq_ignore_ascii_case(name))
            .map(|h| h.get_value())
            .unwrap_or_default()
    };
    let mut text = String::new();
    let mut html = None;
    let parts = if mail.subparts.is_empty() {
        vec![&mail]
    } else {
        mail.subparts.iter().collect()
    };
    for part in parts {
        let body = part.get_body().expect("a decodable body");
        match part.ctype.mimetype.as_str() {
            "text/html" => html = Some(body),
            _ => text = body,
        }
    }
    Mail {
        to: header("To"),
        from: header("From"),
        subject: header("Subject"),
        message_id: header("Message-ID"),
        text,
        html,
    }
}
