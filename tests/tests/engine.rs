//! Loading components: compiled code cached on disk so a restart does not
//! recompile, one copy per content hash, and uploads that are too large or
//! too slow to compile refused without caching anything.

use freshet::plugin::{EngineSettings, LoadError, Origin, Runtime};
use freshet_tests::plugins;
use std::path::Path;
use std::time::Duration;

fn cache_entries(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_restart_loads_compiled_components_from_the_disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    let settings = EngineSettings {
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let plugin = Path::new(plugins::ORDERS_PLUGIN);

    let first = Runtime::new(&settings).unwrap();
    let compiled = first.load(plugin).unwrap();
    assert_eq!(compiled.origin(), Origin::Compiled);
    let entries = cache_entries(&dir.path().join("cache"));
    assert_eq!(entries.len(), 1, "{entries:?}");
    let written = std::fs::metadata(&entries[0]).unwrap().modified().unwrap();
    // A second pipeline on the same bytes shares the loaded component.
    assert!(first.load(plugin).unwrap().same(&compiled));
    drop((compiled, first));

    // "Restart": a new engine over the same cache folder.
    let second = Runtime::new(&settings).unwrap();
    let cached = second.load(plugin).unwrap();
    assert_eq!(cached.origin(), Origin::DiskCache);
    assert_eq!(cache_entries(&dir.path().join("cache")), entries);
    assert_eq!(
        std::fs::metadata(&entries[0]).unwrap().modified().unwrap(),
        written,
        "the cache entry was read, not rewritten"
    );
    // And it runs.
    let sandbox = freshet::plugin::Sandbox::new(
        cached,
        freshet::plugin::CallContext::new(
            "t",
            "t",
            Default::default(),
            [("tenant".to_owned(), "acme".to_owned())].into(),
            Default::default(),
        ),
    );
    let (result, _) = sandbox.probe(
        &[
            "id",
            "customer_email",
            "status",
            "amount",
            "currency",
            "updated_at",
        ]
        .map(String::from),
        &freshet::plugin::contract::Row {
            identity: "1@0".into(),
            cells: vec![
                freshet::plugin::contract::Value::Integer(1),
                freshet::plugin::contract::Value::Text("a@example.com".into()),
                freshet::plugin::contract::Value::Text("confirmed".into()),
                freshet::plugin::contract::Value::Decimal("1.50".into()),
                freshet::plugin::contract::Value::Text("EUR".into()),
                freshet::plugin::contract::Value::Timestamp(freshet::plugin::contract::Instant {
                    seconds: 0,
                    nanos: 0,
                }),
            ],
        },
    );
    assert_eq!(result.unwrap().0.len(), 1);
}

#[test]
fn a_component_over_the_size_limit_is_refused_before_compiling() {
    let runtime = Runtime::new(&EngineSettings {
        max_component_bytes: 4096,
        ..Default::default()
    })
    .unwrap();
    let size = std::fs::metadata(plugins::ORDERS_PLUGIN).unwrap().len();
    match runtime.load(Path::new(plugins::ORDERS_PLUGIN)) {
        Err(LoadError::TooLarge { size: s, limit }) => assert_eq!((s, limit), (size, 4096)),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded a component over the limit"),
    }
}

#[test]
fn a_compile_over_the_time_limit_is_refused_and_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(&EngineSettings {
        cache_dir: Some(dir.path().to_owned()),
        // Cranelift needs far longer than this for any real component.
        compile_timeout_ms: 1,
        ..Default::default()
    })
    .unwrap();
    match runtime.load(Path::new(plugins::HOSTILE_PLUGIN)) {
        Err(e @ LoadError::CompileTimeout(_)) => {
            assert!(e.to_string().contains("compile_timeout_ms"), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("compiled within 1 ms"),
    }
    // The abandoned compile finishes in the background; it must not leave
    // a cache entry that would let the refused component in next time.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cache_entries(dir.path()), Vec::<std::path::PathBuf>::new());
}

#[test]
fn bytes_that_are_not_a_component_are_named_as_such() {
    let runtime = Runtime::new(&EngineSettings::default()).unwrap();
    match runtime.load_bytes(b"\0asm\x01\0\0\0") {
        Err(LoadError::Contract(e)) | Err(LoadError::Invalid(e)) => {
            assert!(!e.is_empty())
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a core module is not a plugin"),
    }
    match runtime.load_bytes(b"not wasm at all") {
        Err(e @ LoadError::Invalid(_)) => {
            assert!(
                e.to_string()
                    .starts_with("not a valid WebAssembly component"),
                "{e}"
            )
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded garbage"),
    }
}
