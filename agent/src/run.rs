//! The agent's top level: wire the sampler, the connection and the command
//! session together on the current thread, and stop them in order.
//!
//! Shutdown in three steps: notice (the `shutdown` future: SIGTERM/SIGINT
//! from `main`, or a test's trigger), tell (stop the sampler), wait (keep the
//! connection up until the buffer is acknowledged or `shutdown_timeout`
//! passed), then return so `main` exits 0.

use std::fmt;
use std::future::Future;
use std::rc::Rc;

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
/// Must be called inside a `LocalSet`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let collector = Collector::open(collector_config(&config)).map_err(AgentError::Collector)?;
    let ticker = Ticker::new().map_err(AgentError::Timer)?;
    let identity = AgentIdentity {
        agent_id: config.agent_id.clone(),
        hostname: config.hostname.clone(),
        agent_version: VERSION.to_owned(),
        boot_id: monitor::random::random_u64(),
    };
    let shared = Rc::new(Shared::new(
        identity,
        config.buffer_batches,
        config.interval,
    ));

    if config.stdout {
        tokio::select! {
            () = sampler::run(Rc::clone(&shared), collector, ticker, Sink::Stdout, config.count) => {}
            () = shutdown => {}
        }
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
    if let Some(why) = fatal {
        sampler.abort();
        notifier.stopping();
        return Err(AgentError::NotEnrolled(why));
    }
    sampler.abort();
    notifier.stopping();
    shared.sampling_done.set(true);
    shared.batch_ready.notify_one();
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
