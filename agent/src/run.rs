//! The agent's top level: wire the sampler, the connection and the command
//! session together on the current thread, and stop them in order. Once a
//! session has settled, give back the pages only start-up touched
//! (`startup_pages.rs`).
//!
//! Shutdown in three steps: notice (the `shutdown` future: SIGTERM/SIGINT
//! from `main`, or a test's trigger), tell (stop the sampler), wait (keep the
//! connection up until the buffer is acknowledged or `shutdown_timeout`
//! passed), then return so `main` exits 0.

use std::fmt;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use monitor::wire::AgentIdentity;

use crate::collector::{Collector, CollectorConfig, CollectorError};
use crate::commands::{Allowlist, AllowlistError, Limits, Policy};
use crate::config::Config;
use crate::filesystems::FsChoice;
use crate::operators::Operators;
use crate::replay::ReplayCache;
use crate::sampler::{self, Sink};
use crate::session;
use crate::session::gate::Gate;
use crate::session::{CommandContext, Connector, Targets};
use crate::spool::{Spool, SpoolError};
use crate::startup_pages::StartupMappings;
use crate::state::Shared;
use crate::thermal::ZoneChoice;
use crate::ticker::Ticker;
use monitor::sd_notify::Notifier;

/// Why the agent could not start.
#[derive(Debug)]
pub enum AgentError {
    Collector(CollectorError),
    Allowlist(AllowlistError),
    Endpoint(tonic::transport::Error),
    Spool(SpoolError),
    Identity(crate::identity::IdentityError),
    Operators(crate::operators::OperatorsError),
    /// The tick timer could not be made (no descriptor left).
    Timer(std::io::Error),
    /// The agent cannot get or use a certificate, and retrying cannot
    /// change that (not enrolled, join token refused).
    NotEnrolled(String),
}

impl AgentError {
    /// The process exit code: 78 (EX_CONFIG, which the unit's
    /// `RestartPreventExitStatus=` keeps systemd from restarting in a loop)
    /// when only an operator can fix it, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::NotEnrolled(_) | AgentError::Identity(_) | AgentError::Operators(_) => 78,
            _ => 1,
        }
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Collector(e) => write!(f, "{e}"),
            AgentError::Allowlist(e) => write!(f, "{e}"),
            AgentError::Endpoint(e) => write!(f, "server URL: {e}"),
            AgentError::Spool(e) => write!(f, "{e}"),
            AgentError::Identity(e) => write!(f, "{e}"),
            AgentError::Operators(e) => write!(f, "operator keys: {e}"),
            AgentError::Timer(e) => write!(f, "tick timer: {e}"),
            AgentError::NotEnrolled(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for AgentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentError::Collector(e) => Some(e),
            AgentError::Allowlist(e) => Some(e),
            AgentError::Endpoint(e) => Some(e),
            AgentError::Spool(e) => Some(e),
            AgentError::Identity(e) => Some(e),
            AgentError::Operators(e) => Some(e),
            AgentError::Timer(e) => Some(e),
            AgentError::NotEnrolled(_) => None,
        }
    }
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The allowlist the policy uses. A file someone else could change is
/// refused: the agent still starts (samples and built-ins go on) but runs
/// no process, says so in its log, and gives the reason with each refusal.
/// A file that cannot be read or parsed stops the agent.
fn load_allowlist(config: &Config) -> Result<Allowlist, AgentError> {
    let explicit = config
        .commands_file_explicit
        .then_some(config.commands_file.as_path());
    match Allowlist::load_configured(explicit) {
        Ok(list) => {
            let missing = if list.exists() {
                ""
            } else {
                " (the file does not exist: no processes)"
            };
            log::info!(
                "{} allowlisted commands from {}{missing}",
                list.entries().count(),
                list.path().display()
            );
            Ok(list)
        }
        Err(e @ AllowlistError::Unsafe { .. }) => {
            let why = e.to_string();
            log::error!("{why}: no process will run until it is fixed and the agent restarted");
            Ok(Allowlist::refused(&config.commands_file, why))
        }
        Err(e) => Err(AgentError::Allowlist(e)),
    }
}

