//! monitorctl's flags (argh) and the typed configuration they become.
//!
//! Every flag is checked here, once, before anything touches the network:
//! the commands receive a [`Config`] whose values are already durations,
//! metrics and limits-checked command lines, so no command re-parses a
//! flag. Nothing here connects, prints or reads the clock.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use monitor::command::{self, ArgvError};
use monitor::health::HealthMetric;
use monitor::metric::Metric;
use monitor::time::parse_duration;

/// The operator API when neither `--server`, `MONITOR_ADMIN` nor the
/// credential names one.
pub const DEFAULT_ADMIN: &str = "https://127.0.0.1:50052";

/// The environment variable naming the operator API.
pub const ADMIN_ENV: &str = "MONITOR_ADMIN";
/// The environment variable naming the operator credential file.
pub const CREDENTIALS_ENV: &str = "MONITOR_CREDENTIALS";
/// The environment variable naming the operator's signing key.
pub const SIGNING_KEY_ENV: &str = "MONITOR_SIGNING_KEY";
/// The environment variable that turns TLS off (`--insecure`).
pub const INSECURE_ENV: &str = "MONITOR_INSECURE";
/// How long a join token lives without `--ttl`.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The longest `--ttl` the server accepts.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 86_400);

/// How far back `query` looks without `--since`.
const DEFAULT_SINCE: Duration = Duration::from_secs(3600);
/// How often `top` refreshes without `--interval`.
const DEFAULT_TOP_INTERVAL: Duration = Duration::from_secs(2);
/// The fastest `top` refresh: faster only loads the server.
const MIN_TOP_INTERVAL: Duration = Duration::from_millis(200);
/// The shortest `exec --timeout`.
const MIN_EXEC_TIMEOUT: Duration = Duration::from_millis(1);

/// The operator's tool for monitor: hosts, samples, a live table, and
/// commands on agents.
#[derive(FromArgs, Debug)]
pub struct Args {
    /// operator API of the server (MONITOR_ADMIN; default: the
    /// credential's, else https://127.0.0.1:50052)
    #[argh(option)]
    pub server: Option<String>,
    /// operator credential file (MONITOR_CREDENTIALS; default
    /// ~/.config/monitor/credentials, else the server's own
    /// /var/lib/monitor-server/tls/admin.cred)
    #[argh(option)]
    pub credentials: Option<PathBuf>,
    /// talk to a server started with --insecure: plain text, no
    /// credential (MONITOR_INSECURE=1)
    #[argh(switch)]
    pub insecure: bool,
    /// the operator's private signing key for commands (MONITOR_SIGNING_KEY;
    /// default ~/.config/monitor/signing.key, made on first use)
    #[argh(option)]
    pub signing_key: Option<PathBuf>,
    #[argh(subcommand)]
    pub command: CommandArgs,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum CommandArgs {
    Hosts(HostsArgs),
    Query(QueryArgs),
    Top(TopArgs),
    Exec(ExecArgs),
    Cancel(CancelArgs),
    History(HistoryArgs),
    Enrol(EnrolArgs),
    Revoke(RevokeArgs),
    Operator(OperatorArgs),
    Key(KeyArgs),
    Status(StatusArgs),
    Dashboard(DashboardArgs),
}

/// a one-time URL that logs a browser into the server's web dashboard
/// (valid 60 seconds, used once) as this operator
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "dashboard")]
pub struct DashboardArgs {}

/// the server's own state: version, uptime, store queue, ingest counters,
/// remote-write destinations
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub struct StatusArgs {
    /// one JSON object on one line
    #[argh(switch)]
    pub json: bool,
}

/// the operator's signing key: show its line for agents' operators files,
/// or register it with the server
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "key")]
pub struct KeyArgs {
    #[argh(subcommand)]
    pub command: KeyCommandArgs,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum KeyCommandArgs {
    Show(KeyShowArgs),
    Register(KeyRegisterArgs),
}

/// print this operator's public key as a line for /etc/monitor/operators
/// (the key is made if missing)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "show")]
pub struct KeyShowArgs {}

/// register this operator's public key with the server, so join tokens
/// carry it to new agents (the key is made if missing)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "register")]
pub struct KeyRegisterArgs {}

/// make a join token for a new agent (prints one line: give it to the
/// agent as MONITOR_JOIN or --join)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "enrol")]
pub struct EnrolArgs {
    /// the host the token enrols (the agent's hostname)
    #[argh(positional)]
    pub hostname: String,
    /// how long the token may be used (default 1h, at most 7d)
    #[argh(option)]
    pub ttl: Option<String>,
    /// instead of a token, make a key here and write it with its
    /// certificate and the CA into this directory (for clients that cannot
    /// enrol themselves; the key is then made off the box)
    #[argh(option)]
    pub files: Option<PathBuf>,
}

/// revoke every certificate of a host: its streams close at once and it
/// cannot connect again without a new join token
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "revoke")]
pub struct RevokeArgs {
    /// the host
    #[argh(positional)]
    pub hostname: String,
}

