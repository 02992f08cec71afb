//! What the three binaries' `main`s share: reading flags with argh (help
//! to stdout and exit 0; a usage error to stderr and exit 2), printing an
//! error with its whole chain of causes, once, and noticing SIGTERM/SIGINT.

use std::process::ExitCode;

/// Parses this process's arguments as `T`. `Err` carries the exit code
/// after argh's output was printed: 0 for `--help`, 2 for a usage error.
pub fn args_or_exit<T: argh::FromArgs>(program: &str) -> Result<T, ExitCode> {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let strs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (cmd, rest) = strs.split_first().unwrap_or((&program, &[]));
    T::from_args(&[cmd], rest).map_err(|early| {
        if early.status.is_ok() {
            println!("{}", early.output);
            ExitCode::SUCCESS
        } else {
            eprintln!("{}", early.output.trim_end());
            eprintln!("Run {program} --help for usage.");
            ExitCode::from(2)
        }
    })
}

/// The start of every `main`: flags (argh), then `--version` (printed as
/// "PROGRAM VERSION", exit 0), then the validated configuration built from
/// the flags and the process environment. `Err` carries the exit code after
/// the message was printed: 0 for `--help` and `--version`, 2 for a usage
/// error or a bad value.
pub fn config_or_exit<A: argh::FromArgs, C>(
    program: &str,
    version: &str,
    wants_version: impl FnOnce(&A) -> bool,
    build: impl FnOnce(A, crate::config::Env<'_>) -> Result<C, crate::config::ConfigError>,
) -> Result<C, ExitCode> {
    let args: A = args_or_exit(program)?;
    if wants_version(&args) {
        println!("{program} {version}");
        return Err(ExitCode::SUCCESS);
    }
    build(args, &env_var).map_err(|e| {
        eprintln!("{program}: {e}");
        ExitCode::from(2)
    })
}

/// Logs to stderr (the journal under systemd) at `level`; the HTTP/2
/// libraries' own chatter only from warnings up. A failure (a logger set
/// already) is reported on stderr and otherwise ignored.
pub fn init_logging(program: &str, level: log::LevelFilter) {
    if let Err(e) = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_module_level("h2", log::LevelFilter::Warn)
        .with_module_level("hyper", log::LevelFilter::Warn)
        .with_module_level("rustls", log::LevelFilter::Warn)
        // Its debug lines print every statement's parameters: the CA's
        // key the server keeps in a shared store, agents' strings unescaped.
        .with_module_level("tokio_postgres", log::LevelFilter::Warn)
        .with_module_level("deadpool", log::LevelFilter::Warn)
        .init()
    {
        eprintln!("{program}: cannot set up logging: {e}");
    }
}

/// The process environment as the configs read it (a value that is not
/// UTF-8 is passed on lossily, so validation names it rather than it
/// silently counting as unset).
pub fn env_var(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// "outer: inner: innermost", each distinct cause once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
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

/// Installs SIGTERM and SIGINT handlers now (so a failure is reported at
/// start, and the daemon does not run unstoppable) and returns a future
/// that resolves on the first of either. Call it inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn chain_lists_each_cause_once() {
        let e = E(
            "cannot open /x: no such file",
            Some(Box::new(E(
                "no such file",
                Some(Box::new(E("errno 2", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "cannot open /x: no such file: errno 2");
    }
}