/// What the collector reads, from the agent's configuration.
pub fn collector_config(config: &Config) -> CollectorConfig {
    let mut c = CollectorConfig::new(&config.proc_root, &config.sys_root);
    c.rootfs = config.rootfs.clone();
    c.interfaces = config.interfaces.clone();
    if let Some(zone) = &config.thermal_zone {
        c.thermal_zone = ZoneChoice::Named(zone.clone());
    }
    if let Some(points) = &config.filesystems {
        c.filesystems = FsChoice::Named(points.clone());
    }
    c
}

/// Runs the agent until `shutdown` resolves (or `--count` ticks were sent).
/// Must be called inside a `LocalSet`. `at_start` is the process's mappings
/// as `main` began: their start-up-only pages are given back once the agent
/// is in steady state (`startup_pages.rs`).
pub async fn run(
    config: Config,
    at_start: StartupMappings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let collector = Collector::open(collector_config(&config)).map_err(AgentError::Collector)?;
    let ticker = Ticker::new().map_err(AgentError::Timer)?;
    let identity = AgentIdentity {
        agent_id: config.agent_id.clone(),
        hostname: config.hostname.clone(),
        agent_version: VERSION.to_owned(),
        boot_id: monitor::random::random_u64(),
    };
    let mut shared = Shared::new(identity, config.buffer_batches, config.interval);
    shared.flush_interval = config.flush_interval;
    let shared = Rc::new(shared);

    if config.stdout {
        let release = tokio::task::spawn_local(release_startup_pages(
            Rc::clone(&shared),
            at_start,
            |s: &Shared| s.last_tick.get().is_some(),
        ));
        tokio::select! {
            () = sampler::run(Rc::clone(&shared), collector, ticker, Sink::Stdout, config.count) => {}
            () = shutdown => {}
        }
        release.abort();
        return Ok(());
    }

    let allowlist = load_allowlist(&config)?;
    if config.allow_any_command {
        log::warn!("--allow-any-command: the server may run any program as this agent's user");
    }
    let limits = Limits {
        max_timeout: config.max_command_timeout,
        max_running: config.max_commands,
        ..Limits::default()
    };
    // The state directory keeps the identity and the command ids seen
    // (replay protection across restarts): without it, no commands.
    monitor::files::create_private_dir(&config.state_dir).map_err(|e| {
        AgentError::NotEnrolled(format!(
            "{e}: the agent keeps its identity and the command ids it has seen in its state \
             directory (--state-dir, MONITOR_STATE_DIR)"
        ))
    })?;
    let operators = Rc::new(
        Operators::load(&config.operator_keys, &config.state_dir).map_err(AgentError::Operators)?,
    );
    if config.allow_unsigned_commands {
        log::warn!(
            "--allow-unsigned-commands: whoever controls the server may run commands here \
             without an operator's signature"
        );
    }
    log::info!(
        "{} operator keys trusted for signed commands ({} and enrolment)",
        operators.len(),
        config.operator_keys.display()
    );
    let gate = Gate::new(
        Rc::clone(&operators),
        ReplayCache::open(&config.state_dir, monitor::time::now_unix_ms()),
        config.hostname.clone(),
        config.allow_unsigned_commands,
    );
    let ctx = Rc::new(CommandContext::new(
        Policy::new(allowlist, config.allow_any_command),
        limits,
        gate,
    ));
    let targets = Targets::new(&config.servers, &config.hostname).map_err(AgentError::Endpoint)?;
    let servers = config.servers.join(", ");
    let connector = if config.insecure {
        log::warn!(
            "--insecure: talking to {servers} in plain text with no certificates; anyone on \
             the network path can read and forge samples and commands"
        );
        Connector::insecure(targets)
    } else {
        Connector::tls(
            targets,
            config.state_dir.clone(),
            config.join.clone(),
            config.hostname.clone(),
            Rc::clone(&operators),
        )
        .map_err(AgentError::Identity)?
    };
    if connector.needs_token() {
        return Err(AgentError::NotEnrolled(format!(
            "this agent is not enrolled (no identity in {}): run 'monitorctl enrol {}' where \
             the server runs and start the agent with the token it prints, as MONITOR_JOIN or \
             --join",
            config.state_dir.display(),
            config.hostname
        )));
    }
    if let Some(path) = &config.spool {
        let (spool, recovered) =
            Spool::open(path, config.spool_max_bytes).map_err(AgentError::Spool)?;
        if let Some(aside) = &recovered.moved_aside {
            log::warn!(
                "spool {} was not a spool file: moved to {} and started empty",
                path.display(),
                aside.display()
            );
        }
        if recovered.truncated_bytes > 0 {
            log::warn!(
                "spool {}: cut {} unreadable bytes at its end (a write torn by a crash)",
                path.display(),
                recovered.truncated_bytes
            );
        }
        if !recovered.batches.is_empty() {
            log::info!(
                "{} batches from an earlier run recovered from the spool",
                recovered.batches.len()
            );
        }
        {
            let mut buffer = shared.buffer.borrow_mut();
            for b in recovered.batches {
                buffer.restore(b);
            }
        }
        *shared.spool.borrow_mut() = Some(spool);
    }
    log::info!(
        "monitor-agent {VERSION}: host {} reporting to {} every {}s",
        config.hostname,
        servers,
        config.interval.as_secs_f64()
    );

    let sampler = tokio::task::spawn_local(sampler::run(
        Rc::clone(&shared),
        collector,
        ticker,
        Sink::Buffer,
        config.count,
    ));
    let mut connection = tokio::task::spawn_local(session::run(connector, Rc::clone(&shared), ctx));
    let release = tokio::task::spawn_local(release_startup_pages(
        Rc::clone(&shared),
        at_start,
        |s: &Shared| s.connected.get(),
    ));
    let notifier = Rc::new(Notifier::from_env());
    notifier.ready();
    let watchdog = notifier.watchdog_interval().map(|every| {
        tokio::task::spawn_local(watchdog(Rc::clone(&shared), Rc::clone(&notifier), every))
    });

    let mut sampler = sampler;
    let fatal = tokio::select! {
        () = shutdown => {
            log::info!("stopping");
            None
        }
        _ = &mut sampler => {
            log::info!("--count ticks taken");
            None
        }
        why = &mut connection => Some(why.unwrap_or_else(|e| format!("connection task: {e}"))),
    };
    release.abort();
    if let Some(why) = fatal {
        sampler.abort();
        notifier.stopping();
        return Err(AgentError::NotEnrolled(why));
    }
    sampler.abort();
    notifier.stopping();
    shared.sampling_done.set(true);
    shared.sampler_stopped.notify_one();
    if let Some(w) = watchdog {
        w.abort();
    }

    // Give the connection a bounded time to deliver what is buffered.
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        loop {
            let notified = shared.buffer_drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.buffer.borrow().is_empty() {
                return;
            }
            notified.await;
        }
    })
    .await;
    connection.abort();
    let left = shared.buffer.borrow().len();
    let spooled = shared.spool.borrow().is_some();
    shared.with_spool(|spool, _| spool.sync());
    if drained.is_err() && left > 0 {
        if spooled {
            log::info!("{left} unacknowledged batches kept in the spool for the next start");
        } else {
            log::warn!("{left} batches not acknowledged by the server at shutdown are lost");
        }
    }
    Ok(())
}