/// operators: add one (writes their credential file), remove one, list
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "operator")]
pub struct OperatorArgs {
    #[argh(subcommand)]
    pub command: OperatorCommandArgs,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum OperatorCommandArgs {
    Add(OperatorAddArgs),
    Remove(OperatorRemoveArgs),
    List(OperatorListArgs),
}

/// make a credential for a new operator (its key is made here)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct OperatorAddArgs {
    /// the operator's name (letters, digits, '.', '-', '_')
    #[argh(positional)]
    pub name: String,
    /// where to write the credential (mode 0600; must not exist yet)
    #[argh(option)]
    pub out: PathBuf,
}

/// revoke an operator's credentials
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "remove")]
pub struct OperatorRemoveArgs {
    /// the operator's name
    #[argh(positional)]
    pub name: String,
}

/// every operator the server knows
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct OperatorListArgs {}

/// every known host: online or offline, last seen, latest value of each metric
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "hosts")]
pub struct HostsArgs {
    /// one JSON object per host per line
    #[argh(switch)]
    pub json: bool,
}

/// stored samples of one host, oldest first
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "query")]
pub struct QueryArgs {
    /// the host
    #[argh(positional)]
    pub host: String,
    /// only this metric (cpu_percent, mem_percent, disk_read_kbps,
    /// disk_write_kbps, net_in_kbps, net_out_kbps)
    #[argh(option)]
    pub metric: Option<String>,
    /// how far back, e.g. 10m, 2h, 7d (default 1h)
    #[argh(option)]
    pub since: Option<String>,
    /// at most this many samples (the newest are cut)
    #[argh(option)]
    pub limit: Option<u64>,
    /// one JSON object per sample per line: time, hostname, metric, value
    #[argh(switch)]
    pub json: bool,
}

/// a live, refreshing table of every host
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "top")]
pub struct TopArgs {
    /// refresh period (default 2s)
    #[argh(option)]
    pub interval: Option<String>,
    /// print one table and exit
    #[argh(switch)]
    pub once: bool,
}

/// run a command on hosts: monitorctl exec --host H [--host H2] | --all [--timeout S] -- CMD [ARGS...]
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "exec")]
pub struct ExecArgs {
    /// a target host (repeatable)
    #[argh(option)]
    pub host: Vec<String>,
    /// every online host
    #[argh(switch)]
    pub all: bool,
    /// seconds before the agent kills the command (default 30)
    #[argh(option)]
    pub timeout: Option<String>,
    /// the command: a built-in (ping, info, set-interval S, collect-now) or
    /// a name from the agents' allowlist, then its arguments
    #[argh(positional, greedy)]
    pub argv: Vec<String>,
}

/// cancel a running command on every host it runs on
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "cancel")]
pub struct CancelArgs {
    /// the command id that exec printed
    #[argh(positional)]
    pub id: String,
}

/// commands sent, newest first, with each host's outcome
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "history")]
pub struct HistoryArgs {
    /// only this host
    #[argh(option)]
    pub host: Option<String>,
    /// at most this many rows (default 50)
    #[argh(option)]
    pub limit: Option<u64>,
    /// one JSON object per row per line
    #[argh(switch)]
    pub json: bool,
}

/// A flag or argument that is wrong, named with what was expected (exit 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// One monitorctl invocation, every flag checked.
#[derive(Debug)]
pub struct Config {
    /// The operator API to connect to.
    pub server: Server,
    pub command: Command,
}

