//! `monitor-server`: flags → validated config → logger → runtime → bind →
//! [`monitor_server::server::run`]. Exit codes: 0 after a clean stop, 1 when
//! the server cannot start or fails, 2 for a usage error.

use std::process::ExitCode;

use monitor_server::config::{Args, Config};
use monitor_server::server::{self, Listeners};

fn main() -> ExitCode {
    let args: Args = match monitor::cli::args_or_exit("monitor-server") {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.version {
        println!("monitor-server {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let env = monitor::cli::env_var;
    let config = match Config::from_sources(args, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("monitor-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .with_module_level("h2", log::LevelFilter::Warn)
        .with_module_level("hyper", log::LevelFilter::Warn)
        .init()
    {
        eprintln!("monitor-server: cannot set up logging: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        server::run(config, listeners, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{}", monitor::cli::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (never, if they cannot be
/// watched: then only SIGKILL stops the server, which the store survives).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            log::error!("cannot watch SIGTERM/SIGINT");
            std::future::pending::<()>().await;
        }
    }
}
