//! A plugin that misbehaves on request, for the sandbox tests.
//!
//! `map-rows` reads each row's `status` text cell: `loop` spins forever,
//! `alloc` allocates without bound, `trap` panics, `recurse` recurses without
//! end, `huge` answers a 4 MiB body, `reject` rejects the row, `internal`
//! reports an internal error; anything else maps to one event. `decide` asks
//! for one webhook `hook` per event.

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
                    "trap" => panic!("the hostile plugin panics on purpose"),
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
                    "huge" => Ok(vec![Event {
                        id: row.identity.clone(),
                        timestamp: Instant {
                            seconds: 0,
                            nanos: 0,
                        },
                        body: format!("{{\"pad\":\"{}\"}}", "x".repeat(4 << 20)),
                    }]),
                    _ => Ok(vec![Event {
                        id: row.identity.clone(),
                        timestamp: Instant {
                            seconds: 1_700_000_000,
                            nanos: 0,
                        },
                        body: format!("{{\"status\":{:?}}}", behaviour),
                    }]),
                }
            })
            .collect()
    }

    fn decide(events: Vec<Event>) -> Vec<Result<Vec<Action>, PluginError>> {
        events
            .iter()
            .map(|e| {
                Ok(vec![Action::Webhook(WebhookRequest {
                    target: "hook".into(),
                    body: format!("{{\"id\":{:?}}}", e.id),
                })])
            })
            .collect()
    }
}

export!(Hostile);
