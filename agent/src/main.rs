//! `monitor-agent`: flags → validated config → logger → current-thread
//! runtime → [`monitor_agent::run::run`]. Exit codes: 0 after a clean stop,
//! 1 when the agent cannot start, 2 for a usage error.

use std::process::ExitCode;

use argh::FromArgs;
use monitor_agent::config::{Args, Config};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let strs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (cmd, rest) = strs.split_first().unwrap_or((&"monitor-agent", &[]));
    let args = match Args::from_args(&[cmd], rest) {
        Ok(args) => args,
        Err(early) => {
            return if early.status.is_ok() {
                println!("{}", early.output);
                ExitCode::SUCCESS
            } else {
                eprintln!("{}", early.output.trim_end());
                eprintln!("Run monitor-agent --help for usage.");
                ExitCode::from(2)
            };
        }
    };
    if args.version {
        println!("monitor-agent {}", monitor_agent::run::VERSION);
        return ExitCode::SUCCESS;
    }
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let config = match Config::from_sources(args, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("monitor-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .init()
    {
        eprintln!("monitor-agent: cannot set up logging: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async {
        let shutdown = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot install signal handlers: {e}");
                return Err(None);
            }
        };
        monitor_agent::run::run(config, shutdown)
            .await
            .map_err(Some)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Some(e)) => {
            log::error!("{}", error_chain(&e));
            ExitCode::FAILURE
        }
        Err(None) => ExitCode::FAILURE,
    }
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// "outer: inner: innermost", each cause once.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}
