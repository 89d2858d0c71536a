//! A plugin that misbehaves on request, for the sandbox tests.
//!
//! `map-rows` reads each row's `status` text cell: `loop` spins forever,
//! `alloc` allocates without bound, `trap` panics, `recurse` recurses without
//! end, `huge` answers a 4 MiB body, `reject` rejects the row, `internal`
//! reports an internal error, `log-flood` logs without end, `chatty` logs
//! ten lines and maps normally; `probe` tries every ambient capability (a file,
//! an environment variable, a socket, the clock, randomness) and reports what
//! it got in the event body; `pair` maps to two events (`ID#a`, `ID#b`), and
//! deciding on the first costs about 40M instructions (more than the default
//! budget); anything else maps to one event. `decide` asks for one webhook
//! `hook` per event.

use freshet::plugin::host::{log, Level};
use freshet::plugin::types::{Instant, Value, WebhookRequest};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "pipeline-plugin",
});

struct Hostile;

#[inline(never)]
fn recurse(n: u64) -> u64 {
    // The volatile-ish arithmetic keeps the call from becoming a loop.
    if n == u64::MAX {
        0
    } else {
        recurse(n + 1).wrapping_add(std::hint::black_box(n))
    }
}

/// Tries what a plugin must not be able to do; reports each outcome.
fn probe() -> String {
    let file = match std::fs::read("/etc/passwd") {
        Ok(bytes) => format!("read {} bytes", bytes.len()),
        Err(e) => format!("denied: {e}"),
    };
    let dir = match std::fs::read_dir(".") {
        Ok(entries) => format!("listed {} entries", entries.count()),
        Err(e) => format!("denied: {e}"),
    };
    let env = format!("{} variables", std::env::vars().count());
    let port = freshet::plugin::host::get_setting("probe_port").unwrap_or_else(|| "22".into());
    let socket = match std::net::TcpStream::connect(format!("127.0.0.1:{port}")) {
        Ok(_) => "connected".to_owned(),
        Err(e) => format!("denied: {e}"),
    };
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX);
    let mut random = [0u8; 8];
    let random_ok = getrandom_like(&mut random);
    format!(
        "{{\"file\":{file:?},\"dir\":{dir:?},\"env\":{env:?},\"socket\":{socket:?},\"clock_secs\":{clock},\"random\":\"{random_ok}\"}}"
    )
}

/// Random bytes through std's hasher seeding (which reads WASI random).
fn getrandom_like(out: &mut [u8; 8]) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    *out = h.finish().to_le_bytes();
    format!("{:016x}", u64::from_le_bytes(*out))
}

impl Guest for Hostile {
    fn map_rows(batch: RowBatch) -> Vec<Result<Vec<Event>, PluginError>> {
        let status = batch.columns.iter().position(|c| c == "status");
        batch
            .rows
            .iter()
            .map(|row| {
                let behaviour = match status.map(|i| &row.cells[i]) {
                    Some(Value::Text(s)) => s.as_str(),
                    _ => "",
                };
                match behaviour {
                    "loop" => loop {
                        std::hint::black_box(());
                    },
                    "alloc" => {
                        let mut hoard: Vec<Vec<u8>> = Vec::new();
                        loop {
                            hoard.push(vec![0u8; 1 << 20]);
                            std::hint::black_box(&hoard);
                        }
                    }
                    // Keeps 24 MiB past the call and answers normally.
                    "leak" => {
                        std::mem::forget(std::hint::black_box(vec![0u8; 24 << 20]));
                        Ok(vec![Event {
                            id: row.identity.clone(),
                            timestamp: Instant {
                                seconds: 1_700_000_000,
                                nanos: 0,
                            },
                            body: "{\"status\":\"leak\"}".into(),
                        }])
                    }
                    "trap" => panic!("the hostile plugin panics on purpose"),
                    "log-flood" => {
                        let line = "flood ".repeat(170);
                        loop {
                            log(Level::Info, &line);
                        }
                    }
                    "recurse" => {
                        std::hint::black_box(recurse(0));
                        Ok(Vec::new())
                    }
                    "reject" => Err(PluginError::Reject(format!(
                        "row {} is rejected on purpose",
                        row.identity
                    ))),
                    "internal" => Err(PluginError::Internal(
                        "an internal failure on purpose".into(),
                    )),
                    "probe" => Ok(vec![Event {
                        id: row.identity.clone(),
                        timestamp: Instant {
                            seconds: 0,
                            nanos: 0,
                        },
                        body: probe(),
                    }]),
                    "pair" => Ok(["a", "b"]
                        .iter()
                        .map(|part| Event {
                            id: format!("{}#{part}", row.identity),
                            timestamp: Instant {
                                seconds: 1_700_000_000,
                                nanos: 0,
                            },
                            body: format!("{{\"status\":\"pair\",\"part\":\"{part}\"}}"),
                        })
                        .collect()),
                    // Two events that leave their `_id` to the host.
                    "no-ids" => Ok((0..2)
                        .map(|part| Event {
                            id: String::new(),
                            timestamp: Instant {
                                seconds: 1_700_000_000,
                                nanos: 0,
                            },
                            body: format!("{{\"part\":{part}}}"),
                        })
                        .collect()),
                    "huge" => Ok(vec![Event {
                        id: row.identity.clone(),
                        timestamp: Instant {
                            seconds: 0,
                            nanos: 0,
                        },
                        body: format!("{{\"pad\":\"{}\"}}", "x".repeat(4 << 20)),
                    }]),
                    other => {
                        if other == "print" {
                            // stdout and stderr lead nowhere; writing must not hurt the host.
                            println!("row {} to stdout", row.identity);
                            eprintln!("row {} to stderr", row.identity);
                        }
                        if other == "chatty" {
                            for i in 0..10 {
                                log(Level::Info, &format!("row {} says {i}", row.identity));
                            }
                        }
                        Ok(vec![Event {
                            id: row.identity.clone(),
                            timestamp: Instant {
                                seconds: 1_700_000_000,
                                nanos: 0,
                            },
                            body: format!("{{\"status\":{:?}}}", behaviour),
                        }])
                    }
                }
            })
            .collect()
    }

    fn decide(events: Vec<Event>) -> Vec<Result<Vec<Action>, PluginError>> {
        events
            .iter()
            .map(|e| {
                if e.body.contains("\"part\":\"a\"") {
                    // Costly to decide: fails at the default budget.
                    let mut x = 0u64;
                    for i in 0..10_000_000u64 {
                        x = std::hint::black_box(x.wrapping_add(i));
                    }
                    std::hint::black_box(x);
                }
                Ok(vec![Action::Webhook(WebhookRequest {
                    target: "hook".into(),
                    body: format!("{{\"id\":{:?}}}", e.id),
                })])
            })
            .collect()
    }
}

export!(Hostile);
