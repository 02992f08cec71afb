//! `monitor-server`: flags → validated config → logger → runtime → bind →
//! [`monitor_server::server::run`]. Exit codes: 0 after a clean stop, 1 when
//! the server cannot start or fails, 2 for a usage error.

use std::process::ExitCode;

use monitor_server::config::{Args, Config};
use monitor_server::server::{self, Listeners};

fn main() -> ExitCode {
    let config = match monitor::cli::config_or_exit(
        "monitor-server",
        env!("CARGO_PKG_VERSION"),
        |a: &Args| a.version,
        Config::from_sources,
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    monitor::cli::init_logging("monitor-server", config.log_level);
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
        let shutdown = match monitor::cli::shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot install signal handlers: {e}");
                return Err(None);
            }
        };
        let listeners = Listeners::bind(&config).await.map_err(Some)?;
        server::run(config, listeners, shutdown).await.map_err(Some)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Some(e)) => {
            log::error!("{}", monitor::cli::error_chain(&e));
            ExitCode::FAILURE
        }
        Err(None) => ExitCode::FAILURE,
    }
}
