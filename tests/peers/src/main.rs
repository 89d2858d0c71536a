//! `freshet-peers`: a loopback peer as a process of its own, for
//! `freshet bench`. Prints `listening on PORT` when ready; exits when its
//! stdin closes (its parent exited or dropped it).

use clap::Parser;
use freshet_peers::{emulator::Emulator, receiver::Receiver};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(version, about)]
enum Peer {
    /// The AEP/IMS/webhook/CRM receiver; what it saw is at `GET /freshet-peer/counts`, `/hooks`, `/messages`.
    Receiver {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Keep every message and webhook (for `/hooks` and `/messages`), not only count them.
        #[arg(long)]
        keep: bool,
    },
    /// The Snowflake emulator (needs the Python peers `.ci/setup` installs).
    Snowflake {
        /// Where it keeps its databases.
        #[arg(long)]
        db_dir: PathBuf,
        /// Rows per result chunk.
        #[arg(long, default_value_t = 10_000)]
        chunk_rows: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Held until stdin closes; dropping them stops the peer.
    let (port, _receiver, _emulator) = match Peer::parse() {
        Peer::Receiver { listen, keep } => {
            let receiver = Receiver::start_on(listen, keep).await?;
            (receiver.port(), Some(receiver), None)
        }
        Peer::Snowflake { db_dir, chunk_rows } => {
            std::fs::create_dir_all(&db_dir)?;
            let emulator = Emulator::start(&db_dir, chunk_rows)?;
            (emulator.port(), None, Some(emulator))
        }
    };
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {port}")?;
    stdout.flush()?;
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
        .await??;
    Ok(())
}
