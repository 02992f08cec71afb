//! The agent's configuration: flags (argh) override environment variables,
//! which override defaults.
//!
//! Everything is validated here, once, into a [`Config`] whose fields are
//! already typed (durations, URLs, paths). A bad value is a
//! [`ConfigError`] naming the flag or variable and the value, and `main`
//! exits with code 2 on it. The environment is passed in as a function so
//! tests never touch the process environment.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
pub use monitor::config::ConfigError;
use monitor::config::{Env, pick};

/// Reports this host's CPU, memory, disk and network rates to a
/// monitor-server and runs the commands it pushes, under a strict policy.
///
/// Every option can also be set by the environment variable named in its
/// description; the flag wins.
#[derive(FromArgs, Debug, Default)]
pub struct Args {
    /// server URL, or several replicas' URLs separated by commas; a DNS
    /// name with several addresses counts as a list of them
    /// (MONITOR_SERVER; default: the join token's, else
    /// https://127.0.0.1:50051)
    #[argh(option)]
    pub server: Option<String>,
    /// join token from 'monitorctl enrol HOSTNAME', used once to get this
    /// agent's certificate (MONITOR_JOIN)
    #[argh(option)]
    pub join: Option<String>,
    /// where the agent keeps its key and certificate (MONITOR_STATE_DIR;
    /// default $STATE_DIRECTORY under systemd, else /var/lib/monitor-agent)
    #[argh(option)]
    pub state_dir: Option<PathBuf>,
    /// talk to the server in plain text, with no certificates: anyone on
    /// the path can read, forge and command (MONITOR_INSECURE=1)
    #[argh(switch)]
    pub insecure: bool,
    /// seconds between samples, fractions allowed (MONITOR_INTERVAL; default 5)
    #[argh(option)]
    pub interval: Option<String>,
    /// longest a sample waits before it is sent: at shorter intervals the
    /// ticks of one flush interval go out in one write, 0 sends each tick
    /// at once (MONITOR_FLUSH_INTERVAL; default 1s, up to 60s)
    #[argh(option)]
    pub flush_interval: Option<String>,
    /// name samples are reported under (MONITOR_HOSTNAME; default: the
    /// kernel hostname)
    #[argh(option)]
    pub hostname: Option<String>,
    /// stable agent identity (MONITOR_AGENT_ID; default: the hostname)
    #[argh(option)]
    pub agent_id: Option<String>,
    /// comma-separated interfaces to count for net_* (MONITOR_INTERFACES;
    /// default: every physical interface)
    #[argh(option)]
    pub interfaces: Option<String>,
    /// where procfs is mounted (MONITOR_PROC_ROOT; default /proc)
    #[argh(option)]
    pub proc_root: Option<PathBuf>,
    /// where sysfs is mounted (MONITOR_SYS_ROOT; default /sys)
    #[argh(option)]
    pub sys_root: Option<PathBuf>,
    /// root prefix mount points are measured under, like node_exporter's
    /// --path.rootfs: the host's / seen from a container (MONITOR_ROOTFS;
    /// default /)
    #[argh(option)]
    pub rootfs: Option<String>,
    /// thermal zone for temp_celsius, by directory name (thermal_zone0) or
    /// type (cpu-thermal) (MONITOR_THERMAL_ZONE; default: the hottest)
    #[argh(option)]
    pub thermal_zone: Option<String>,
    /// comma-separated mount points for fs_used_percent, whatever their
    /// type (MONITOR_FILESYSTEMS; default: every real local file system)
    #[argh(option)]
    pub filesystems: Option<String>,
    /// print each sample as a JSON line on stdout instead of sending it
    #[argh(switch)]
    pub stdout: bool,
    /// stop after this many ticks (for --stdout and benchmarks; default: run
    /// until stopped)
    #[argh(option)]
    pub count: Option<u64>,
    /// allowlist of commands the server may run (MONITOR_COMMANDS_FILE;
    /// default /etc/monitor/commands.allow, optional)
    #[argh(option)]
    pub commands_file: Option<PathBuf>,
    /// let the server run any program, not just allowlisted ones
    /// (MONITOR_ALLOW_ANY_COMMAND=1). Dangerous
    #[argh(switch)]
    pub allow_any_command: bool,
    /// operators' public keys whose signed commands this agent runs
    /// (MONITOR_OPERATOR_KEYS; default /etc/monitor/operators, optional;
    /// the keys a join token carried are trusted too)
    #[argh(option)]
    pub operator_keys: Option<PathBuf>,
    /// run commands nobody signed, from whoever controls the server
    /// (MONITOR_ALLOW_UNSIGNED_COMMANDS=1). Dangerous
    #[argh(switch)]
    pub allow_unsigned_commands: bool,
    /// commands that may run at once (MONITOR_MAX_COMMANDS; default 2)
    #[argh(option)]
    pub max_commands: Option<String>,
    /// longest a command may run, whatever the server asks
    /// (MONITOR_MAX_COMMAND_TIMEOUT; default 5m)
    #[argh(option)]
    pub max_command_timeout: Option<String>,
    /// batches kept while the server is unreachable (MONITOR_BUFFER_BATCHES;
    /// default 8192: 11 hours at 5 s in about 600 KiB)
    #[argh(option)]
    pub buffer_batches: Option<String>,
    /// file that keeps unacknowledged batches across restarts
    /// (MONITOR_SPOOL; default: none)
    #[argh(option)]
    pub spool: Option<PathBuf>,
    /// largest size of the spool file (MONITOR_SPOOL_MAX_BYTES; default 4194304)
    #[argh(option)]
    pub spool_max_bytes: Option<String>,
    /// how long to keep sending buffered batches after SIGTERM
    /// (MONITOR_SHUTDOWN_TIMEOUT; default 5s)
    #[argh(option)]
    pub shutdown_timeout: Option<String>,
    /// error, warn, info or debug (MONITOR_LOG; default info)
    #[argh(option)]
    pub log: Option<String>,
    /// check an allowlist file (format, owner, permissions), say what each
    /// entry allows, and exit: 0 valid, 1 invalid, 2 usage. Nothing else
    /// starts, and every other option is ignored
    #[argh(option)]
    pub check_commands: Option<PathBuf>,
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
}

