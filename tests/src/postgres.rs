//! A real PostgreSQL server for the tests: Debian's package (`.ci/setup`
//! installs it), started once per test binary with `initdb` and `pg_ctl` in
//! a temporary folder, listening on loopback only. As root it runs as the
//! `postgres` user (the server refuses root). A watchdog process stops it
//! and removes its folder when the test binary exits, however it exits.
//! Each test takes a database of its own ([`Postgres::database`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The running server.
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    /// Whether commands run as the `postgres` user (the tests run as root).
    as_postgres: bool,
}

static SERVER: OnceLock<Postgres> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// Where the server's programs are: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/N/bin` (Debian keeps them off `PATH`).
fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt-get install postgresql; .ci/setup does)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found
        .pop()
        .expect("no /usr/lib/postgresql/N/bin/initdb (apt-get install postgresql)")
}

impl Postgres {
    /// The server of this test binary, started at first use.
    pub fn get() -> &'static Postgres {
        SERVER.get_or_init(Postgres::start)
    }

    fn start() -> Self {
        let root = tempfile::Builder::new()
            .prefix("freshet-pg-")
            .tempdir()
            .expect("postgres dir")
            .keep();
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root)
                .status()
                .expect("chown");
            assert!(chown.success(), "chown the postgres folder");
        }
        let server = Self {
            port: crate::ops::free_port(),
            bin: bin_dir(),
            data: root.join("data"),
            as_postgres,
        };
        let init = server
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&server.data)
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let tls = server.make_certificates(&root);
        // The role `tls_only` may connect only over TLS: a session that
        // works as it proves the client used TLS.
        let hba = server.data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        std::fs::write(
            &hba,
            format!("hostnossl all tls_only 127.0.0.1/32 reject\n{rules}"),
        )
        .expect("write pg_hba.conf");
        // Durability as in production (fsync on): the crash tests rely on
        // what a commit promises; the socket directory is the folder itself.
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200 \
             -c ssl=on -c ssl_cert_file={tls}/server.pem -c ssl_key_file={tls}/server.key",
            server.port,
            root.display(),
            tls = tls.display(),
        );
        std::fs::write(root.join("options"), &options).expect("write options");
        server.pg_ctl(&["start", "-w", "-t", "60", "-o", &options]);
        // The watchdog: stops the server and removes its folder once this
        // process is gone, even after a panic or a kill.
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf {root}",
            pid = std::process::id(),
            stop = server.shell(&format!(
                "{} -D {} stop -m immediate",
                server.bin.join("pg_ctl").display(),
                server.data.display()
            )),
            root = root.display(),
        );
        // Outlives this process on purpose: never waited for.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the postgres watchdog");
        let role = Command::new(server.bin.join("psql"))
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &server.url("postgres"),
                "-c",
            ])
            .arg("CREATE ROLE tls_only SUPERUSER LOGIN")
            .output()
            .expect("run psql");
        assert!(
            role.status.success(),
            "{}",
            String::from_utf8_lossy(&role.stderr)
        );
        server
    }

    /// A CA and a certificate for `localhost` and 127.0.0.1 signed by it,
    /// in `root/tls` (the key readable by the server's user alone).
    fn make_certificates(&self, root: &Path) -> PathBuf {
        let dir = root.join("tls");
        std::fs::create_dir_all(&dir).expect("tls dir");
        let script = "set -e
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
              -subj /CN=freshet-test-ca -keyout ca.key -out ca.pem
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
              -subj /CN=localhost -keyout server.key -out server.csr
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
              -days 2 -extfile ext -out server.pem
            chmod 600 server.key";
        let out = Command::new("sh")
            .args(["-c", script])
            .current_dir(&dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if self.as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(chown.success());
        }
        dir
    }

    /// A server program, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn shell(&self, line: &str) -> String {
        if self.as_postgres {
            format!("runuser -u postgres -- {line}")
        } else {
            line.to_owned()
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self.data.parent().expect("root").join("server.log");
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(args)
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server (fast: connections are cut, as in a failover).
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-w", "-m", "fast"]);
    }

    /// Starts it again after [`Postgres::stop`].
    pub fn start_again(&self) {
        let options = std::fs::read_to_string(self.data.parent().expect("root").join("options"))
            .expect("options");
        self.pg_ctl(&["start", "-w", "-t", "60", "-o", &options]);
    }

    /// A new, empty database; its connection URL.
    pub fn database(&self, prefix: &str) -> String {
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-p",
            ])
            .arg(self.port.to_string())
            .args(["-c", &format!("CREATE DATABASE {name}")])
            .stdout(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// The URL of database `name`, without TLS.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// The URL of database `name` as the role that may connect only over
    /// TLS, with `query` (e.g. `sslmode=verify-full&sslrootcert=...`).
    pub fn tls_url(&self, name: &str, query: &str) -> String {
        format!("postgres://tls_only@localhost:{}/{name}?{query}", self.port)
    }

    /// The test CA's certificate (PEM), which signed the server's.
    pub fn ca_file(&self) -> PathBuf {
        self.root().join("tls/ca.pem")
    }

    /// The folder holding the data directory.
    pub fn root(&self) -> &Path {
        self.data.parent().expect("root")
    }
}

