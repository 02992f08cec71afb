//! `monitorctl`: flags → validated [`Config`] → current-thread runtime →
//! [`monitorctl::run`]; prints the error chain once. Exit codes: 0 ok, 1
//! the operation failed, 2 usage error, 3 server unreachable.

use std::process::ExitCode;

use monitorctl::args::{Args, Config};
use monitorctl::error::CtlError;

fn main() -> ExitCode {
    let args: Args = match monitor::cli::args_or_exit("monitorctl") {
        Ok(a) => a,
        Err(code) => return code,
    };
    let env = monitor::cli::env_var;
    let config = match Config::from_args(args, &env) {
        Ok(c) => c,
        Err(e) => return exit(CtlError::Usage(e)),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("monitorctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(monitorctl::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit(e),
    }
}

/// Prints `e` with its causes (unless it was reported already) and gives
/// its exit code.
fn exit(e: CtlError) -> ExitCode {
    if e.needs_report() {
        eprintln!("monitorctl: {}", monitor::cli::error_chain(&e));
    }
    ExitCode::from(e.exit_code())
}