/// What the binary was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Run the agent.
    Run(Box<Config>),
    /// `--check-commands FILE`: check the allowlist and exit.
    CheckCommands(PathBuf),
}

impl Mode {
    /// `--check-commands` alone decides (nothing else is read, so a bad
    /// value elsewhere cannot get in the way of checking a file); otherwise
    /// the agent's [`Config`].
    pub fn from_sources(args: Args, env: Env<'_>) -> Result<Mode, ConfigError> {
        match args.check_commands {
            Some(path) if path.as_os_str().is_empty() => Err(ConfigError {
                source: "--check-commands".into(),
                message: "expected the path of an allowlist file, got ''".into(),
            }),
            Some(path) => Ok(Mode::CheckCommands(path)),
            None => Config::from_sources(args, env).map(|c| Mode::Run(Box::new(c))),
        }
    }
}

/// Validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// URLs of the servers' agent listeners (replicas sharing one store):
    /// https://, or http:// with `insecure`. At least one, at most
    /// [`MAX_SERVERS`]; a host that is a DNS name is resolved at each
    /// connection attempt (`session/targets.rs`).
    pub servers: Vec<String>,
    /// Plain text, no certificates (`--insecure`).
    pub insecure: bool,
    /// Where the identity (key, certificate, CA) lives.
    pub state_dir: PathBuf,
    /// A join token to enrol with (used once; see `identity.rs`).
    pub join: Option<monitor::join::JoinToken>,
    pub interval: Duration,
    /// Longest a batch waits before it is sent (`flush.rs`).
    pub flush_interval: Duration,
    pub hostname: String,
    pub agent_id: String,
    /// `None`: every physical interface.
    pub interfaces: Option<Vec<String>>,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// Root prefix for mount points (`/` unless the agent watches a host
    /// from a container).
    pub rootfs: PathBuf,
    /// `None`: the hottest zone.
    pub thermal_zone: Option<String>,
    /// `None`: every real local file system.
    pub filesystems: Option<Vec<String>>,
    pub stdout: bool,
    pub count: Option<u64>,
    pub commands_file: PathBuf,
    /// Whether `commands_file` was named explicitly (then it must exist).
    pub commands_file_explicit: bool,
    pub allow_any_command: bool,
    /// The operators file (may be missing: then only enrolled keys).
    pub operator_keys: PathBuf,
    pub allow_unsigned_commands: bool,
    pub max_commands: usize,
    pub max_command_timeout: Duration,
    pub buffer_batches: usize,
    pub spool: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub shutdown_timeout: Duration,
    pub log_level: log::LevelFilter,
}

