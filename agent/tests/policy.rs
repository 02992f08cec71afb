//! The command policy: allowlist parsing (with line-numbered errors), loading
//! rules for default and explicit paths, and every refusal reason of
//! `Policy::resolve`, down to the exact operator-facing message.

use std::path::{Path, PathBuf};

use monitor_agent::commands::{
    Allowlist, AllowlistError, IfMissing, MAX_ARGV_BYTES, MAX_EXTRA_ARGS, Policy, RESERVED_NAMES,
};

const SOURCE: &str = "test.allow";

/// (name, argv, extra_args) for each expected entry, in name order.
type Entries<'a> = &'a [(&'a str, &'a [&'a str], bool)];

/// Parses `text` and compares with the expected entries or error message.
fn check(text: &str, expected: Result<Entries<'_>, &str>) {
    let parsed = Allowlist::parse(text, Path::new(SOURCE));
    match (parsed, expected) {
        (Ok(list), Ok(entries)) => {
            let got: Vec<(String, Vec<String>, bool)> = list
                .entries()
                .map(|e| (e.name.clone(), e.argv.clone(), e.extra_args))
                .collect();
            let want: Vec<(String, Vec<String>, bool)> = entries
                .iter()
                .map(|(n, a, x)| (n.to_string(), strings(a), *x))
                .collect();
            assert_eq!(got, want, "input: {text:?}");
        }
        (Err(e), Err(message)) => assert_eq!(e.to_string(), message, "input: {text:?}"),
        (got, want) => panic!("input {text:?}: got {got:?}, want {want:?}"),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn parses_entries() {
    check("", Ok(&[]));
    check("# only a comment\n\n   \n  # indented comment\n", Ok(&[]));
    check(
        "uptime = /usr/bin/uptime",
        Ok(&[("uptime", &["/usr/bin/uptime"], false)]),
    );
    check("df=/bin/df -h", Ok(&[("df", &["/bin/df", "-h"], false)]));
    check(
        "journal = /usr/bin/journalctl -n 50 --no-pager ...",
        Ok(&[(
            "journal",
            &["/usr/bin/journalctl", "-n", "50", "--no-pager"],
            true,
        )]),
    );
    check("any = /bin/echo ...", Ok(&[("any", &["/bin/echo"], true)]));
    // Only the first '=' separates the name.
    check(
        "day = /bin/date +%Y=%m",
        Ok(&[("day", &["/bin/date", "+%Y=%m"], false)]),
    );
    check(
        r#"say = /bin/echo "hello world" "a \"q\" b" "back\\slash" "keep\n" "..." """#,
        Ok(&[(
            "say",
            &[
                "/bin/echo",
                "hello world",
                "a \"q\" b",
                "back\\slash",
                "keep\\n",
                "...",
                "",
            ],
            false,
        )]),
    );
    check(
        "tool = \"/opt/my tools/run\"\t--flag ...",
        Ok(&[("tool", &["/opt/my tools/run", "--flag"], true)]),
    );
    check(
        "b.1 = /bin/b\nA_z-9 = /bin/a\n",
        Ok(&[("A_z-9", &["/bin/a"], false), ("b.1", &["/bin/b"], false)]),
    );
}

#[test]
fn parse_errors_name_file_and_line() {
    check(
        "uptime /usr/bin/uptime",
        Err("test.allow:1: expected 'name = program [args...]', found no '='"),
    );
    check(
        "# comment\n\nbad name = /bin/x",
        Err("test.allow:3: invalid name 'bad name': names are made of A-Z a-z 0-9 . _ -"),
    );
    check(
        " = /bin/x",
        Err("test.allow:1: invalid name '': names are made of A-Z a-z 0-9 . _ -"),
    );
    check(
        "a/b = /bin/x",
        Err("test.allow:1: invalid name 'a/b': names are made of A-Z a-z 0-9 . _ -"),
    );
    check(
        "a = /bin/a\n# another\na = /bin/b",
        Err("test.allow:3: 'a' is already defined on line 1"),
    );
    check("a =", Err("test.allow:1: no program after '='"));
    check("a = ...", Err("test.allow:1: no program after '='"));
    check(
        "a = bin/a",
        Err("test.allow:1: program 'bin/a' is not an absolute path"),
    );
    check(
        "a = uptime",
        Err("test.allow:1: program 'uptime' is not an absolute path"),
    );
    check(
        "ok = /bin/ok\na = /bin/echo \"abc",
        Err("test.allow:2: unterminated double quote"),
    );
    check(
        "a = /bin/echo ab\"c\"",
        Err("test.allow:1: double quote inside an unquoted argument"),
    );
    check(
        "a = /bin/echo \"ab\"c",
        Err("test.allow:1: text right after a closing double quote"),
    );
    check(
        "a = /bin/echo ... -x",
        Err("test.allow:1: '...' is only allowed as the last token"),
    );
    check(
        "a = /bin/echo x\0y",
        Err("test.allow:1: line contains a NUL byte"),
    );
}

#[test]
fn reserved_names_cannot_be_defined() {
    for name in RESERVED_NAMES {
        let message = format!("test.allow:2: '{name}' is a built-in command and cannot be defined");
        check(
            &format!("ok = /bin/true\n{name} = /bin/true"),
            Err(&message),
        );
    }
}

#[test]
fn shipped_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("commands.allow.example");
    let list = match Allowlist::load(&path, IfMissing::Error) {
        Ok(list) => list,
        Err(e) => panic!("{e}"),
    };
    assert!(list.exists());
    assert!(list.get("uptime").is_some());
    assert_eq!(list.get("journal").map(|e| e.extra_args), Some(true));
    assert_eq!(list.get("df").map(|e| e.extra_args), Some(false));
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("monitor-policy-{}-{name}", std::process::id()))
}

#[test]
fn missing_file_is_empty_only_when_not_explicit() {
    let missing = temp_path("missing.allow");
    let list = match Allowlist::load(&missing, IfMissing::Empty) {
        Ok(list) => list,
        Err(e) => panic!("{e}"),
    };
    assert!(!list.exists());
    assert!(list.is_empty());
    let refusal = Policy::new(list, false).resolve(&strings(&["uptime"]));
    assert_eq!(
        refusal.map_err(|r| r.to_string()),
        Err(format!(
            "'uptime' is not on the allowlist {} (the file does not exist, so nothing is allowed)",
            missing.display()
        ))
    );

    match Allowlist::load(&missing, IfMissing::Error) {
        Err(AllowlistError::Read { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error, got {other:?}"),
    }
    match Allowlist::load_configured(Some(&missing)) {
        Err(e) => assert_eq!(
            e.to_string(),
            format!("cannot read allowlist {}", missing.display())
        ),
        Ok(list) => panic!("explicit missing file accepted: {list:?}"),
    }
}

#[test]
fn load_reports_parse_errors_with_path() {
    let path = temp_path("broken.allow");
    if let Err(e) = std::fs::write(&path, "ok = /bin/true\nbroken\n") {
        panic!("writing {}: {e}", path.display());
    }
    let result = Allowlist::load(&path, IfMissing::Error);
    let _ = std::fs::remove_file(&path);
    match result {
        Err(e @ AllowlistError::Parse(_)) => assert_eq!(
            e.to_string(),
            format!(
                "{}:2: expected 'name = program [args...]', found no '='",
                path.display()
            )
        ),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

const ALLOWLIST: &str = "\
uptime  = /usr/bin/uptime
df      = /bin/df -h
journal = /usr/bin/journalctl -n 50 --no-pager ...
";

fn policy(allow_any: bool) -> Policy {
    match Allowlist::parse(ALLOWLIST, Path::new("/etc/monitor/commands.allow")) {
        Ok(list) => Policy::new(list, allow_any),
        Err(e) => panic!("{e}"),
    }
}

/// Resolves `argv` and compares with the final argv or the refusal message.
fn check_resolve(policy: &Policy, argv: &[&str], expected: Result<&[&str], &str>) {
    let got = policy.resolve(&strings(argv)).map_err(|r| r.to_string());
    let want = expected.map(strings).map_err(str::to_owned);
    assert_eq!(
        got,
        want,
        "argv {argv:?}, allow_any {}",
        policy.allows_any()
    );
}

#[test]
fn allowlist_names_resolve_with_extra_args_rules() {
    let p = policy(false);
    check_resolve(&p, &["uptime"], Ok(&["/usr/bin/uptime"]));
    check_resolve(&p, &["df"], Ok(&["/bin/df", "-h"]));
    check_resolve(&p, &["df", "/home"], Err("'df' takes no extra arguments"));
    check_resolve(
        &p,
        &["uptime", ""],
        Err("'uptime' takes no extra arguments"),
    );
    check_resolve(
        &p,
        &["journal"],
        Ok(&["/usr/bin/journalctl", "-n", "50", "--no-pager"]),
    );
    check_resolve(
        &p,
        &["journal", "-u", "ssh", "a b; rm -rf /"],
        Ok(&[
            "/usr/bin/journalctl",
            "-n",
            "50",
            "--no-pager",
            "-u",
            "ssh",
            "a b; rm -rf /",
        ]),
    );
}

#[test]
fn refusal_reasons() {
    let p = policy(false);
    check_resolve(&p, &[], Err("empty command"));
    check_resolve(&p, &[""], Err("empty command"));
    check_resolve(
        &p,
        &["rm", "-rf", "/"],
        Err("'rm' is not on the allowlist /etc/monitor/commands.allow"),
    );
    // The allowlist is by name: a path that an entry runs is still refused.
    check_resolve(
        &p,
        &["/usr/bin/uptime"],
        Err("'/usr/bin/uptime' is not on the allowlist /etc/monitor/commands.allow"),
    );
    check_resolve(
        &p,
        &["rm\n2024 fake log line"],
        Err("'rm\\n2024 fake log line' is not on the allowlist /etc/monitor/commands.allow"),
    );
    for name in RESERVED_NAMES {
        let message = format!("'{name}' is a built-in command, not a program");
        check_resolve(&p, &[name], Err(&message));
    }
    check_resolve(
        &p,
        &["journal", "a\0b"],
        Err("argument 1 contains a NUL byte"),
    );
    check_resolve(&p, &["up\0time"], Err("argument 0 contains a NUL byte"));
}

#[test]
fn operator_argument_limits() {
    let p = policy(false);
    let at_limit: Vec<&str> = std::iter::once("journal")
        .chain(std::iter::repeat_n("x", MAX_EXTRA_ARGS))
        .collect();
    assert!(p.resolve(&strings(&at_limit)).is_ok());
    let over: Vec<&str> = std::iter::once("journal")
        .chain(std::iter::repeat_n("x", MAX_EXTRA_ARGS + 1))
        .collect();
    check_resolve(&p, &over, Err("too many arguments: 64 (limit 63)"));

    let fits = "x".repeat(MAX_ARGV_BYTES - "journal".len());
    assert!(p.resolve(&strings(&["journal", &fits])).is_ok());
    let long = "x".repeat(MAX_ARGV_BYTES - "journal".len() + 1);
    check_resolve(
        &p,
        &["journal", &long],
        Err("arguments too long: 8193 bytes (limit 8192)"),
    );
}

#[test]
fn allow_any_runs_programs_but_not_relative_paths() {
    let p = policy(true);
    // Allowlist entries still win over a program of the same name.
    check_resolve(&p, &["uptime"], Ok(&["/usr/bin/uptime"]));
    check_resolve(&p, &["df", "/"], Err("'df' takes no extra arguments"));
    check_resolve(&p, &["/bin/ls", "-l", "/"], Ok(&["/bin/ls", "-l", "/"]));
    check_resolve(&p, &["ls", "-l"], Ok(&["ls", "-l"]));
    check_resolve(
        &p,
        &["bin/ls"],
        Err(
            "program 'bin/ls' is a relative path: give an absolute path or a bare name to look up in PATH",
        ),
    );
    check_resolve(
        &p,
        &["./ls"],
        Err(
            "program './ls' is a relative path: give an absolute path or a bare name to look up in PATH",
        ),
    );
    check_resolve(
        &p,
        &["ping"],
        Err("'ping' is a built-in command, not a program"),
    );
    check_resolve(&p, &[], Err("empty command"));
    check_resolve(
        &p,
        &["/bin/echo", "a\0"],
        Err("argument 1 contains a NUL byte"),
    );
}
