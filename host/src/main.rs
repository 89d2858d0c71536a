//! The `freshet` command: parses arguments, sets up logging, hands over to
//! [`freshet::cli`].

use clap::Parser as _;
use std::io::IsTerminal as _;

/// A page moves through many short-lived allocations (rows, events,
/// envelopes, keys) made on one thread and freed on another; glibc's
/// allocator spent about a sixth of the host's CPU on them, jemalloc a
/// fraction of that (end to end 1.10 × faster than the previous release on
/// glibc, BENCHMARKS.md; mimalloc measured slower: it faulted in fresh huge
/// pages throughout the run).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args = freshet::cli::Args::parse();
    raise_open_file_limit();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FRESHET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // One JSON object per line for log collectors; text for people.
    match std::env::var("FRESHET_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().flatten_event(true).init(),
        Ok("text") | Err(_) => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            eprintln!("error: FRESHET_LOG_FORMAT={other:?}: expected `json` or `text`");
            return std::process::ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(freshet::cli::main(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Lifts the soft limit on open files to the hard one: every pipeline keeps
/// its source's database files open, and a host of many tenants runs
/// hundreds of pipelines (the common soft default is 1,024 files).
fn raise_open_file_limit() {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit on this process with a valid pointer.
        #[allow(unsafe_code)]
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}