pub const DEFAULT_SERVER: &str = "https://127.0.0.1:50051";
/// Most servers MONITOR_SERVER may list.
pub const MAX_SERVERS: usize = 16;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/monitor-agent";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_COMMANDS_FILE: &str = crate::commands::DEFAULT_ALLOWLIST_PATH;
/// Shortest interval accepted: below it the tick cost stops being small
/// next to the interval.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest interval accepted (one day).
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// Accepts `https://host:port` (or `http://` when `insecure`), or
/// `host:port` with the scheme assumed.
pub fn parse_server_url(raw: &str, insecure: bool) -> Result<String, String> {
    let raw = raw.trim();
    let (scheme, other) = if insecure {
        ("http://", "https://")
    } else {
        ("https://", "http://")
    };
    let url = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("{scheme}{raw}")
    };
    if url.starts_with(other) {
        return Err(if insecure {
            "an http:// URL (--insecure talks plain text)".into()
        } else {
            "an https:// URL (http:// is plain text: only with --insecure)".into()
        });
    }
    let Some(rest) = url.strip_prefix(scheme) else {
        return Err(format!("a URL like {scheme}server:50051"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(format!("a URL like {scheme}server:50051"));
    }
    match tonic::transport::Endpoint::from_shared(url.clone()) {
        Ok(_) => Ok(url),
        Err(_) => Err(format!("a URL like {scheme}server:50051")),
    }
}

/// The non-empty items of a comma-separated list, trimmed.
fn comma_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A comma-separated list of server URLs, each as [`parse_server_url`]
/// takes it (replicas of one server on a shared store).
pub fn parse_server_urls(raw: &str, insecure: bool) -> Result<Vec<String>, String> {
    let urls = raw
        .split(',')
        .map(|u| parse_server_url(u, insecure))
        .collect::<Result<Vec<String>, String>>()?;
    if urls.len() > MAX_SERVERS {
        return Err(format!("at most {MAX_SERVERS} comma-separated URLs"));
    }
    Ok(urls)
}

fn kernel_hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
}