/// Gives back the start-up-only pages (`startup_pages.rs`) once the agent
/// is in steady state: `settled` (the session with the server is up, or in
/// `--stdout` mode the sampler has ticked) held at two checks 5 s apart
/// within one session, so the enrolment, the TLS handshake, the first
/// reports and acknowledgements and the command stream's set-up are behind
/// it. Then again each time a later session has settled after one ended:
/// reconnecting (backoff, resolution, a new handshake, the warnings)
/// touches code the steady state does not, 0.5 MiB of it measured after a
/// server restart (with TLS that put the agent 4 KiB over 3.5 MiB until
/// the next release). Checks less often while not settled, and once a
/// minute when nothing is due: the steady state pays tokio's timer a few
/// wake-ups a minute, not per tick.
async fn release_startup_pages(
    shared: Rc<Shared>,
    at_start: StartupMappings,
    settled: impl Fn(&Shared) -> bool,
) {
    let mut schedule = ReleaseSchedule::new();
    let mut wait = ReleaseSchedule::SETTLE_CHECK;
    loop {
        tokio::time::sleep(wait).await;
        let (release, next) = schedule.check(shared.sessions_ended_total.get(), settled(&shared));
        if release {
            // Outside the macro: `log` skips its arguments below the level.
            let released = at_start.release();
            log::info!("{released}");
        }
        wait = next;
    }
}

