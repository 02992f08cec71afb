//! `monitorctl`: the operator's tool. See [`monitor_server::ctl`] for the
//! commands and exit codes (0 ok, 1 failed, 2 usage, 3 server unreachable).

use std::process::ExitCode;

use monitor_server::ctl::{self, Args};

fn main() -> ExitCode {
    let args: Args = match monitor::cli::args_or_exit("monitorctl") {
        Ok(a) => a,
        Err(code) => return code,
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
    let env = monitor::cli::env_var;
    match runtime.block_on(ctl::run(args, &env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ctl::CtlError::Reported) => ExitCode::from(1),
        Err(ctl::CtlError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("monitorctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
