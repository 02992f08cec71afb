//! Test harness for the end-to-end tests: start the real `monitor-server`
//! and `monitor-agent` binaries on loopback, drive `monitorctl`, and poll
//! for conditions with deadlines (never a guessed sleep).
//!
//! Every child process is killed when its handle drops, so a failing test
//! leaves nothing running.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod fuzz;
pub mod pg;
// Used by the test crates that start Prometheus or PostgreSQL, not all.
#[allow(unused_imports)]
pub use pg::free_port;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Directory holding the workspace's binaries (target/debug or the like):
/// the test executable lives in its `deps/`.
///
/// The first call builds every binary of the workspace into it with the
/// same cargo, profile and target dir. `cargo test -p monitor` or
/// `cargo test --test faults` alone builds only this package, so without
/// this the tests would find no binaries, or silently run stale ones built
/// before the last change to the agent or the server. After a plain
/// `cargo test` at the root (same features) the build is a no-op.
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary is in target/<profile>/deps")
            .to_path_buf();
        let (Some(profile_dir), Some(target_dir)) = (dir.file_name(), dir.parent()) else {
            panic!("test binary is not in target/<profile>/deps: {exe:?}");
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--workspace", "--bins", "--target-dir"])
            .arg(target_dir);
        // Cargo runs this test with the variables it sets for a crate
        // (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Build scripts that track
        // them (ring's does) would see them change between this build and
        // the next `cargo test` from a shell, and both would rebuild ring
        // and everything above it (about 40 s each time): give the inner
        // cargo the environment a shell would.
        for (key, _) in std::env::vars_os() {
            let Some(k) = key.to_str() else { continue };
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || matches!(
                    k,
                    "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                )
            {
                cmd.env_remove(&key);
            }
        }
        // Cargo's output directory per profile: `dev` and `test` use debug/,
        // `release` and `bench` release/, a custom profile its own name.
        match profile_dir.to_str() {
            Some("debug") => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(custom) => {
                cmd.args(["--profile", custom]);
            }
            None => panic!("profile directory {profile_dir:?} is not UTF-8"),
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        for b in ["monitor-agent", "monitor-server", "monitorctl"] {
            assert!(dir.join(b).exists(), "{b} not built into {dir:?}");
        }
        dir
    })
    .clone()
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Polls `f` until it returns `Some` or `timeout` passes (then panics with
/// `what`). Polls every 50 ms.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test's scratch directory, made and removed by `tempfile`, named after
/// the test (`monitor-e2e-TAG-XXXXXX` under the system temp dir) so a
/// leftover one says whose it was.
///
/// A test that passes leaves nothing behind. A test that fails keeps its
/// directory (the database, spool and allowlist it ran with) and says where
/// it is, so the failure can be looked into after the fact.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("monitor-e2e-{tag}-"))
            .tempdir()
            .expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.path().join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!("kept {} for the failed test", self.path().display());
        }
    }
}

/// Lines a child wrote to stderr, collected by a thread. The third field
/// turns true when the thread has read the stream to its end.
#[derive(Clone, Default)]
pub struct Log(
    Arc<Mutex<Vec<String>>>,
    Arc<Mutex<Vec<Instant>>>,
    Arc<std::sync::atomic::AtomicBool>,
);

