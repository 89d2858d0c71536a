//! `freshet-peers receiver` as `freshet bench` runs it: a process that says
//! where it listens, answers AEP and webhooks, reports what it saw over
//! HTTP, and exits when its parent lets go of its stdin.

use serde_json::{json, Value};
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[tokio::test]
async fn the_receiver_process_counts_keeps_and_exits_with_its_parent() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_freshet-peers"))
        .args(["receiver", "--keep"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;

    let batch = json!({"messages": [
        {"header": {}, "body": {"xdmEntity": {"_id": "a"}}},
        {"header": {}, "body": {"xdmEntity": {"_id": "b"}}},
    ]});
    let answer = http
        .post(format!("{url}/collection/batch/c1"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 207);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["responses"].as_array().unwrap().len(), 2);
    let hook = http
        .post(format!("{url}/hooks/order-confirmed"))
        .json(&json!({"orderId": "7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 200);

    let get = |what: &str| {
        let request = http.get(format!("{url}/freshet-peer/{what}"));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(
        get("counts").await,
        json!({"messages": 2, "requests": 1, "hooks": 1})
    );
    let hooks = get("hooks").await;
    assert_eq!(hooks[0]["body"], json!({"orderId": "7"}));
    let at = hooks[0]["at_unix_us"].as_u64().unwrap();
    assert!(
        at >= before,
        "the arrival {at} is stamped on the wall clock, after {before}"
    );
    let messages = get("messages").await;
    assert_eq!(messages[1]["body"]["body"]["xdmEntity"]["_id"], "b");

    drop(child.stdin.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the peer outlived its stdin"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
