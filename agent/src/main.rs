//! `monitor-agent`: flags → validated config → logger → current-thread
//! runtime → [`monitor_agent::run::run`]. Exit codes: 0 after a clean stop,
//! 1 when the agent cannot start, 2 for a usage error, 78 when it is not
//! enrolled or its join token was refused (only an operator can fix that).
//! `--check-commands FILE` checks an allowlist instead and exits 0 (valid),
//! 1 (invalid) or 2 (usage), starting nothing else.

use std::process::ExitCode;

use monitor_agent::config::{Args, Mode};

fn main() -> ExitCode {
    // First, while this is the only thread and every library is loaded:
    // which mappings the start-up pages may later be given back from.
    let at_start = monitor_agent::startup_pages::StartupMappings::snapshot();
    let mode = match monitor::cli::config_or_exit(
        "monitor-agent",
        monitor_agent::run::VERSION,
        |a: &Args| a.version,
        Mode::from_sources,
    ) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let config = match mode {
        Mode::Run(config) => *config,
        Mode::CheckCommands(path) => return check_commands(&path),
    };
    monitor::cli::init_logging("monitor-agent", config.log_level);
    // A `LocalRuntime`, not `build()`: `build()` can also start tokio's
    // multi-thread scheduler, which a plain `cargo build` at the workspace
    // root compiles in for the server. Linking it would cost the agent libm
    // (0.3 MiB resident) and make its RSS depend on how it was built.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(tokio::runtime::LocalOptions::default())
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let result = runtime.block_on(local.run_until(async {
        let shutdown = match monitor::cli::shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot install signal handlers: {e}");
                return Err(None);
            }
        };
        monitor_agent::run::run(config, at_start, shutdown)
            .await
            .map_err(Some)
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Some(e)) => {
            log::error!("{}", monitor::cli::error_chain(&e));
            ExitCode::from(e.exit_code())
        }
        Err(None) => ExitCode::FAILURE,
    }
}

/// `--check-commands`: the report on stdout, errors on stderr.
fn check_commands(path: &std::path::Path) -> ExitCode {
    use monitor_agent::commands::{allowfile, check};
    let uid = allowfile::agent_uid();
    match check::check(path, uid, &mut std::io::stdout(), &mut std::io::stderr()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("monitor-agent: cannot write the report: {e}");
            ExitCode::from(check::INVALID)
        }
    }
}