impl Log {
    fn follow(&self, stream: impl std::io::Read + Send + 'static, echo_prefix: String) {
        let lines = Arc::clone(&self.0);
        let times = Arc::clone(&self.1);
        let ended = Arc::clone(&self.2);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("MONITOR_TEST_ECHO").is_some() {
                    eprintln!("{echo_prefix}{line}");
                }
                // Lock order: lines, then times (here and in `timed`).
                let mut l = lines.lock().unwrap();
                l.push(line);
                times.lock().unwrap().push(Instant::now());
            }
            ended.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// True once the stream has been read to its end (the writer closed it).
    pub fn ended(&self) -> bool {
        self.2.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When each line was read (by this process's clock), with the line.
    pub fn timed(&self) -> Vec<(Instant, String)> {
        let lines = self.0.lock().unwrap();
        let times = self.1.lock().unwrap();
        times.iter().copied().zip(lines.iter().cloned()).collect()
    }

    /// When the first line containing `needle` read at or after `since`
    /// arrived.
    pub fn first_after(&self, needle: &str, since: Instant) -> Option<Instant> {
        self.timed()
            .into_iter()
            .find(|(t, l)| *t >= since && l.contains(needle))
            .map(|(t, _)| t)
    }

    /// Lines containing `needle` read at or after `since`.
    pub fn count_after(&self, needle: &str, since: Instant) -> usize {
        self.timed()
            .into_iter()
            .filter(|(t, l)| *t >= since && l.contains(needle))
            .count()
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn count(&self, needle: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn dump(&self) -> String {
        self.lines().join("\n")
    }
}

/// A running child process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub stderr: Log,
    pub stdout: Log,
    /// A directory that lives as long as the process (an agent's default
    /// state directory).
    scratch: Option<tempfile::TempDir>,
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &str) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stderr = Log::default();
        let stdout = Log::default();
        stderr.follow(child.stderr.take().expect("stderr"), format!("[{name}] "));
        stdout.follow(
            child.stdout.take().expect("stdout"),
            format!("[{name} out] "),
        );
        Proc {
            child,
            stderr,
            stdout,
            scratch: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. "TERM", "KILL", "STOP", "CONT").
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} {}", self.pid());
    }

