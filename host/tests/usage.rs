//! The binary's own surface: help lists every subcommand, and a wrong
//! command line fails with a usage message. (Being an integration test of
//! this package, it also makes `cargo test --workspace` build the `freshet`
//! binary that the workspace's CLI tests in `tests/` run.)

use std::process::Command;

fn freshet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args(args)
        .output()
        .expect("running freshet")
}

#[test]
fn help_lists_every_subcommand() {
    let out = freshet(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "run", "validate", "plugin", "offsets", "dlq", "sample", "bench",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from:\n{help}"
        );
    }
}

#[test]
fn a_missing_argument_is_a_usage_error() {
    let out = freshet(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--config"), "{stderr}");
}

#[test]
fn an_unreadable_config_is_named() {
    let out = freshet(&["run", "--config", "/nonexistent/freshet.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/freshet.toml"),
        "{stderr}"
    );
}
