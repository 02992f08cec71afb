//! monitor-server's configuration: flags override environment variables,
//! which override defaults. A bad value is a [`ConfigError`] naming the flag
//! or variable; the binary exits 2 on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
pub use monitor::config::ConfigError;
use monitor::config::{Env, pick};

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
    pub log_level: log::LevelFilter,
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
        Ok(Config {
            listen,
            admin_listen,
            db,
            retention,
            max_clock_skew,
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
