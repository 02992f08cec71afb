//! monitor-server's configuration: flags override environment variables,
//! which override defaults. A bad value is a [`ConfigError`] naming the flag
//! or variable; the binary exits 2 on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
pub use monitor::config::ConfigError;
use monitor::config::{Env, Raw, pick};

use crate::remote_write::{self, DestinationSpec};

/// Accepts monitor agents, stores their samples in an embedded SQLite
/// store, and serves the operator API that monitorctl uses.
///
/// Every option can also be set by the environment variable named in its
/// description; the flag wins.
#[derive(FromArgs, Debug, Default)]
pub struct Args {
    /// address for agents (MONITOR_LISTEN; default 0.0.0.0:50051)
    #[argh(option)]
    pub listen: Option<String>,
    /// address for the operator API (MONITOR_ADMIN_LISTEN; default
    /// 127.0.0.1:50052, loopback only until authentication exists)
    #[argh(option)]
    pub admin_listen: Option<String>,
    /// database file (MONITOR_DB; default $STATE_DIRECTORY/monitor.db under
    /// systemd, else ./monitor.db)
    #[argh(option)]
    pub db: Option<PathBuf>,
    /// how long samples are kept (MONITOR_RETENTION; default 7d)
    #[argh(option)]
    pub retention: Option<String>,
    /// agent clock offset beyond which sample times are corrected onto the
    /// server's clock (MONITOR_MAX_CLOCK_SKEW; default 30s)
    #[argh(option)]
    pub max_clock_skew: Option<String>,
    /// directory of the server's CA, certificate and the local operator
    /// credential (MONITOR_TLS_DIR; default: tls/ beside the database)
    #[argh(option)]
    pub tls_dir: Option<PathBuf>,
    /// a name (DNS name or IP address) agents and operators reach this
    /// server by, for its certificate; repeat for several
    /// (MONITOR_TLS_NAMES, comma-separated; default: this machine's
    /// hostname, localhost, 127.0.0.1, ::1)
    #[argh(option)]
    pub tls_name: Vec<String>,
    /// the agents' URL that join tokens carry (MONITOR_PUBLIC_URL; default
    /// https://FIRST-TLS-NAME:LISTEN-PORT)
    #[argh(option)]
    pub public_url: Option<String>,
    /// how long an agent's certificate is valid; agents renew at two
    /// thirds of it (MONITOR_AGENT_CERT_LIFETIME; default 90d)
    #[argh(option)]
    pub agent_cert_lifetime: Option<String>,
    /// address of the HTTP listener: /metrics for Prometheus
    /// (MONITOR_HTTP_LISTEN; default 127.0.0.1:50053; "off" for none)
    #[argh(option)]
    pub http_listen: Option<String>,
    /// a file whose first line is a bearer token /metrics accepts, besides
    /// metrics.token in the TLS directory (MONITOR_METRICS_TOKEN_FILE)
    #[argh(option)]
    pub metrics_token_file: Option<PathBuf>,
    /// send every stored sample to this Prometheus remote-write receiver:
    /// URL[;bearer-token-file=F][;basic-auth-file=F][;ca-file=F]; repeat
    /// for several (MONITOR_REMOTE_WRITE, comma-separated)
    #[argh(option)]
    pub remote_write: Vec<String>,
    /// how far remote-write may fall behind before older samples are
    /// dropped, counted and logged (MONITOR_REMOTE_WRITE_MAX_LAG; default 1h)
    #[argh(option)]
    pub remote_write_max_lag: Option<String>,
    /// serve every listener in plain text with no authentication: anyone
    /// who reaches them is an agent or an operator (MONITOR_INSECURE=1)
    #[argh(switch)]
    pub insecure: bool,
    /// error, warn, info or debug (MONITOR_LOG; default info)
    #[argh(option)]
    pub log: Option<String>,
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
}

/// Validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub db: PathBuf,
    pub retention: Duration,
    pub max_clock_skew: Duration,
    /// `None`: plain text, no authentication (`--insecure`).
    pub tls: Option<TlsConfig>,
    /// The HTTP listener (`/metrics`); `None`: off.
    pub http_listen: Option<SocketAddr>,
    /// Another bearer token file `/metrics` accepts.
    pub metrics_token_file: Option<PathBuf>,
    /// Remote-write receivers, in the order given.
    pub remote_write: Vec<DestinationSpec>,
    pub remote_write_max_lag: Duration,
    pub log_level: log::LevelFilter,
}