    /// Waits for the process to exit, up to `timeout`.
    ///
    /// Then waits (up to 5 s more) until everything the process wrote to
    /// stdout and stderr has been collected, so assertions on its last lines
    /// do not race the reader threads. A grandchild still holding the pipes
    /// open only costs that wait.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = wait_for("process exit", timeout, || {
            self.child.try_wait().ok().flatten()
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(self.stderr.ended() && self.stdout.ended()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        status
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running monitor-server on loopback: with TLS (the default; its CA,
/// certificate and the local operator's credential in `tls/` beside the
/// database), or in plain text when started with `--insecure`.
pub struct Server {
    pub proc: Proc,
    pub agents_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub db: PathBuf,
    /// The network namespace it runs in (`ip netns exec`), if not ours;
    /// `ctl` runs monitorctl there too.
    pub netns: Option<String>,
    /// Whether it speaks TLS (started without `--insecure`).
    pub tls: bool,
}

/// Where `ip` is (it lives in sbin, which a test's PATH may lack).
pub fn ip_bin() -> Option<PathBuf> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// `program`, run inside the network namespace `netns` when one is given.
pub fn command_in(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut cmd = Command::new(ip_bin().expect("ip(8) for a network namespace"));
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
    }
}

/// The backend switch of the end-to-end tests: `MONITOR_TEST_DB=postgres`
/// runs every server on a PostgreSQL database of the tests' own server
/// (see `pg.rs`) instead of the SQLite file `db`: one database per `db`
/// path, so a server restarted on the same path finds its data. Its URL is
/// kept in a file beside `db` (which [`Server::start_replica`] writes
/// itself). Tests about SQLite's file itself stay on SQLite through
/// [`sqlite_only`].
pub fn postgres_for(db: &Path) -> Option<String> {
    let kept = db.with_extension("pg-url");
    if let Ok(url) = std::fs::read_to_string(&kept) {
        return Some(url);
    }
    if !on_postgres() || db.with_extension("sqlite-only").exists() {
        return None;
    }
    let pg = pg::Postgres::shared("MONITOR_TEST_DB=postgres")
        .unwrap_or_else(|| panic!("MONITOR_TEST_DB=postgres {}", pg::INSTALL_HINT));
    let name = db
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let url = pg.database(&name);
    std::fs::write(&kept, &url).unwrap();
    Some(url)
}

/// Keeps a test that reads the server's SQLite file itself on SQLite
/// whatever `MONITOR_TEST_DB` says; returns `db`.
pub fn sqlite_only(db: &Path) -> &Path {
    std::fs::write(db.with_extension("sqlite-only"), "").unwrap();
    db
}

/// Whether the end-to-end tests run on PostgreSQL (see [`postgres_for`]).
pub fn on_postgres() -> bool {
    std::env::var("MONITOR_TEST_DB").as_deref() == Ok("postgres")
}

impl Server {
    /// Starts a server on kernel-chosen loopback ports.
    pub fn start(db: &Path) -> Server {
        Server::start_with(db, "127.0.0.1:0", &[])
    }

    /// A replica: a server on the PostgreSQL database `url` that other
    /// replicas share, with its own TLS directory (and test files) in
    /// `dir`.
    pub fn start_replica(dir: &Path, url: &str, extra: &[&str]) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let db = dir.join("monitor.db");
        std::fs::write(db.with_extension("pg-url"), url).unwrap();
        Server::start_with(&db, "127.0.0.1:0", extra)
    }

    /// Starts a server listening for agents on `listen` (e.g. the address
    /// of a previous run, to restart in place).
    pub fn start_with(db: &Path, listen: &str, extra: &[&str]) -> Server {
        Server::start_opts(db, listen, extra, &[], None)
    }

    /// Like [`Server::start_with`], with extra environment variables and,
    /// optionally, inside a network namespace (`ip netns exec NS`; the
    /// process keeps its pid, so signals reach the server itself).
    pub fn start_opts(
        db: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        netns: Option<&str>,
    ) -> Server {
        Server::start_wrapped(db, listen, extra, env, netns, |cmd| cmd)
    }

    /// Like [`Server::start_opts`], with the server's command passed
    /// through `wrap` before it starts (e.g. [`under_umask`]).
    pub fn start_wrapped(
        db: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        netns: Option<&str>,
        wrap: impl FnOnce(Command) -> Command,
    ) -> Server {
        let mut cmd = command_in(netns, &bin("monitor-server"));
        // The HTTP listener on a free port unless the test names one (its
        // default port would clash between tests running at once).
        if !extra.contains(&"--http-listen") {
            cmd.args(["--http-listen", "127.0.0.1:0"]);
        }
        cmd.args(["--listen", listen, "--admin-listen", "127.0.0.1:0"]);
        match postgres_for(db) {
            // The TLS directory stays beside the test's (unused) file.
            Some(url) => cmd
                .arg("--db")
                .arg(url)
                .arg("--tls-dir")
                .arg(db.parent().expect("the db is in a dir").join("tls")),
            None => cmd.arg("--db").arg(db),
        };
        cmd.args(extra).env("MONITOR_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(wrap(cmd), "server");
        let (agents_addr, admin_addr) = listening_addrs(&proc);
        let server = Server {
            proc,
            agents_addr,
            admin_addr,
            db: db.to_path_buf(),
            netns: netns.map(str::to_owned),
            tls: !extra.contains(&"--insecure"),
        };
        // The test's operator signs commands with a key of the test's
        // dir: registered with a TLS server (join tokens then carry it to
        // the agents), and written as an operators file for agents that do
        // not enrol with a token.
        if server.tls {
            server.ctl_ok(&["key", "register"]);
        }
        let line = server.ctl_ok(&["key", "show"]);
        std::fs::write(server.operators_file(), line).unwrap();
        server
    }

    /// The test operator's signing key (made by monitorctl on first use).
    pub fn signing_key(&self) -> PathBuf {
        self.dir().join("signing.key")
    }

    /// An operators file trusting the test operator's key.
    pub fn operators_file(&self) -> PathBuf {
        self.dir().join("operators")
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.agents_addr)
    }

    pub fn admin_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.admin_addr)
    }

    /// The directory the test's database (and the server's `tls/`) is in.
    pub fn dir(&self) -> PathBuf {
        self.db.parent().expect("the db is in a dir").to_path_buf()
    }

    /// The HTTP listener's address (from its log line), if it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        let line = self
            .proc
            .stderr
            .lines()
            .into_iter()
            .find(|l| l.contains("HTTP listener on "))?;
        line.split("HTTP listener on ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// An HTTPS GET of the server's HTTP listener (HTTP/1.0, one
    /// connection), trusting the server's CA, with `headers`.
    pub fn https(&self, path: &str, headers: &[(&str, &str)]) -> HttpAnswer {
        let addr = self.http_addr().expect("the server's HTTP listener");
        let ca_pem = std::fs::read_to_string(self.dir().join("tls").join("ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for block in monitor::pem::decode_all(&ca_pem).unwrap() {
            roots.add(block.der.into()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let raw = rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .unwrap();
            let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            tls.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            // The server may close without a TLS close_notify: keep what came.
            let _ = tls.read_to_end(&mut raw).await;
            raw
        });
        HttpAnswer::parse(&raw)
    }

    /// The bearer token `/metrics` accepts (`tls/metrics.token`).
    pub fn metrics_token(&self) -> String {
        std::fs::read_to_string(self.dir().join("tls").join("metrics.token"))
            .expect("the server wrote tls/metrics.token")
            .trim()
            .to_owned()
    }

    /// The local operator's credential the server wrote.
    pub fn credentials(&self) -> PathBuf {
        self.dir().join("tls").join("admin.cred")
    }

    /// monitorctl with this server's address and credential (or
    /// `--insecure`), in the server's network namespace if it has one.
    pub fn ctl_command(&self) -> Command {
        let mut cmd = command_in(self.netns.as_deref(), &bin("monitorctl"));
        cmd.env("MONITOR_SIGNING_KEY", self.signing_key())
            .arg("--server")
            .arg(self.admin_url());
        if self.tls {
            cmd.arg("--credentials").arg(self.credentials());
        } else {
            cmd.arg("--insecure");
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs monitorctl against this server.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_command()
            .args(args)
            .output()
            .expect("run monitorctl")
    }

    /// A join token for `host` (`monitorctl enrol HOST`).
    pub fn token(&self, host: &str) -> String {
        self.ctl_ok(&["enrol", host]).trim().to_owned()
    }

    /// Where the test keeps `host`'s agent identity (its state directory).
    pub fn agent_state_dir(&self, host: &str) -> PathBuf {
        self.dir().join("agents").join(host)
    }

    /// An agent for `host` reporting to this server: with TLS, enrolling
    /// with a fresh join token (state directory under the test's dir, kept
    /// across restarts of the agent); with `--insecure`, in plain text.
    pub fn agent(&self, host: &str) -> AgentCmd {
        self.agent_in(None, host)
    }

    /// [`Server::agent`] run inside the network namespace `netns`.
    pub fn agent_in(&self, netns: Option<&str>, host: &str) -> AgentCmd {
        self.agent_at(netns, &self.url(), host)
    }

    /// [`Server::agent`] reporting to `url` (a proxy or a namespace's
    /// address in front of this server).
    pub fn agent_at(&self, netns: Option<&str>, url: &str, host: &str) -> AgentCmd {
        let cmd = AgentCmd::new_in(netns, url, host);
        if self.tls {
            // The token carries the test operator's key (trust on
            // enrolment).
            cmd.env("MONITOR_JOIN", self.token(host))
                .env("MONITOR_STATE_DIR", self.agent_state_dir(host))
        } else {
            cmd.env("MONITOR_INSECURE", "1")
                .env("MONITOR_OPERATOR_KEYS", self.operators_file())
                .env("MONITOR_STATE_DIR", self.agent_state_dir(host))
        }
    }

    /// A gRPC channel to the agents' listener that presents a certificate
    /// for `host` (made by `monitorctl enrol HOST --files DIR`), for tests
    /// that speak the protocol themselves; plain text with `--insecure`.
    pub async fn channel(&self, host: &str) -> tonic::transport::Channel {
        self.endpoint(host).connect().await.unwrap()
    }

    /// The endpoint [`Server::channel`] connects, for a test to adjust.
    pub fn endpoint(&self, host: &str) -> tonic::transport::Endpoint {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url()).unwrap();
        if self.tls {
            let files = self.dir().join("files").join(host);
            self.ctl_ok(&["enrol", host, "--files", files.to_str().unwrap()]);
            let read = |name: String| std::fs::read_to_string(files.join(name)).unwrap();
            endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(read(
                            "ca.pem".into(),
                        )))
                        .identity(tonic::transport::Identity::from_pem(
                            read(format!("{host}.pem")),
                            read(format!("{host}.key")),
                        )),
                )
                .unwrap()
        } else {
            endpoint
        }
    }

    /// Gives `host` an agent identity now, without running an agent (so
    /// nothing is stored for it): a key and certificate from `monitorctl
    /// enrol HOST --files`, written as the agent's `identity.pem`. Returns
    /// the state directory: an agent started later with
    /// `MONITOR_STATE_DIR` set to it needs no token and no server at start
    /// (see [`AgentCmd::with_identity`]).
    pub fn enrol_ahead(&self, host: &str) -> PathBuf {
        let files = self.dir().join("files").join(host);
        self.ctl_ok(&["enrol", host, "--files", files.to_str().unwrap()]);
        let block = |name: String| {
            let text = std::fs::read_to_string(files.join(name)).unwrap();
            monitor::pem::decode_all(&text).unwrap().remove(0).der
        };
        let now = monitor::time::now_unix_ms();
        let identity = monitor::credential::Credential {
            facts: vec![
                ("hostname".into(), host.into()),
                (
                    "not_after_unix_ms".into(),
                    (now + 80 * 86_400_000).to_string(),
                ),
                (
                    "renew_after_unix_ms".into(),
                    (now + 60 * 86_400_000).to_string(),
                ),
                ("join_token_sha256".into(), String::new()),
            ],
            cert_der: block(format!("{host}.pem")),
            key_pkcs8_der: block(format!("{host}.key")),
            ca_der: block("ca.pem".into()),
        };
        let state = self.agent_state_dir(host);
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(
            state.join("identity.pem"),
            identity.encode("made by the test harness"),
        )
        .unwrap();
        // What a token would have brought: the test operator's key.
        std::fs::copy(self.operators_file(), state.join("operators.enrolled")).unwrap();
        state
    }

    /// What `monitorctl hosts --json` says about `host`, if it knows it.
    pub fn host(&self, host: &str) -> Option<HostJson> {
        let out = self.ctl(&["hosts", "--json"]);
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(HostJson::parse)
            .find(|h| h.hostname == host)
    }

    /// Runs monitorctl and returns its stdout, panicking on failure.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "monitorctl {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Samples stored for `host` (all metrics, last `since`), parsed from
    /// `monitorctl query --json`.
    pub fn samples(&self, host: &str, since: &str) -> Vec<JsonSample> {
        let out = self.ctl(&["query", host, "--since", since, "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| JsonSample::parse(l).unwrap_or_else(|| panic!("bad json line {l:?}")))
            .collect()
    }
}

/// The (agents, admin) addresses a starting server process logs once it
/// listens (any build of monitor-server: tests/compat.rs runs older ones).
pub fn listening_addrs(proc: &Proc) -> (SocketAddr, SocketAddr) {
    let line = wait_for("the server to listen", Duration::from_secs(20), || {
        proc.stderr
            .lines()
            .into_iter()
            .find(|l| l.contains("listening for agents on"))
    });
    let addrs: Vec<SocketAddr> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    assert_eq!(addrs.len(), 2, "cannot read addresses from {line:?}");
    (addrs[0], addrs[1])
}

/// monitorctl against `admin_url` with exactly `args` (no credential
/// added: for tests of what happens without one).
pub fn ctl(admin_url: &str, args: &[&str]) -> Output {
    Command::new(bin("monitorctl"))
        .arg("--server")
        .arg(admin_url)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run monitorctl")
}

/// One line of `monitorctl query --json`.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonSample {
    pub time: String,
    pub hostname: String,
    pub metric: String,
    pub value: f64,
}

