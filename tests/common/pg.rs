//! A PostgreSQL server of the tests' own, for every test that runs against
//! the PostgreSQL backend (`server/tests/store.rs` includes this file too):
//! `initdb` in a temporary directory, listening on 127.0.0.1 at a free
//! port, stopped and its directory removed when the test process ends,
//! whether it ends well, panics or is killed. Never a system service.
//!
//! The binaries come from `MONITOR_TEST_PG_BIN` or Debian's
//! `/usr/lib/postgresql/N/bin`. Where there are none, [`Postgres::shared`]
//! prints one line naming what to install and the test returns.
//!
//! PostgreSQL refuses to run as root: as root (CI, this box) the server
//! runs as the `postgres` user the Debian package made, in a directory
//! handed to it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// What to install where the binaries are missing.
pub const INSTALL_HINT: &str = "needs postgresql-15 (apt install postgresql-15)";

/// One PostgreSQL server (a data directory and a postmaster).
pub struct Postgres {
    bin: PathBuf,
    /// Holds `data/`, the socket and the log; removed at the end.
    dir: PathBuf,
    pub port: u16,
    /// Run the server's programs as this user (`None`: as ourselves).
    run_as: Option<String>,
    /// The cleaner's stdin: when this process ends, the pipe closes and
    /// the cleaner stops the server and removes `dir`.
    cleaner: Mutex<Option<(Child, ChildStdin)>>,
}

/// Where PostgreSQL's server binaries are.
fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MONITOR_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    // /proc/self/status: "Uid: real effective ...".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

static SHARED: OnceLock<Option<Postgres>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

impl Postgres {
    /// The test process's shared server, started on first use; `None`
    /// (after printing `skipped: TEST: needs ...`) where PostgreSQL is not
    /// installed.
    pub fn shared(test: &str) -> Option<&'static Postgres> {
        let pg = SHARED
            .get_or_init(|| find_bin().map(Postgres::start_in))
            .as_ref();
        if pg.is_none() {
            println!("skipped: {test}: {INSTALL_HINT}");
        }
        pg
    }

    /// A server of its own (for a test that stops and restarts it); `None`
    /// as for [`Postgres::shared`].
    pub fn dedicated(test: &str) -> Option<Postgres> {
        let pg = find_bin().map(Postgres::start_in);
        if pg.is_none() {
            println!("skipped: {test}: {INSTALL_HINT}");
        }
        pg
    }

    fn start_in(bin: PathBuf) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("monitor-pg-")
            .tempdir()
            .expect("a temp dir for PostgreSQL")
            .keep();
        let run_as = is_root().then(|| "postgres".to_owned());
        if run_as.is_some() {
            let status = Command::new("chown")
                .args(["postgres:", dir.to_str().unwrap()])
                .status()
                .expect("chown");
            assert!(status.success(), "chown of {dir:?} to postgres");
        }
        let pg = Postgres {
            bin,
            port: free_port(),
            run_as,
            cleaner: Mutex::new(None),
            dir,
        };
        pg.start_cleaner();
        let out = pg
            .program("initdb")
            .args(["-D"])
            .arg(pg.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start();
        pg
    }

    /// A cleaner process that waits for this process's end (its stdin
    /// closing) and then stops the server and removes the directory.
    fn start_cleaner(&self) {
        let pg_ctl = self.command_line("pg_ctl");
        let script = format!(
            "trap '' INT TERM; read _; {pg_ctl} -D '{}' -m immediate stop >/dev/null 2>&1; \
             rm -rf '{}'",
            self.data().display(),
            self.dir.display()
        );
        let mut child = Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL cleaner");
        let stdin = child.stdin.take().unwrap();
        *self.cleaner.lock().unwrap() = Some((child, stdin));
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// How a shell runs `program` of the server's binaries, as its user.
    fn command_line(&self, program: &str) -> String {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(u) => format!(
                "setpriv --reuid={u} --regid={u} --clear-groups -- '{}'",
                path.display()
            ),
            None => format!("'{}'", path.display()),
        }
    }

    /// `program` of the server's binaries, run as its user.
    fn program(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={u}"),
                    format!("--regid={u}"),
                    "--clear-groups".into(),
                    "--".into(),
                ])
                .arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// Starts the postmaster and waits until it accepts connections.
    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
             -c shared_buffers=64MB",
            self.port,
            self.dir.display()
        );
        let out = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// Stops the postmaster: `fast` (sessions ended, a clean shutdown) or
    /// `immediate` (as a crash would leave it; recovery at the next start).
    pub fn stop(&self, mode: &str) {
        let out = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "stop"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new, empty database; returns its URL. `hint` names it after the
    /// test (a failed run's leftovers say whose they were).
    pub fn database(&self, hint: &str) -> String {
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let clean: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let name = format!("t{}_{n}_{clean}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(&name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` in database `db` (a name or a URL of this server) with
    /// psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let name = db.rsplit('/').next().unwrap_or(db);
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                name,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Closing the cleaner's stdin stops the server and removes the
        // directory; wait for it so the next test starts clean.
        if let Some((mut child, mut stdin)) = self.cleaner.lock().unwrap().take() {
            let _ = stdin.write_all(b"\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; whoever needs it binds
/// it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
