//! What the three binaries' `main`s share: reading flags with argh (help
//! to stdout and exit 0; a usage error to stderr and exit 2) and printing
//! an error with its whole chain of causes, once.

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
