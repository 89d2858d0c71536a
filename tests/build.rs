//! Builds the guest plugins the tests run and writes their paths as
//! constants into `$OUT_DIR/plugins.rs`: the Rust guests with a nested `cargo
//! build --target wasm32-wasip2` each, the Python (both worlds), JavaScript
//! (both worlds, both engines), C and Go orders plugins with their own `plugins/<lang>/build` scripts
//! (side by side).
//!
//! Guests build into `<target>/wasm-guests`, shared by every profile, so a
//! guest compiles once per change. A missing toolchain is reported with the
//! command that installs it: the scripts run with `FRESHET_NO_INSTALL=1`, so
//! nothing is downloaded in the middle of a build (`.ci/setup` installs them).

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

/// One orders plugin a `plugins/<lang>/build` script makes.
struct Polyglot {
    constant: &'static str,
    /// The language folder under `plugins/`.
    lang: &'static str,
    /// The build script's arguments beyond `-o OUT`.
    args: &'static [&'static str],
    /// The folder under `polyglot/` it is built into.
    out: &'static str,
    /// What its build watches, from the repository's root.
    watched: &'static [&'static str],
}

const POLYGLOT: &[Polyglot] = &[
    Polyglot {
        constant: "PYTHON_PLUGIN",
        lang: "python",
        args: &[],
        out: "python",
        watched: &["plugins/python/src", "plugins/python/build"],
    },
    Polyglot {
        constant: "PYTHON_TYPED_PLUGIN",
        lang: "python",
        args: &["--world", "typed"],
        out: "python-typed",
        watched: &["plugins/python/src", "plugins/python/build"],
    },
    Polyglot {
        constant: "PY_HELPER_PLUGIN",
        lang: "python",
        args: &["--entry", "tests/plugins/py-helper/cases.py"],
        out: "py-helper",
        watched: &[
            "plugins/python/src",
            "plugins/python/build",
            "tests/plugins/py-helper",
        ],
    },
    Polyglot {
        constant: "PY_HELPER_TYPED_PLUGIN",
        lang: "python",
        args: &[
            "--entry",
            "tests/plugins/py-helper/cases.py",
            "--world",
            "typed",
        ],
        out: "py-helper-typed",
        watched: &[
            "plugins/python/src",
            "plugins/python/build",
            "tests/plugins/py-helper",
        ],
    },
    Polyglot {
        constant: "JS_PLUGIN",
        lang: "js",
        args: &[],
        out: "js",
        watched: &[
            "plugins/js/src",
            "plugins/js/build",
            "plugins/js/package-lock.json",
        ],
    },
    Polyglot {
        constant: "JS_TYPED_PLUGIN",
        lang: "js",
        args: &["--world", "typed"],
        out: "js-typed",
        watched: &[
            "plugins/js/src",
            "plugins/js/build",
            "plugins/js/package-lock.json",
        ],
    },
    Polyglot {
        constant: "JS_QUICKJS_PLUGIN",
        lang: "js",
        args: &["--engine", "quickjs"],
        out: "js-quickjs",
        watched: &[
            "plugins/js/src",
            "plugins/js/build",
            "plugins/js/package-lock.json",
        ],
    },
    Polyglot {
        constant: "JS_HELPER_PLUGIN",
        lang: "js",
        args: &["--entry", "tests/plugins/js-helper/app.js"],
        out: "js-helper",
        watched: &[
            "plugins/js/src",
            "plugins/js/build",
            "plugins/js/package-lock.json",
            "tests/plugins/js-helper",
        ],
    },
    Polyglot {
        constant: "JS_HELPER_QUICKJS_PLUGIN",
        lang: "js",
        args: &[
            "--entry",
            "tests/plugins/js-helper/app.js",
            "--engine",
            "quickjs",
        ],
        out: "js-helper-quickjs",
        watched: &[
            "plugins/js/src",
            "plugins/js/build",
            "plugins/js/package-lock.json",
            "tests/plugins/js-helper",
        ],
    },
    Polyglot {
        constant: "C_PLUGIN",
        lang: "c",
        args: &[],
        out: "c",
        watched: &["plugins/c/src", "plugins/c/build"],
    },
    Polyglot {
        constant: "GO_PLUGIN",
        lang: "go",
        args: &[],
        out: "go",
        watched: &["plugins/go/src", "plugins/go/build"],
    },
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
    println!("cargo:rerun-if-env-changed=FRESHET_CACHE");
    let mut consts = String::new();
    println!(
        "cargo:rerun-if-changed={}",
        root.join("plugins/toolchain.sh").display()
    );
    let polyglot = std::thread::scope(|scope| {
        let builds: Vec<_> = POLYGLOT
            .iter()
            .map(|p| {
                let dir = root.join("plugins").join(p.lang);
                for w in p.watched {
                    println!("cargo:rerun-if-changed={}", root.join(w).display());
                }
                let out = target.join("polyglot").join(p.out).join("orders.wasm");
                scope.spawn(move || (p.constant, p.out, build_script(&dir, p.args, &out), out))
            })
            .collect();
        builds
            .into_iter()
            .map(|b| b.join().expect("a build thread panicked"))
            .collect::<Vec<_>>()
    });
    for (name, lang, result, out) in polyglot {
        if let Err(message) = result {
            panic!("building polyglot/{lang} failed:\n{message}");
        }
        consts.push_str(&format!(
            "/// Built by `plugins/{lang}/build` into `polyglot/{lang}`.\npub const {name}: &str = {:?};\n",
            out.display()
        ));
    }
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

/// Runs `plugins/<lang>/build ARGS -o OUT` without installing anything;
/// the script's own "toolchain missing: ...; install with: ..." is the error.
fn build_script(dir: &Path, args: &[&str], out: &Path) -> Result<(), String> {
    let output = Command::new("bash")
        .arg(dir.join("build"))
        .args(args)
        .arg("-o")
        .arg(out)
        // Paths in `args` are from the repository's root.
        .current_dir(dir.parent().and_then(Path::parent).expect("plugins/<lang>"))
        .env("FRESHET_NO_INSTALL", "1")
        // The host build's target folder is not the toolchains' business.
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|e| format!("running {}: {e}", dir.join("build").display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    match stderr.lines().find(|l| l.starts_with("toolchain missing")) {
        Some(line) => Err(format!(
            "{line} (or run .ci/setup, which installs every toolchain)"
        )),
        None => Err(stderr.into_owned()),
    }
}