impl Config {
    /// Builds the configuration from parsed flags and an environment.
    pub fn from_sources(args: Args, env: Env<'_>) -> Result<Config, ConfigError> {
        let insecure = args.insecure
            || match pick(None, "", "MONITOR_INSECURE", env) {
                Some(raw) => raw.bool()?,
                None => false,
            };
        let join = match pick(args.join, "join", "MONITOR_JOIN", env) {
            Some(raw) if raw.value.trim().is_empty() => None,
            Some(raw) => {
                Some(
                    monitor::join::JoinToken::decode(&raw.value).map_err(|e| ConfigError {
                        source: raw.source.clone(),
                        message: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let servers =
            match pick(args.server, "server", "MONITOR_SERVER", env) {
                Some(raw) => parse_server_urls(&raw.value, insecure).map_err(|e| raw.error(&e))?,
                None => match join.as_ref().filter(|t| !t.server_url.is_empty()) {
                    Some(t) => vec![parse_server_url(&t.server_url, insecure).map_err(|e| {
                        ConfigError {
                            source: "the join token's server URL".into(),
                            message: format!("expected {e}, got '{}'", t.server_url),
                        }
                    })?],
                    None if insecure => vec!["http://127.0.0.1:50051".to_owned()],
                    None => vec![DEFAULT_SERVER.to_owned()],
                },
            };
        let state_dir = args
            .state_dir
            .or_else(|| {
                env("MONITOR_STATE_DIR")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
            .or_else(|| {
                // systemd's StateDirectory= (the first of a colon list).
                env("STATE_DIRECTORY")
                    .filter(|s| !s.is_empty())
                    .map(|d| PathBuf::from(d.split(':').next().unwrap_or(DEFAULT_STATE_DIR)))
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let interval = match pick(args.interval, "interval", "MONITOR_INTERVAL", env) {
            Some(raw) => raw.duration(MIN_INTERVAL, MAX_INTERVAL)?,
            None => DEFAULT_INTERVAL,
        };
        let flush_interval = match pick(
            args.flush_interval,
            "flush-interval",
            "MONITOR_FLUSH_INTERVAL",
            env,
        ) {
            Some(raw) => raw.duration(Duration::ZERO, crate::flush::MAX_FLUSH_INTERVAL)?,
            None => crate::flush::DEFAULT_FLUSH_INTERVAL,
        };
        let hostname = match pick(args.hostname, "hostname", "MONITOR_HOSTNAME", env) {
            Some(raw) if monitor::wire::valid_hostname(raw.value.trim()) => {
                raw.value.trim().to_owned()
            }
            Some(raw) => {
                return Err(raw
                    .error("a hostname of letters, digits, '.', '-' and '_' (at most 253 bytes)"));
            }
            None => kernel_hostname()
                .filter(|h| monitor::wire::valid_hostname(h))
                .ok_or_else(|| ConfigError {
                    source: "hostname".into(),
                    message: "the kernel hostname is empty or unusable: set MONITOR_HOSTNAME"
                        .into(),
                })?,
        };
        let agent_id = match pick(args.agent_id, "agent-id", "MONITOR_AGENT_ID", env) {
            Some(raw) => {
                let v = raw.value.trim();
                if v.is_empty() || v.len() > monitor::wire::MAX_ID_BYTES {
                    return Err(raw.error("a non-empty id of at most 256 bytes"));
                }
                v.to_owned()
            }
            None => hostname.clone(),
        };
        let interfaces = match pick(args.interfaces, "interfaces", "MONITOR_INTERFACES", env) {
            Some(raw) => {
                let names = comma_list(&raw.value);
                // Linux interface names are at most 15 bytes, no '/' or
                // white space.
                if names.is_empty()
                    || names
                        .iter()
                        .any(|n| n.len() > 15 || n.contains(['/', ':', ' ']))
                {
                    return Err(raw.error("comma-separated interface names like eth0,wlan0"));
                }
                Some(names)
            }
            None => None,
        };
        let path_or = |flag: Option<PathBuf>, var: &str, default: &str| -> PathBuf {
            flag.or_else(|| env(var).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let proc_root = path_or(args.proc_root, "MONITOR_PROC_ROOT", "/proc");
        let sys_root = path_or(args.sys_root, "MONITOR_SYS_ROOT", "/sys");
        let rootfs = match pick(args.rootfs, "rootfs", "MONITOR_ROOTFS", env) {
            Some(raw) => {
                let path = PathBuf::from(raw.value.trim());
                if !path.is_absolute() {
                    return Err(raw.error("an absolute directory like /host"));
                }
                path
            }
            None => PathBuf::from("/"),
        };
        let thermal_zone = match pick(
            args.thermal_zone,
            "thermal-zone",
            "MONITOR_THERMAL_ZONE",
            env,
        ) {
            Some(raw) => {
                let v = raw.value.trim();
                // Zone directories and types are short words; no '/'.
                if v.is_empty() || v.len() > 64 || v.contains(['/', ' ', '\t', '\n']) {
                    return Err(raw.error("a zone name like thermal_zone0 or cpu-thermal"));
                }
                Some(v.to_owned())
            }
            None => None,
        };
        let filesystems = match pick(args.filesystems, "filesystems", "MONITOR_FILESYSTEMS", env) {
            Some(raw) => {
                let points = comma_list(&raw.value);
                if points.is_empty()
                    || points.iter().any(|p| {
                        !p.starts_with('/') || p.len() > 4096 || p.split('/').any(|c| c == "..")
                    })
                {
                    return Err(
                        raw.error("comma-separated absolute mount points like /,/boot/firmware")
                    );
                }
                Some(points)
            }
            None => None,
        };
        let explicit_commands = args.commands_file.or_else(|| {
            env("MONITOR_COMMANDS_FILE")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let commands_file_explicit = explicit_commands.is_some();
        let commands_file =
            explicit_commands.unwrap_or_else(|| PathBuf::from(DEFAULT_COMMANDS_FILE));
        let allow_any_command = if args.allow_any_command {
            true
        } else {
            match pick(None, "", "MONITOR_ALLOW_ANY_COMMAND", env) {
                Some(raw) => raw.bool()?,
                None => false,
            }
        };
        let operator_keys = args
            .operator_keys
            .or_else(|| {
                env("MONITOR_OPERATOR_KEYS")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(crate::operators::DEFAULT_OPERATOR_KEYS));
        let allow_unsigned_commands = args.allow_unsigned_commands
            || match pick(None, "", "MONITOR_ALLOW_UNSIGNED_COMMANDS", env) {
                Some(raw) => raw.bool()?,
                None => false,
            };
        let max_commands = match pick(
            args.max_commands,
            "max-commands",
            "MONITOR_MAX_COMMANDS",
            env,
        ) {
            Some(raw) => raw.count(0, 64)? as usize,
            None => 2,
        };
        let max_command_timeout = match pick(
            args.max_command_timeout,
            "max-command-timeout",
            "MONITOR_MAX_COMMAND_TIMEOUT",
            env,
        ) {
            Some(raw) => raw.duration(Duration::from_secs(1), Duration::from_secs(86_400))?,
            None => Duration::from_secs(300),
        };
        let buffer_batches = match pick(
            args.buffer_batches,
            "buffer-batches",
            "MONITOR_BUFFER_BATCHES",
            env,
        ) {
            Some(raw) => raw.count(1, 1_000_000)? as usize,
            None => 8192,
        };
        let spool = args.spool.or_else(|| {
            env("MONITOR_SPOOL")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let spool_max_bytes = match pick(
            args.spool_max_bytes,
            "spool-max-bytes",
            "MONITOR_SPOOL_MAX_BYTES",
            env,
        ) {
            Some(raw) => raw.count(4096, 1 << 34)?,
            None => 4 << 20,
        };
        let shutdown_timeout = match pick(
            args.shutdown_timeout,
            "shutdown-timeout",
            "MONITOR_SHUTDOWN_TIMEOUT",
            env,
        ) {
            Some(raw) => raw.duration(Duration::ZERO, Duration::from_secs(600))?,
            None => Duration::from_secs(5),
        };
        let log_level = match pick(args.log, "log", "MONITOR_LOG", env) {
            Some(raw) => raw.log_level()?,
            None => log::LevelFilter::Info,
        };
        if args.count == Some(0) {
            return Err(ConfigError {
                source: "--count".into(),
                message: "expected a whole number above 0, got '0'".into(),
            });
        }
        Ok(Config {
            servers,
            insecure,
            state_dir,
            join,
            interval,
            flush_interval,
            hostname,
            agent_id,
            interfaces,
            proc_root,
            sys_root,
            rootfs,
            thermal_zone,
            filesystems,
            stdout: args.stdout,
            count: args.count,
            commands_file,
            commands_file_explicit,
            allow_any_command,
            operator_keys,
            allow_unsigned_commands,
            max_commands,
            max_command_timeout,
            buffer_batches,
            spool,
            spool_max_bytes,
            shutdown_timeout,
            log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn parse(
        flags: &[&str],
        env: &'static [(&'static str, &'static str)],
    ) -> Result<Config, ConfigError> {
        let args = Args::from_args(&["monitor-agent"], flags).expect("flags parse");
        Config::from_sources(args, &env_of(env))
    }

    fn check_err(flags: &[&str], env: &'static [(&'static str, &'static str)], expected: &str) {
        let err = parse(flags, env).expect_err("should fail").to_string();
        assert_eq!(err, expected);
    }

    #[test]
    fn defaults() {
        let c = parse(&["--hostname", "h1"], &[]).unwrap();
        assert_eq!(c.servers, [DEFAULT_SERVER]);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.agent_id, "h1");
        assert_eq!(c.interfaces, None);
        assert_eq!(c.proc_root, PathBuf::from("/proc"));
        assert_eq!(c.commands_file, PathBuf::from(DEFAULT_COMMANDS_FILE));
        assert!(!c.commands_file_explicit);
        assert!(!c.allow_any_command);
        assert_eq!(c.max_commands, 2);
        assert_eq!(c.buffer_batches, 8192);
        assert_eq!(c.flush_interval, Duration::from_secs(1));
        assert_eq!(c.log_level, log::LevelFilter::Info);
    }

    #[test]
    fn flush_interval_from_zero_to_a_minute() {
        let c = parse(&["--hostname", "h", "--flush-interval", "0"], &[]).unwrap();
        assert_eq!(c.flush_interval, Duration::ZERO);
        let env: &'static [(&'static str, &'static str)] = &[("MONITOR_FLUSH_INTERVAL", "2.5")];
        let c = parse(&["--hostname", "h"], env).unwrap();
        assert_eq!(c.flush_interval, Duration::from_millis(2500));
        let err = parse(&["--hostname", "h", "--flush-interval", "61"], &[])
            .expect_err("past a minute")
            .to_string();
        assert!(
            err.starts_with("--flush-interval: expected a duration"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_environment() {
        let env: &'static [(&'static str, &'static str)] = &[
            ("MONITOR_INTERVAL", "2"),
            ("MONITOR_SERVER", "10.0.0.1:7000"),
            ("MONITOR_HOSTNAME", "from-env"),
            ("MONITOR_INTERFACES", "eth0, wlan0"),
        ];
        let c = parse(&["--interval", "0.5"], env).unwrap();
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.servers, ["https://10.0.0.1:7000"]);
        assert_eq!(c.hostname, "from-env");
        assert_eq!(c.interfaces, Some(vec!["eth0".into(), "wlan0".into()]));
    }

    #[test]
    fn bad_values_name_their_source() {
        check_err(
            &["--hostname", "h"],
            &[("MONITOR_INTERVAL", "abc")],
            "MONITOR_INTERVAL: expected a duration like 5, 2.5, 500ms, 30s or 5m, got 'abc'",
        );
        check_err(
            &["--hostname", "h", "--interval", "0"],
            &[],
            "--interval: expected a duration from 100ms to 1d, got '0'",
        );
        check_err(
            &["--hostname", "h"],
            &[("MONITOR_SERVER", "http://x:1")],
            "MONITOR_SERVER: expected an https:// URL (http:// is plain text: only with --insecure), got 'http://x:1'",
        );
        check_err(
            &["--hostname", "h", "--insecure"],
            &[("MONITOR_SERVER", "https://x:1")],
            "MONITOR_SERVER: expected an http:// URL (--insecure talks plain text), got 'https://x:1'",
        );
        check_err(
            &["--hostname", "h"],
            &[("MONITOR_JOIN", "not-a-token")],
            "MONITOR_JOIN: not a join token (it starts with 'monitor-join-1.'; get one from 'monitorctl enrol HOSTNAME')",
        );
        check_err(
            &["--hostname", "bad host"],
            &[],
            "--hostname: expected a hostname of letters, digits, '.', '-' and '_' (at most 253 bytes), got 'bad host'",
        );
        check_err(
            &["--hostname", "h"],
            &[("MONITOR_ALLOW_ANY_COMMAND", "maybe")],
            "MONITOR_ALLOW_ANY_COMMAND: expected 1/true/yes or 0/false/no, got 'maybe'",
        );
        check_err(
            &["--hostname", "h"],
            &[("MONITOR_BUFFER_BATCHES", "0")],
            "MONITOR_BUFFER_BATCHES: expected a whole number from 1 to 1000000, got '0'",
        );
        check_err(
            &["--hostname", "h"],
            &[("MONITOR_LOG", "loud")],
            "MONITOR_LOG: expected error, warn, info, debug, trace or off, got 'loud'",
        );
        check_err(
            &["--hostname", "h", "--interfaces", ","],
            &[],
            "--interfaces: expected comma-separated interface names like eth0,wlan0, got ','",
        );
    }

    #[test]
    fn check_commands_is_a_mode_of_its_own() {
        let mode = |flags: &[&str], env| {
            let args = Args::from_args(&["monitor-agent"], flags).expect("flags parse");
            Mode::from_sources(args, &env_of(env))
        };
        // Other flags and variables, even bad ones, do not matter.
        assert_eq!(
            mode(
                &["--check-commands", "/x/commands.allow", "--interval", "0"],
                &[("MONITOR_LOG", "loud")]
            ),
            Ok(Mode::CheckCommands(PathBuf::from("/x/commands.allow")))
        );
        assert_eq!(
            mode(&["--check-commands", ""], &[]).map_err(|e| e.to_string()),
            Err("--check-commands: expected the path of an allowlist file, got ''".to_owned())
        );
        match mode(&["--hostname", "h1"], &[]) {
            Ok(Mode::Run(c)) => assert_eq!(c.hostname, "h1"),
            other => panic!("expected the agent's config, got {other:?}"),
        }
        assert_eq!(
            mode(&["--hostname", "h1", "--interval", "0"], &[]).map_err(|e| e.to_string()),
            Err("--interval: expected a duration from 100ms to 1d, got '0'".to_owned())
        );
    }

    #[test]
    fn server_urls() {
        assert_eq!(parse_server_url("h:1", false).unwrap(), "https://h:1");
        assert_eq!(parse_server_url("h:1", true).unwrap(), "http://h:1");
        assert_eq!(
            parse_server_url("https://[::1]:50051", false).unwrap(),
            "https://[::1]:50051"
        );
        assert_eq!(
            parse_server_url("http://[::1]:50051", true).unwrap(),
            "http://[::1]:50051"
        );
        assert!(parse_server_url("https://", false).is_err());
        assert!(parse_server_url("ftp://h:1", false).is_err());
        assert!(parse_server_url("http://h:1", false).is_err());
        assert!(parse_server_url("https://h:1", true).is_err());
        assert_eq!(
            parse_server_urls("a:1, https://b:2", false).unwrap(),
            ["https://a:1", "https://b:2"]
        );
        assert!(parse_server_urls("a:1,,b:2", false).is_err());
        assert!(parse_server_urls("a:1,http://b:2", false).is_err());
        let too_many = vec!["h:1"; MAX_SERVERS + 1].join(",");
        assert_eq!(
            parse_server_urls(&too_many, false).unwrap_err(),
            format!("at most {MAX_SERVERS} comma-separated URLs")
        );
    }

    #[test]
    fn the_join_token_gives_the_server_url_and_systemd_the_state_dir() {
        let token = monitor::join::JoinToken {
            secret: [1; 16],
            expires_unix_ms: 1,
            hostname: "h".into(),
            server_url: "https://monitor.lan:50051".into(),
            ca_der: vec![1],
            operator_keys: vec![],
        }
        .encode()
        .unwrap();
        let token: &'static str = Box::leak(token.into_boxed_str());
        let env: &'static [(&'static str, &'static str)] = Box::leak(Box::new([
            ("MONITOR_JOIN", token),
            ("STATE_DIRECTORY", "/var/lib/x:/other"),
        ]));
        let c = parse(&["--hostname", "h"], env).unwrap();
        assert_eq!(c.servers, ["https://monitor.lan:50051"]);
        assert_eq!(c.join.unwrap().hostname, "h");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/x"));
        let c = parse(&["--hostname", "h", "--state-dir", "/s"], &[]).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        assert_eq!(c.join, None);
        assert!(!c.insecure);
    }
}