impl JsonSample {
    /// Parses `{"time":"…","hostname":"…","metric":"…","value":N}` (the
    /// fixed shape monitorctl and the agent's --stdout print).
    pub fn parse(line: &str) -> Option<JsonSample> {
        let field = |name: &str| -> Option<&str> {
            let key = format!("\"{name}\":");
            let start = line.find(&key)? + key.len();
            let rest = &line[start..];
            if let Some(stripped) = rest.strip_prefix('"') {
                let end = stripped.find('"')?;
                Some(&stripped[..end])
            } else {
                let end = rest.find([',', '}'])?;
                Some(&rest[..end])
            }
        };
        Some(JsonSample {
            time: field("time")?.to_owned(),
            hostname: field("hostname")?.to_owned(),
            metric: field("metric")?.to_owned(),
            value: field("value")?.parse().ok()?,
        })
    }
}

/// The counters of one line of `monitorctl hosts --json`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostJson {
    pub hostname: String,
    pub online: bool,
    pub clock_offset_ms: i64,
    pub dropped_batches_total: u64,
    pub batches_stored_total: u64,
    /// The replica holding it, with several servers on one database.
    pub replica: String,
}

impl HostJson {
    /// Parses the fixed shape monitorctl prints.
    pub fn parse(line: &str) -> Option<HostJson> {
        let raw = |name: &str| -> Option<&str> {
            let key = format!("\"{name}\":");
            let start = line.find(&key)? + key.len();
            let rest = &line[start..];
            let end = rest.find([',', '}'])?;
            Some(rest[..end].trim_matches('"'))
        };
        Some(HostJson {
            hostname: raw("hostname")?.to_owned(),
            online: raw("online")?.parse().ok()?,
            clock_offset_ms: raw("clock_offset_ms")?.parse().ok()?,
            dropped_batches_total: raw("dropped_batches_total")?.parse().ok()?,
            batches_stored_total: raw("batches_stored_total")?.parse().ok()?,
            replica: raw("replica").unwrap_or_default().to_owned(),
        })
    }
}