/// How to reach the operator API; resolved (credential read, URL chosen)
/// by `connect.rs`.
#[derive(Debug, PartialEq, Eq)]
pub struct Server {
    /// `--server` or `MONITOR_ADMIN`, with the scheme added when none was
    /// given; `None`: the credential's, else [`DEFAULT_ADMIN`].
    pub url: Option<String>,
    /// `--credentials` or `MONITOR_CREDENTIALS`; `None`: the default places.
    pub credentials: Option<PathBuf>,
    /// Plain text, no credential.
    pub insecure: bool,
    /// `HOME` and `XDG_CONFIG_HOME`, for the default credential place.
    pub home: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    /// `--signing-key` or `MONITOR_SIGNING_KEY`; `None`: the default place.
    pub signing_key: Option<PathBuf>,
}

/// What to do once connected.
#[derive(Debug)]
pub enum Command {
    Hosts { json: bool },
    Query(QueryConfig),
    Top(TopConfig),
    Exec(ExecConfig),
    Cancel { id: String },
    History(HistoryConfig),
    Enrol(EnrolConfig),
    Revoke { hostname: String },
    OperatorAdd { name: String, out: PathBuf },
    OperatorRemove { name: String },
    OperatorList,
    KeyShow,
    KeyRegister,
    Status { json: bool },
    Dashboard,
}

#[derive(Debug)]
pub struct EnrolConfig {
    pub hostname: String,
    pub ttl: Duration,
    /// Write key, certificate and CA here instead of printing a token.
    pub files: Option<PathBuf>,
}

#[derive(Debug)]
pub struct QueryConfig {
    pub host: String,
    /// The metric's wire name, one of the six or a health metric; `None`:
    /// every one of the six.
    pub metric: Option<&'static str>,
    /// How far back from now.
    pub since: Duration,
    /// At most this many samples; `None`: the server's default.
    pub limit: Option<u64>,
    pub json: bool,
}

#[derive(Debug)]
pub struct TopConfig {
    /// Time between two tables, at least [`MIN_TOP_INTERVAL`].
    pub every: Duration,
    /// Print one table and return.
    pub once: bool,
}

/// Which hosts an exec targets.
#[derive(Debug, PartialEq, Eq)]
pub enum Targets {
    /// These hosts (at least one).
    Hosts(Vec<String>),
    /// Every online host.
    All,
}

#[derive(Debug)]
pub struct ExecConfig {
    pub targets: Targets,
    /// The agent's timeout in ms; 0 lets the server apply its default.
    pub timeout_ms: u32,
    /// Within [`monitor::command::check_argv`]'s limits.
    pub argv: Vec<String>,
}

#[derive(Debug)]
pub struct HistoryConfig {
    pub host: Option<String>,
    /// At most this many rows; `None`: the server's default.
    pub limit: Option<u64>,
    pub json: bool,
}

