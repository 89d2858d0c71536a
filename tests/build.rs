//! Builds the guest plugins the tests run (a nested `cargo build --target
//! wasm32-wasip2` per guest) and writes their paths as constants into
//! `$OUT_DIR/plugins.rs`.
//!
//! Guests build into `<target>/wasm-guests`, shared by every profile, so a
//! guest compiles once per change. A missing wasm target is reported with the
//! command that installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (constant, crate folder from the workspace root, artifact name)
const GUESTS: &[(&str, &str, &str)] = &[
    ("ORDERS_PLUGIN", "plugins/rust", "freshet_orders_plugin"),
    (
        "HOSTILE_PLUGIN",
        "tests/plugins/hostile",
        "freshet_hostile_plugin",
    ),
];

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_owned();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out.
    let target = std::env::var_os("FRESHET_WASM_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            out.ancestors()
                .nth(4)
                .expect("OUT_DIR is inside the target folder")
                .join("wasm-guests")
        });
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-env-changed=FRESHET_WASM_TARGET_DIR");
    let mut consts = String::new();
    for (name, dir, artifact) in GUESTS {
        let dir = root.join(dir);
        for watched in ["src", "Cargo.toml", "Cargo.lock"] {
            println!("cargo:rerun-if-changed={}", dir.join(watched).display());
        }
        let wasm = build(&dir, &target, artifact);
        consts.push_str(&format!(
            "/// The `{artifact}` component.\npub const {name}: &str = {:?};\n",
            wasm.display()
        ));
    }
    consts.push_str(&format!(
        "/// Where tests cache compiled components.\npub const COMPONENT_CACHE: &str = {:?};\n",
        target.join("component-cache").display()
    ));
    std::fs::write(out.join("plugins.rs"), consts).expect("writing plugins.rs");
}

fn build(dir: &Path, target: &Path, artifact: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target)
        // The host build's flags are not the guest's.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("running cargo for a guest plugin");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("wasm32-wasip2")
            && (stderr.contains("not installed") || stderr.contains("can't find crate"))
        {
            panic!(
                "toolchain missing: install it with `rustup target add wasm32-wasip2`\n{stderr}"
            );
        }
        panic!(
            "building the guest plugin {} failed:\n{stderr}",
            dir.display()
        );
    }
    target
        .join("wasm32-wasip2/release")
        .join(format!("{artifact}.wasm"))
}
