//! `monitorctl`: the operator's tool. See [`monitor_server::ctl`] for the
//! commands and exit codes (0 ok, 1 failed, 2 usage, 3 server unreachable).

use std::process::ExitCode;

use argh::FromArgs;
use monitor_server::ctl::{self, Args};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let strs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (cmd, rest) = strs.split_first().unwrap_or((&"monitorctl", &[]));
    let args = match Args::from_args(&[cmd], rest) {
        Ok(a) => a,
        Err(early) => {
            return if early.status.is_ok() {
                println!("{}", early.output);
                ExitCode::SUCCESS
            } else {
                eprintln!("{}", early.output.trim_end());
                eprintln!("Run monitorctl --help for usage.");
                ExitCode::from(2)
            };
        }
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
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
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