/// Where the server's TLS material lives and what it says.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsConfig {
    pub dir: PathBuf,
    /// DNS names and IP addresses in the server's certificate.
    pub names: Vec<String>,
    /// The agents' listener as join tokens give it.
    pub public_url: String,
    pub agent_cert_lifetime: Duration,
}

/// An agent's certificate lives this long by default.
pub const DEFAULT_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// This machine's hostname, from the kernel by uname(2): not from
/// /proc/sys/kernel/hostname, which the unit's `ProcSubset=pid` hides (the
/// certificate then lacked the hostname, and join tokens carried
/// https://localhost:50051).
fn machine_hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && monitor::wire::valid_hostname(h))
}

/// Whether `name` can go in a certificate: an IP address, or a DNS name of
/// letters, digits, '-' and '.'.
fn valid_tls_name(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
        || (!name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
}

impl Config {
    /// Defaults for a database at `db`, listening on loopback ports chosen by
    /// the kernel (for tests).
    pub fn for_tests(db: impl Into<PathBuf>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db: db.into(),
            retention: Duration::from_secs(7 * 86_400),
            max_clock_skew: Duration::from_secs(30),
            tls: None,
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_token_file: None,
            remote_write: Vec::new(),
            remote_write_max_lag: remote_write::DEFAULT_MAX_LAG,
            log_level: log::LevelFilter::Info,
        }
    }
}

/// Samples are kept at least this long.
pub const MIN_RETENTION: Duration = Duration::from_secs(60);
/// And at most this long (ten years).
pub const MAX_RETENTION: Duration = Duration::from_secs(3650 * 86_400);