/// The command id a background `monitorctl exec` printed on stderr.
pub fn command_id(p: &Proc) -> String {
    wait_for("the command id", Duration::from_secs(10), || {
        p.stderr
            .lines()
            .iter()
            .find_map(|l| l.strip_prefix("command ").map(str::to_owned))
    })
}

/// Builder for a monitor-agent child.
pub struct AgentCmd {
    cmd: Command,
    name: String,
    /// Its state directory unless the test names one (removed with it).
    scratch: tempfile::TempDir,
}

impl AgentCmd {
    pub fn new(server_url: &str, hostname: &str) -> AgentCmd {
        AgentCmd::new_in(None, server_url, hostname)
    }

    /// An agent run inside the network namespace `netns` (if given).
    pub fn new_in(netns: Option<&str>, server_url: &str, hostname: &str) -> AgentCmd {
        let mut cmd = command_in(netns, &bin("monitor-agent"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("MONITOR_SERVER", server_url)
            .env("MONITOR_HOSTNAME", hostname)
            .env("MONITOR_INTERVAL", "0.2")
            .env("MONITOR_LOG", "debug")
            // Never pick up the machine's real allowlist or operators.
            .env("MONITOR_COMMANDS_FILE", "/dev/null")
            .env("MONITOR_OPERATOR_KEYS", "/dev/null");
        let scratch = tempfile::Builder::new()
            .prefix("monitor-e2e-agent-state-")
            .tempdir()
            .expect("agent state dir");
        cmd.env("MONITOR_STATE_DIR", scratch.path());
        AgentCmd {
            cmd,
            name: hostname.to_owned(),
            scratch,
        }
    }

    /// An agent for `host` at `url` with the identity in `state_dir` (see
    /// [`Server::enrol_ahead`]): no token, no server needed at start.
    pub fn with_identity(url: &str, host: &str, state_dir: &Path) -> AgentCmd {
        AgentCmd::new(url, host).env("MONITOR_STATE_DIR", state_dir)
    }

    /// A plain-text agent (for a server started with `--insecure`, or one
    /// that never reaches any server).
    pub fn insecure(url: &str, host: &str) -> AgentCmd {
        AgentCmd::new(url, host).env("MONITOR_INSECURE", "1")
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> AgentCmd {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: &str) -> AgentCmd {
        self.cmd.env_remove(k);
        self
    }

    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> AgentCmd {
        self.cmd.arg(a);
        self
    }

    /// The same agent started under the file-creation mask `mask` (see
    /// [`under_umask`]).
    pub fn umask(self, mask: &str) -> AgentCmd {
        AgentCmd {
            cmd: under_umask(&self.cmd, mask),
            name: self.name,
            scratch: self.scratch,
        }
    }

    pub fn spawn(self) -> Proc {
        let mut proc = Proc::spawn(self.cmd, &format!("agent {}", self.name));
        proc.scratch = Some(self.scratch);
        proc
    }
}

/// A fake Raspberry Pi for the health metrics (issue 14): load 0.42, one
/// thermal zone at 61.3 °C, `rpi_volt` without alarm, the firmware word
/// 0x50005 (under-voltage and throttling now and since start), and two real
/// file systems (`/`, `/boot/firmware`) beside a tmpfs.
pub fn fake_pi() -> monitor_agent::testing::FakeHost {
    let mut host = monitor_agent::testing::FakeHost::new();
    host.set_loadavg("0.42 0.30 0.20 1/123 4567\n");
    host.add_thermal_zone("cpu-thermal", 61_300);
    host.add_hwmon("rpi_volt", false);
    host.add_firmware(0x50005);
    host.add_mount("/dev/mmcblk0p2", "/", "ext4")
        .add_mount("/dev/mmcblk0p1", "/boot/firmware", "vfat")
        .add_mount("tmpfs", "/run", "tmpfs");
    host
}

/// `server.agent(name)` reading `pi` (its /proc, /sys and file systems
/// under `--rootfs`), every 0.5 s.
pub fn fake_pi_agent(
    server: &Server,
    pi: &monitor_agent::testing::FakeHost,
    name: &str,
) -> AgentCmd {
    reading(server.agent(name), pi)
}

/// `agent` reading `pi` (its /proc, /sys and file systems under
/// `--rootfs`), every 0.5 s.
pub fn reading(agent: AgentCmd, pi: &monitor_agent::testing::FakeHost) -> AgentCmd {
    agent
        .arg("--proc-root")
        .arg(pi.proc_root())
        .arg("--sys-root")
        .arg(pi.sys_root())
        .arg("--rootfs")
        .arg(pi.rootfs())
        .arg("--interval")
        .arg("0.5")
}

/// `cmd` run through `sh -c 'umask MASK && exec ...'`: the same program,
/// arguments and working directory under the file-creation mask `mask`
/// (e.g. "000"), without touching this process's own umask (which every
/// test thread shares). The wrapped command starts from an empty
/// environment plus the variables `cmd` sets explicitly and PATH.
pub fn under_umask(cmd: &Command, mask: &str) -> Command {
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c")
        .arg(format!("umask {mask} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        sh.current_dir(dir);
    }
    sh
}

/// Writes an allowlist file and returns its path. Mode 0644 whatever the
/// umask: the agent refuses an allowlist others could write.
pub fn allowlist(dir: &TempDir, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("commands.allow");
    std::fs::write(&p, text).expect("write allowlist");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod allowlist");
    p
}

/// Pids of live processes whose command line (arguments joined by spaces)
/// contains `needle`. Reads /proc directly: no procps needed.
pub fn processes_matching(needle: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let args: Vec<String> = c
                        .split(|&b| b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    args.join(" ").contains(needle)
                })
                .unwrap_or(false)
        })
        .filter(|pid| pid_alive(*pid))
        .collect()
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the ')' closing the command name.
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// An HTTP/1.x answer: status, headers (names lowercased), body bytes.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn parse(raw: &[u8]) -> HttpAnswer {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(raw.len());
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let body = raw.get(split + 4..).unwrap_or_default().to_vec();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status line in {head:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        HttpAnswer {
            status,
            headers,
            body,
        }
    }

    /// The first header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A batch of one sample, of host `host` in run `boot_id`, sent now (its
/// `produced_batches_total` is its seq, as an agent's would be).
pub fn one_sample(
    (host, boot_id, seq): (&str, u64, u64),
    time_unix_ms: i64,
    metric: &str,
    value: f64,
) -> monitor::pb::Batch {
    monitor::pb::Batch {
        agent_id: host.into(),
        boot_id,
        seq,
        samples: vec![monitor::pb::Sample {
            time_unix_ms,
            hostname: host.into(),
            metric: metric.into(),
            value,
            ..Default::default()
        }],
        sent_unix_ms: monitor::time::now_unix_ms(),
        agent_version: "test".into(),
        hostname: host.into(),
        produced_batches_total: seq,
        ..Default::default()
    }
}

/// Sends `batches` on one Report stream to `server` (with a certificate for
/// the host the first one names: the server takes the agent's identity
/// from it; plain text with `--insecure`) and returns the stream's sender
/// (the stream stays open while it lives) and the first `batches.len()`
/// acks as (seq, code, message). Any number of batches: they are sent
/// while the acks are read.
pub async fn report(
    server: &Server,
    batches: Vec<monitor::pb::Batch>,
) -> (
    tokio::sync::mpsc::Sender<monitor::pb::Batch>,
    Vec<(u64, i32, String)>,
) {
    let channel = server.channel(&batches[0].hostname).await;
    let mut client = monitor::pb::collector_client::CollectorClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut acks = client
        .report(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let n = batches.len();
    let sender = tx.clone();
    tokio::spawn(async move {
        for b in batches {
            if sender.send(b).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    for _ in 0..n {
        let ack = tokio::time::timeout(Duration::from_secs(20), acks.message())
            .await
            .expect("ack in time")
            .expect("stream ok")
            .expect("an ack");
        got.push((ack.seq, ack.code, ack.message));
    }
    (tx, got)
}

/// An HTTPS GET of the server's HTTP listener, trusting its CA, with a
/// bearer token and an Accept header if given: status and body as text.
pub fn https_get(
    server: &Server,
    path: &str,
    token: Option<&str>,
    accept: Option<&str>,
) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    if let Some(a) = accept {
        headers.push(("Accept", a));
    }
    let answer = server.https(path, &headers);
    (answer.status, answer.text())
}

/// "2024-05-01T10:00:00.123Z" → ms since the epoch (the shape monitorctl
/// prints; `monitor::time::format_rfc3339_ms` writes it).
pub fn rfc3339_ms(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, mo, d) = (n(0..4), n(5..7), n(8..10));
    let (h, mi, sec, ms) = (n(11..13), n(14..16), n(17..19), n(20..23));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + h * 3600 + mi * 60 + sec) * 1000) + ms
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// CPU time `pid` used so far (user + system), in seconds.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the ')' that closes the command name: state is the
    // first, utime the 12th and stime the 13th.
    let rest: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