/// When [`release_startup_pages`] releases, and when it checks next: the
/// decisions alone, so that tests need no clock.
#[derive(Debug, Default)]
struct ReleaseSchedule {
    /// Sessions ended as of the last release (`None`: not released yet).
    released_at: Option<u64>,
    /// Sessions ended as of the previous check, if it found the agent
    /// settled.
    settled_at: Option<u64>,
    /// The wait before this check.
    last_wait: Duration,
}

impl ReleaseSchedule {
    const SETTLE_CHECK: Duration = Duration::from_secs(5);
    /// The longest wait between checks: while not settled (growing to it)
    /// and whenever nothing is due.
    const LONGEST_CHECK: Duration = Duration::from_secs(60);

    /// The schedule before the first check, which comes after
    /// [`Self::SETTLE_CHECK`].
    fn new() -> ReleaseSchedule {
        ReleaseSchedule {
            released_at: None,
            settled_at: None,
            last_wait: Self::SETTLE_CHECK,
        }
    }

    /// One check, given the sessions ended so far and whether the agent is
    /// settled now: whether to release, and the wait before the next check.
    fn check(&mut self, ended: u64, settled: bool) -> (bool, Duration) {
        let (release, wait) = if self.released_at == Some(ended) {
            self.settled_at = None;
            (false, Self::LONGEST_CHECK)
        } else if !settled {
            self.settled_at = None;
            let longer = (self.last_wait * 2).clamp(Self::SETTLE_CHECK, Self::LONGEST_CHECK);
            (false, longer)
        } else if self.settled_at == Some(ended) {
            self.released_at = Some(ended);
            self.settled_at = None;
            (true, Self::LONGEST_CHECK)
        } else {
            self.settled_at = Some(ended);
            (false, Self::SETTLE_CHECK)
        };
        self.last_wait = wait;
        (release, wait)
    }
}

/// Pings systemd's watchdog while the sampler keeps its schedule: a wedged
/// sampler stops the pings and systemd restarts the agent.
async fn watchdog(shared: Rc<Shared>, notifier: Rc<Notifier>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let allowed = *shared.interval.borrow() + std::time::Duration::from_secs(10);
        let on_time = shared
            .last_tick
            .get()
            .is_some_and(|t| t.elapsed() <= allowed);
        if on_time {
            notifier.watchdog();
        } else {
            log::warn!("sampler overdue: not pinging the watchdog");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = ReleaseSchedule::SETTLE_CHECK;
    const IDLE: Duration = ReleaseSchedule::LONGEST_CHECK;

    /// Runs `checks` (sessions ended, settled) through one schedule and
    /// compares each answer.
    fn check(checks: &[(u64, bool)], expected: &[(bool, Duration)]) {
        let mut schedule = ReleaseSchedule::new();
        let got: Vec<(bool, Duration)> = checks
            .iter()
            .map(|&(ended, settled)| schedule.check(ended, settled))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn releases_once_settled_at_two_checks_then_idles() {
        check(
            &[(0, true), (0, true), (0, true), (0, true)],
            &[(false, SETTLE), (true, IDLE), (false, IDLE), (false, IDLE)],
        );
    }

    #[test]
    fn waits_longer_while_the_server_is_unreachable() {
        let s = |n| Duration::from_secs(n);
        check(
            &[
                (1, false),
                (2, false),
                (3, false),
                (4, false),
                (5, false),
                (6, true),
                (6, true),
            ],
            &[
                (false, s(10)),
                (false, s(20)),
                (false, s(40)),
                (false, s(60)),
                (false, s(60)),
                (false, SETTLE),
                (true, IDLE),
            ],
        );
    }

    #[test]
    fn a_session_that_ended_between_the_two_checks_starts_the_settling_again() {
        check(
            &[(0, true), (1, true), (1, true)],
            &[(false, SETTLE), (false, SETTLE), (true, IDLE)],
        );
    }

    #[test]
    fn releases_again_after_a_reconnection_has_settled() {
        check(
            &[
                (0, true),
                (0, true),
                (0, true),
                (2, true),
                (2, true),
                (2, true),
            ],
            &[
                (false, SETTLE),
                (true, IDLE),
                (false, IDLE),
                (false, SETTLE),
                (true, IDLE),
                (false, IDLE),
            ],
        );
    }
}