impl Config {
    pub fn from_sources(args: Args, env: Env<'_>) -> Result<Config, ConfigError> {
        let listen = match pick(args.listen, "listen", "MONITOR_LISTEN", env) {
            Some(raw) => raw.socket_addr()?,
            None => SocketAddr::from(([0, 0, 0, 0], 50051)),
        };
        let admin_listen = match pick(
            args.admin_listen,
            "admin-listen",
            "MONITOR_ADMIN_LISTEN",
            env,
        ) {
            Some(raw) => raw.socket_addr()?,
            None => SocketAddr::from(([127, 0, 0, 1], 50052)),
        };
        let db = args
            .db
            .or_else(|| {
                env("MONITOR_DB")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| {
                // systemd's StateDirectory= sets it (possibly several,
                // colon-separated: the first is ours).
                match env("STATE_DIRECTORY").filter(|s| !s.is_empty()) {
                    Some(dirs) => {
                        PathBuf::from(dirs.split(':').next().unwrap_or(".")).join("monitor.db")
                    }
                    None => PathBuf::from("monitor.db"),
                }
            });
        let retention = match pick(args.retention, "retention", "MONITOR_RETENTION", env) {
            Some(raw) => raw.duration(MIN_RETENTION, MAX_RETENTION)?,
            None => Duration::from_secs(7 * 86_400),
        };
        let max_clock_skew = match pick(
            args.max_clock_skew,
            "max-clock-skew",
            "MONITOR_MAX_CLOCK_SKEW",
            env,
        ) {
            Some(raw) => raw.duration(Duration::from_secs(1), Duration::from_secs(86_400))?,
            None => Duration::from_secs(30),
        };
        let log_level = match pick(args.log, "log", "MONITOR_LOG", env) {
            Some(raw) => raw.log_level()?,
            None => log::LevelFilter::Info,
        };
        let insecure = args.insecure
            || match pick(None, "", "MONITOR_INSECURE", env) {
                Some(raw) => raw.bool()?,
                None => false,
            };
        let tls = if insecure {
            None
        } else {
            let dir = args
                .tls_dir
                .or_else(|| {
                    env("MONITOR_TLS_DIR")
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                })
                .unwrap_or_else(|| match db.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.join("tls"),
                    _ => PathBuf::from("tls"),
                });
            let names = if args.tls_name.is_empty() {
                match env("MONITOR_TLS_NAMES").filter(|s| !s.trim().is_empty()) {
                    Some(list) => {
                        let raw = monitor::config::Raw {
                            source: "MONITOR_TLS_NAMES".into(),
                            value: list.clone(),
                        };
                        let names: Vec<String> = list
                            .split(',')
                            .map(|n| n.trim().to_owned())
                            .filter(|n| !n.is_empty())
                            .collect();
                        if names.iter().any(|n| !valid_tls_name(n)) {
                            return Err(raw.error("comma-separated DNS names or IP addresses"));
                        }
                        names
                    }
                    None => machine_hostname()
                        .into_iter()
                        .chain(["localhost", "127.0.0.1", "::1"].map(String::from))
                        .collect(),
                }
            } else {
                for n in &args.tls_name {
                    if !valid_tls_name(n) {
                        return Err(monitor::config::Raw {
                            source: "--tls-name".into(),
                            value: n.clone(),
                        }
                        .error("a DNS name or an IP address"));
                    }
                }
                args.tls_name
            };
            let public_url = match pick(args.public_url, "public-url", "MONITOR_PUBLIC_URL", env) {
                Some(raw) => {
                    let v = raw.value.trim();
                    if !v.starts_with("https://") || v.len() <= "https://".len() {
                        return Err(raw.error("an https:// URL like https://monitor.lan:50051"));
                    }
                    v.to_owned()
                }
                None => {
                    let host = names.first().map_or("localhost", String::as_str);
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host.to_owned()
                    };
                    format!("https://{host}:{}", listen.port())
                }
            };
            let agent_cert_lifetime = match pick(
                args.agent_cert_lifetime,
                "agent-cert-lifetime",
                "MONITOR_AGENT_CERT_LIFETIME",
                env,
            ) {
                Some(raw) => {
                    raw.duration(Duration::from_secs(3), Duration::from_secs(3650 * 86_400))?
                }
                None => DEFAULT_AGENT_CERT_LIFETIME,
            };
            Some(TlsConfig {
                dir,
                names,
                public_url,
                agent_cert_lifetime,
            })
        };
        let http_listen = match pick(args.http_listen, "http-listen", "MONITOR_HTTP_LISTEN", env) {
            Some(raw) if raw.value.trim() == "off" => None,
            Some(raw) => Some(raw.socket_addr()?),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 50053))),
        };
        let metrics_token_file = args.metrics_token_file.or_else(|| {
            env("MONITOR_METRICS_TOKEN_FILE")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let specs: Vec<Raw> = if args.remote_write.is_empty() {
            env("MONITOR_REMOTE_WRITE")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Raw {
                    source: "MONITOR_REMOTE_WRITE".into(),
                    value: s.to_owned(),
                })
                .collect()
        } else {
            args.remote_write
                .into_iter()
                .map(|value| Raw {
                    source: "--remote-write".into(),
                    value,
                })
                .collect()
        };
        let mut remote_write = Vec::with_capacity(specs.len());
        for raw in specs {
            let spec = remote_write::destination::parse(&raw.value).map_err(|why| {
                raw.error(&format!(
                    "URL[;bearer-token-file=F][;basic-auth-file=F][;ca-file=F] ({why})"
                ))
            })?;
            if remote_write
                .iter()
                .any(|d: &DestinationSpec| d.url == spec.url)
            {
                return Err(raw.error("each remote-write URL once"));
            }
            remote_write.push(spec);
        }
        let remote_write_max_lag = match pick(
            args.remote_write_max_lag,
            "remote-write-max-lag",
            "MONITOR_REMOTE_WRITE_MAX_LAG",
            env,
        ) {
            Some(raw) => raw.duration(Duration::from_secs(10), Duration::from_secs(30 * 86_400))?,
            None => remote_write::DEFAULT_MAX_LAG,
        };
        Ok(Config {
            listen,
            admin_listen,
            db,
            retention,
            max_clock_skew,
            tls,
            http_listen,
            metrics_token_file,
            remote_write,
            remote_write_max_lag,
            log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        flags: &[&str],
        env: &'static [(&'static str, &'static str)],
    ) -> Result<Config, ConfigError> {
        let args = Args::from_args(&["monitor-server"], flags).expect("flags parse");
        Config::from_sources(args, &|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:50052".parse().unwrap());
        assert_eq!(c.db, PathBuf::from("monitor.db"));
        assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn state_directory_and_overrides() {
        let c = parse(
            &["--retention", "2d"],
            &[
                ("STATE_DIRECTORY", "/var/lib/monitor-server"),
                ("MONITOR_RETENTION", "1d"),
                ("MONITOR_LISTEN", "[::1]:7000"),
            ],
        )
        .unwrap();
        assert_eq!(c.db, PathBuf::from("/var/lib/monitor-server/monitor.db"));
        assert_eq!(c.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(c.listen, "[::1]:7000".parse().unwrap());
    }

    #[test]
    fn tls_is_on_by_default_beside_the_database() {
        let c = parse(&["--db", "/var/lib/m/monitor.db"], &[]).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.dir, PathBuf::from("/var/lib/m/tls"));
        assert!(tls.names.contains(&"localhost".to_owned()));
        assert!(tls.names.contains(&"127.0.0.1".to_owned()));
        assert_eq!(tls.agent_cert_lifetime, DEFAULT_AGENT_CERT_LIFETIME);
        let c = parse(
            &[
                "--tls-name",
                "mon.lan",
                "--tls-name",
                "10.0.0.5",
                "--listen",
                "0.0.0.0:7000",
            ],
            &[("MONITOR_TLS_DIR", "/etc/m/tls")],
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.names, ["mon.lan", "10.0.0.5"]);
        assert_eq!(tls.public_url, "https://mon.lan:7000");
        assert_eq!(tls.dir, PathBuf::from("/etc/m/tls"));
        assert_eq!(parse(&["--insecure"], &[]).unwrap().tls, None);
        assert_eq!(parse(&[], &[("MONITOR_INSECURE", "1")]).unwrap().tls, None);
        let e = parse(&["--tls-name", "a b"], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--tls-name: expected a DNS name or an IP address, got 'a b'"
        );
        let e = parse(&["--public-url", "http://x:1"], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--public-url: expected an https:// URL like https://monitor.lan:50051, got 'http://x:1'"
        );
    }

    #[test]
    fn http_and_remote_write() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.http_listen, Some("127.0.0.1:50053".parse().unwrap()));
        assert!(c.remote_write.is_empty());
        assert_eq!(c.remote_write_max_lag, remote_write::DEFAULT_MAX_LAG);
        let c = parse(
            &[
                "--http-listen",
                "off",
                "--remote-write",
                "http://a:1/w;ca-file=/c",
            ],
            &[("MONITOR_REMOTE_WRITE", "http://ignored:1/w")],
        )
        .unwrap();
        assert_eq!(c.http_listen, None);
        assert_eq!(c.remote_write.len(), 1);
        assert_eq!(c.remote_write[0].url, "http://a:1/w");
        let c = parse(
            &[],
            &[
                (
                    "MONITOR_REMOTE_WRITE",
                    "http://a:1/w, https://b:2/w;bearer-token-file=/t",
                ),
                ("MONITOR_REMOTE_WRITE_MAX_LAG", "10m"),
            ],
        )
        .unwrap();
        assert_eq!(c.remote_write.len(), 2);
        assert_eq!(c.remote_write_max_lag, Duration::from_secs(600));
        let e = parse(&["--remote-write", "ftp://x/y"], &[]).unwrap_err();
        assert!(
            e.to_string().starts_with("--remote-write: expected URL["),
            "{e}"
        );
        let e = parse(
            &[
                "--remote-write",
                "http://a/w",
                "--remote-write",
                "http://a/w",
            ],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("each remote-write URL once"), "{e}");
    }

    #[test]
    fn bad_values() {
        let e = parse(&[], &[("MONITOR_LISTEN", "nowhere")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MONITOR_LISTEN: expected an address like 0.0.0.0:50051 or [::1]:50051, got 'nowhere'"
        );
        let e = parse(&["--retention", "5s"], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--retention: expected a duration from 1m to 3650d, got '5s'"
        );
    }
}