impl Config {
    /// Checks every flag; `env` reads the environment (injected for tests).
    pub fn from_args(
        args: Args,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, UsageError> {
        let mut server = server_from((args.server, args.credentials, args.insecure), env)?;
        server.signing_key = args.signing_key.or_else(|| {
            env(SIGNING_KEY_ENV)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let command = match args.command {
            CommandArgs::Hosts(a) => Command::Hosts { json: a.json },
            CommandArgs::Status(a) => Command::Status { json: a.json },
            CommandArgs::Dashboard(_) => Command::Dashboard,
            CommandArgs::Query(a) => Command::Query(QueryConfig::from_args(a)?),
            CommandArgs::Top(a) => Command::Top(TopConfig::from_args(a)?),
            CommandArgs::Exec(a) => Command::Exec(ExecConfig::from_args(a)?),
            CommandArgs::Cancel(a) => Command::Cancel { id: a.id },
            CommandArgs::History(a) => Command::History(HistoryConfig {
                host: a.host,
                limit: a.limit,
                json: a.json,
            }),
            CommandArgs::Enrol(a) => Command::Enrol(EnrolConfig::from_args(a)?),
            CommandArgs::Revoke(a) => Command::Revoke {
                hostname: checked_name("revoke", a.hostname)?,
            },
            CommandArgs::Operator(o) => match o.command {
                OperatorCommandArgs::Add(a) => Command::OperatorAdd {
                    name: checked_name("operator add", a.name)?,
                    out: a.out,
                },
                OperatorCommandArgs::Remove(a) => Command::OperatorRemove {
                    name: checked_name("operator remove", a.name)?,
                },
                OperatorCommandArgs::List(_) => Command::OperatorList,
            },
            CommandArgs::Key(k) => match k.command {
                KeyCommandArgs::Show(_) => Command::KeyShow,
                KeyCommandArgs::Register(_) => Command::KeyRegister,
            },
        };
        Ok(Config { server, command })
    }
}

/// A host or operator name: the wire's hostname rules.
fn checked_name(what: &str, name: String) -> Result<String, UsageError> {
    if monitor::wire::valid_hostname(&name) {
        Ok(name)
    } else {
        Err(usage(format!(
            "{what}: expected a name of letters, digits, '.', '-' and '_' (at most 253 bytes), \
             got '{}'",
            monitor::text::Escaped::capped(&name)
        )))
    }
}

impl EnrolConfig {
    fn from_args(a: EnrolArgs) -> Result<EnrolConfig, UsageError> {
        let ttl = match &a.ttl {
            Some(s) => parse_duration(s)
                .ok()
                .filter(|d| (Duration::from_secs(1)..=MAX_TOKEN_TTL).contains(d))
                .ok_or_else(|| {
                    usage(format!(
                        "--ttl: expected a duration from 1s to 7d, got '{}'",
                        monitor::text::Escaped::capped(s)
                    ))
                })?,
            None => DEFAULT_TOKEN_TTL,
        };
        Ok(EnrolConfig {
            hostname: checked_name("enrol", a.hostname)?,
            ttl,
            files: a.files,
        })
    }
}

/// `--server` / `MONITOR_ADMIN` (the scheme added when none is given:
/// https://, or http:// with `--insecure`), `--credentials` /
/// `MONITOR_CREDENTIALS`, `--insecure` / `MONITOR_INSECURE`.
fn server_from(
    args: (Option<String>, Option<PathBuf>, bool),
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Server, UsageError> {
    let (flag, credentials, insecure_flag) = args;
    let insecure = insecure_flag
        || env(INSECURE_ENV).is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
    let (scheme, other) = if insecure {
        ("http://", "https://")
    } else {
        ("https://", "http://")
    };
    let url = match flag.or_else(|| env(ADMIN_ENV).filter(|s| !s.is_empty())) {
        None => None,
        Some(url) => {
            let url = if url.contains("://") {
                url
            } else {
                format!("{scheme}{url}")
            };
            if url.starts_with(other) {
                return Err(usage(if insecure {
                    format!(
                        "--server: --insecure talks plain text: expected an http:// URL, got '{url}'"
                    )
                } else {
                    format!(
                        "--server: http:// is plain text: expected an https:// URL (or \
                         --insecure for a server started with --insecure), got '{url}'"
                    )
                }));
            }
            if tonic::transport::Endpoint::from_shared(url.clone()).is_err()
                || !url.starts_with(scheme)
            {
                return Err(usage(format!(
                    "--server: expected a URL like {scheme}127.0.0.1:50052, got '{}'",
                    monitor::text::Escaped::capped(&url)
                )));
            }
            Some(url)
        }
    };
    let credentials = credentials.or_else(|| {
        env(CREDENTIALS_ENV)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    });
    Ok(Server {
        url,
        credentials,
        insecure,
        home: env("HOME").filter(|s| !s.is_empty()).map(PathBuf::from),
        xdg_config_home: env("XDG_CONFIG_HOME")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        signing_key: None,
    })
}

impl QueryConfig {
    fn from_args(a: QueryArgs) -> Result<QueryConfig, UsageError> {
        let metric = match &a.metric {
            Some(m) => Some(match (m.parse::<Metric>(), m.parse::<HealthMetric>()) {
                (Ok(six), _) => six.name(),
                (_, Ok(health)) => health.name(),
                (Err(e), Err(_)) => {
                    let health: Vec<&str> = HealthMetric::ALL.iter().map(|h| h.name()).collect();
                    return Err(usage(format!(
                        "--metric: {e}; health metrics: {}",
                        health.join(", ")
                    )));
                }
            }),
            None => None,
        };
        let since = match &a.since {
            Some(s) => parse_duration(s).map_err(|e| usage(format!("--since: {e}")))?,
            None => DEFAULT_SINCE,
        };
        Ok(QueryConfig {
            host: a.host,
            metric,
            since,
            limit: a.limit,
            json: a.json,
        })
    }
}

impl TopConfig {
    fn from_args(a: TopArgs) -> Result<TopConfig, UsageError> {
        let every = match &a.interval {
            Some(s) => match parse_duration(s) {
                Ok(d) if d >= MIN_TOP_INTERVAL => d,
                _ => {
                    return Err(usage(format!(
                        "--interval: expected a duration of at least 200ms, got '{s}'"
                    )));
                }
            },
            None => DEFAULT_TOP_INTERVAL,
        };
        Ok(TopConfig {
            every,
            once: a.once,
        })
    }
}

impl ExecConfig {
    fn from_args(a: ExecArgs) -> Result<ExecConfig, UsageError> {
        match command::check_argv(&a.argv) {
            Ok(()) => {}
            Err(ArgvError::Empty) => {
                return Err(usage(
                    "exec: name a command after --, e.g. monitorctl exec --all -- ping",
                ));
            }
            Err(e) => return Err(usage(format!("exec: {e}"))),
        }
        let targets = match (a.all, a.host.is_empty()) {
            (true, true) => Targets::All,
            (false, false) => Targets::Hosts(a.host),
            _ => {
                return Err(usage(
                    "exec: name hosts with --host, or use --all (not both)",
                ));
            }
        };
        let timeout_ms = match &a.timeout {
            Some(s) => exec_timeout_ms(s)?,
            None => 0,
        };
        Ok(ExecConfig {
            targets,
            timeout_ms,
            argv: a.argv,
        })
    }
}

/// `--timeout` in ms, between [`MIN_EXEC_TIMEOUT`] and the contract's
/// [`monitor::command::MAX_TIMEOUT`].
fn exec_timeout_ms(s: &str) -> Result<u32, UsageError> {
    parse_duration(s)
        .ok()
        .filter(|d| (MIN_EXEC_TIMEOUT..=command::MAX_TIMEOUT).contains(d))
        .and_then(|d| u32::try_from(d.as_millis()).ok())
        .ok_or_else(|| {
            usage(format!(
                "--timeout: expected seconds from {} to {}, got '{s}'",
                MIN_EXEC_TIMEOUT.as_secs_f64(),
                command::MAX_TIMEOUT.as_secs()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str], env: &[(&str, &str)]) -> Result<Config, UsageError> {
        let args = Args::from_args(&["monitorctl"], argv).map_err(|e| UsageError(e.output))?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Config::from_args(args, &lookup)
    }

    fn usage_error(argv: &[&str]) -> String {
        match config(argv, &[]) {
            Ok(c) => panic!("{argv:?} accepted: {c:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn server_comes_from_the_flag_then_the_environment() {
        let c = config(&["hosts"], &[]).unwrap();
        assert_eq!(c.server.url, None);
        assert!(!c.server.insecure);
        let c = config(&["hosts"], &[(ADMIN_ENV, "10.0.0.1:7")]).unwrap();
        assert_eq!(c.server.url.as_deref(), Some("https://10.0.0.1:7"));
        let c = config(
            &["--server", "https://[::1]:9", "hosts"],
            &[(ADMIN_ENV, "10.0.0.1:7")],
        )
        .unwrap();
        assert_eq!(c.server.url.as_deref(), Some("https://[::1]:9"));
        // An empty variable counts as unset.
        let c = config(&["hosts"], &[(ADMIN_ENV, "")]).unwrap();
        assert_eq!(c.server.url, None);
        assert!(usage_error(&["--server", "a b", "hosts"]).starts_with("--server: expected a URL"));
        assert!(
            usage_error(&["--server", "http://h:1", "hosts"])
                .starts_with("--server: http:// is plain text")
        );
        let c = config(&["--insecure", "--server", "h:1", "hosts"], &[]).unwrap();
        assert_eq!(c.server.url.as_deref(), Some("http://h:1"));
        assert!(c.server.insecure);
        let c = config(&["hosts"], &[(INSECURE_ENV, "1"), (ADMIN_ENV, "h:2")]).unwrap();
        assert_eq!(c.server.url.as_deref(), Some("http://h:2"));
        let c = config(
            &["hosts"],
            &[(CREDENTIALS_ENV, "/x/cred"), ("HOME", "/home/op")],
        )
        .unwrap();
        assert_eq!(c.server.credentials, Some(PathBuf::from("/x/cred")));
        assert_eq!(c.server.home, Some(PathBuf::from("/home/op")));
    }

    #[test]
    fn trust_commands_check_their_names_and_durations() {
        let Command::Enrol(e) = config(&["enrol", "pi-1", "--ttl", "2h"], &[])
            .unwrap()
            .command
        else {
            panic!("not enrol");
        };
        assert_eq!(
            (e.hostname.as_str(), e.ttl),
            ("pi-1", Duration::from_secs(7200))
        );
        assert!(usage_error(&["enrol", "bad name"]).starts_with("enrol: expected a name"));
        assert_eq!(
            usage_error(&["enrol", "pi", "--ttl", "8d"]),
            "--ttl: expected a duration from 1s to 7d, got '8d'"
        );
        assert!(matches!(
            config(&["operator", "add", "alice", "--out", "a.cred"], &[])
                .unwrap()
                .command,
            Command::OperatorAdd { .. }
        ));
        assert!(usage_error(&["revoke", "x/y"]).starts_with("revoke: expected a name"));
    }

    #[test]
    fn exec_flags_are_checked_once_into_a_typed_config() {
        let Command::Exec(e) = config(&["exec", "--all", "--timeout", "1.5", "--", "ping"], &[])
            .unwrap()
            .command
        else {
            panic!("not exec");
        };
        assert_eq!(e.targets, Targets::All);
        assert_eq!(e.timeout_ms, 1500);
        assert_eq!(e.argv, ["ping"]);
        let Command::Exec(e) = config(
            &["exec", "--host", "a", "--host", "b", "--", "x", "-y"],
            &[],
        )
        .unwrap()
        .command
        else {
            panic!("not exec");
        };
        assert_eq!(e.targets, Targets::Hosts(vec!["a".into(), "b".into()]));
        assert_eq!(e.timeout_ms, 0);
        assert_eq!(e.argv, ["x", "-y"]);
    }

    #[test]
    fn exec_usage_errors_name_the_problem() {
        assert!(usage_error(&["exec", "--all"]).starts_with("exec: name a command after --"));
        assert!(usage_error(&["exec", "--all", "--", ""]).starts_with("exec: name a command"));
        assert!(usage_error(&["exec", "--", "ping"]).contains("--host, or use --all"));
        assert!(usage_error(&["exec", "--all", "--host", "a", "--", "ping"]).contains("not both"));
        let too_many: Vec<String> =
            std::iter::repeat_n("a".to_owned(), command::MAX_ARGS + 1).collect();
        let mut argv = vec!["exec", "--all", "--"];
        argv.extend(too_many.iter().map(String::as_str));
        assert_eq!(
            usage_error(&argv),
            format!(
                "exec: argv: {} arguments (at most 64)",
                command::MAX_ARGS + 1
            )
        );
        for bad in ["soon", "0", "0s", "86401", "2d"] {
            assert_eq!(
                usage_error(&["exec", "--all", "--timeout", bad, "--", "ping"]),
                format!("--timeout: expected seconds from 0.001 to 86400, got '{bad}'")
            );
        }
        for good in ["0.001", "86400", "24h"] {
            config(&["exec", "--all", "--timeout", good, "--", "ping"], &[]).unwrap();
        }
    }

    #[test]
    fn query_and_top_flags_become_values() {
        let Command::Query(q) = config(&["query", "pi", "--metric", "cpu_percent"], &[])
            .unwrap()
            .command
        else {
            panic!("not query");
        };
        assert_eq!(q.metric, Some("cpu_percent"));
        let Command::Query(q) = config(&["query", "pi", "--metric", "fs_used_percent"], &[])
            .unwrap()
            .command
        else {
            panic!("not query");
        };
        assert_eq!(q.metric, Some("fs_used_percent"));
        assert_eq!(q.since, DEFAULT_SINCE);
        assert!(usage_error(&["query", "pi", "--metric", "temp"]).starts_with("--metric: "));
        assert!(usage_error(&["query", "pi", "--since", "yesterday"]).starts_with("--since: "));
        let Command::Top(t) = config(&["top", "--interval", "200ms"], &[])
            .unwrap()
            .command
        else {
            panic!("not top");
        };
        assert_eq!(t.every, MIN_TOP_INTERVAL);
        assert!(
            usage_error(&["top", "--interval", "100ms"])
                .starts_with("--interval: expected a duration of at least 200ms")
        );
    }
}