/// Runs one SQL statement on `url` and returns its rows, each a vector of
/// text cells (`psql`'s unaligned output): for assertions on the store.
pub fn query(url: &str, sql: &str) -> Vec<Vec<String>> {
    let server = Postgres::get();
    let out = Command::new(server.bin.join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-F",
            "\t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// The `orders` table as a PostgreSQL application would declare it: exact
/// amounts, a `timestamptz`, an index for the cursor.
pub const ORDERS_TABLE: &str = "
CREATE TABLE orders (
    id             bigint PRIMARY KEY,
    customer_email text NOT NULL,
    status         text NOT NULL,
    amount         numeric(12, 2) NOT NULL,
    currency       char(3) NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX orders_cursor ON orders (updated_at, id);
";

/// A [`crate::Setup`] whose pipeline reads `orders` from a database of its
/// own on the shared server.
pub struct PostgresSetup {
    /// The folder, state and pipeline settings.
    pub setup: crate::Setup,
    /// The database's URL (also in the variable `source.url_env` names).
    pub url: String,
    /// A session on the database, for the test's writes.
    pub client: tokio_postgres::Client,
}

impl PostgresSetup {
    /// A new database with a table made by `table_sql`, read in `zone`,
    /// running `plugin`.
    pub async fn new(plugin: &str, table_sql: &str, zone: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let url = Postgres::get().database("src");
        let client = connect(&url).await;
        client
            .batch_execute(table_sql)
            .await
            .expect("create the table");
        // A variable per setup: tests run side by side in one process.
        let url_env = format!(
            "FRESHET_TEST_PG_SOURCE_{}",
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        std::env::set_var(&url_env, &url);
        let mut setup = crate::Setup::new(plugin);
        setup.pipeline.source = crate::OrdersSource::Postgres(crate::PostgresOrders {
            url_env,
            schema: "public".into(),
            timezone: zone.to_owned(),
        });
        Self { setup, url, client }
    }

    /// The typed `orders` table.
    pub async fn orders(plugin: &str) -> Self {
        Self::new(plugin, ORDERS_TABLE, "UTC").await
    }

    /// Inserts orders in one statement (`updated_at` as the instant its
    /// epoch milliseconds are).
    pub async fn insert(&self, orders: &[crate::Order]) {
        insert_orders(&self.client, orders).await;
    }
}

/// A session on `url`, its connection driven in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Inserts orders into `orders` through `client` (a session or an open
/// transaction), as one statement.
pub async fn insert_orders(client: &impl tokio_postgres::GenericClient, orders: &[crate::Order]) {
    for chunk in orders.chunks(1000) {
        let values = chunk
            .iter()
            .map(|o| {
                format!(
                    "({}, '{}', '{}', {}, '{}', to_timestamp({}::numeric / 1000))",
                    o.id, o.email, o.status, o.amount, o.currency, o.updated_at
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        client
            .execute(&format!("INSERT INTO orders VALUES {values}"), &[])
            .await
            .expect("insert orders");
    }
}
