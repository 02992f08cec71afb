//! The command policy: the allowlist format (comments, quotes, line ends,
//! placeholders), every parse error with its line and column, the rules of
//! `Policy::resolve` down to each operator-facing message, and a loop over
//! random input that must never panic nor let an argument become an option.
//!
//! The tests named `finding_*` reproduce the holes a security review found
//! in the old format; each failed on it.

use std::path::Path;

use super::MAX_REPORTED_ERRORS;
use crate::commands::{
    Allowlist, ArgSpec, Count, Entry, MAX_ARGV_BYTES, MAX_EXTRA_ARGS, ParseErrors, Policy,
    RESERVED_NAMES,
};

const SOURCE: &str = "test.allow";

fn parse(text: &str) -> Result<Allowlist, ParseErrors> {
    Allowlist::parse(text, Path::new(SOURCE))
}

/// Parses `text` and compares with the expected entries, each written
/// `name = template` in name order, or with every error message.
fn check(text: &str, expected: Result<&[&str], &[&str]>) {
    let got = parse(text)
        .map(|list| {
            list.entries()
                .map(|e| format!("{} = {}", e.name, e.template()))
                .collect::<Vec<_>>()
        })
        .map_err(|e| e.messages().collect::<Vec<_>>());
    let want = expected.map(strings).map_err(strings);
    assert_eq!(got, want, "input: {text:?}");
}

/// Parses a one-line file that must fail with exactly `message`.
fn check_error(text: &str, message: &str) {
    check(text, Err(&[message]));
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn parses_entries() {
    check("", Ok(&[]));
    check(
        "# only a comment\n\n   \n  # indented comment\n\t\n# a\ttab\n",
        Ok(&[]),
    );
    check(
        "uptime = /usr/bin/uptime",
        Ok(&["uptime = /usr/bin/uptime"]),
    );
    check("df=/bin/df -h", Ok(&["df = /bin/df -h"]));
    check("  df\t=\t/bin/df   -h  ", Ok(&["df = /bin/df -h"]));
    // Only the first '=' separates the name.
    check("day = /bin/date +%Y=%m", Ok(&["day = /bin/date +%Y=%m"]));
    check(
        "tool = \"/opt/my tools/run\"\t--flag",
        Ok(&["tool = \"/opt/my tools/run\" --flag"]),
    );
    check(
        "b.1 = /bin/b\nA_z-9 = /bin/a\n",
        Ok(&["A_z-9 = /bin/a", "b.1 = /bin/b"]),
    );
    check("sleep = /bin/sleep ...", Ok(&["sleep = /bin/sleep ..."]));
    check(
        "j = /bin/journalctl --no-pager -n <int:1-500> -u <word:*.service>",
        Ok(&["j = /bin/journalctl --no-pager -n <int:1-500> -u <word:*.service>"]),
    );
    let every = "p = /bin/p <any> <word> <word:-*> <path> <path:/var/log/*> <int:0-0> \
                 <int:5-5> <one-of:a|-b|c.d> <any>? <word:?x>? <path:/>*";
    check(every, Ok(&[every]));
    check(
        "a = /bin/a <word>? <word>? <path>*",
        Ok(&["a = /bin/a <word>? <word>? <path>*"]),
    );
    check("a = /bin/a <word>? ...", Ok(&["a = /bin/a <word>? ..."]));
    check("a = /bin/a <word> ...", Ok(&["a = /bin/a <word> ..."]));
    // Non-ASCII text and control characters other than NUL and CR are
    // fine inside quotes; any printable text is fine in a comment.
    check(
        "# température du processeur\nt = /bin/echo \"température\" # °C",
        Ok(&["t = /bin/echo \"température\""]),
    );
    check(
        "t = /bin/printf \"a\tb\u{1b}\u{85}\"",
        Ok(&["t = /bin/printf \"a\\tb\\u{1b}\\u{85}\""]),
    );
}

#[test]
fn quotes_hold_exactly_their_text() {
    let text = r##"say = /bin/echo "hello world" "a \"q\" b" "back\\slash" "keep\n" "..." "" "#" "<x>" "a>b""##;
    check(
        text,
        Ok(&[
            r##"say = /bin/echo "hello world" "a \"q\" b" "back\\slash" "keep\\n" "..." "" "#" "<x>" "a>b""##,
        ]),
    );
    let policy = policy_of(text, false);
    check_resolve(
        &policy,
        &["say"],
        Ok(&[
            "/bin/echo",
            "hello world",
            "a \"q\" b",
            "back\\slash",
            "keep\\n",
            "...",
            "",
            "#",
            "<x>",
            "a>b",
        ]),
    );
}

#[test]
fn a_quoted_argument_is_shown_with_only_its_control_characters_escaped() {
    // --check-commands and refusals show an argument as the operator wrote
    // it: an apostrophe or a printable non-ASCII letter inside quotes as
    // itself (Rust's escape_debug would put a backslash before the
    // apostrophe), only a control character as an escape.
    check(
        "say = /bin/echo \"don't stop\" \"caf\u{e9} \u{3bb}\" \"bell\u{7}\"",
        Ok(&["say = /bin/echo \"don't stop\" \"caf\u{e9} \u{3bb}\" \"bell\\u{7}\""]),
    );
}

#[test]
fn quoted_ellipsis_in_last_position_is_a_literal() {
    let policy = policy_of(r#"dots = /bin/echo "...""#, false);
    check_resolve(&policy, &["dots"], Ok(&["/bin/echo", "..."]));
    check_resolve(
        &policy,
        &["dots", "-x"],
        Err("'dots' takes no extra arguments"),
    );
    let entry = entry_of(&policy, "dots");
    assert_eq!(entry.arity(), (0, Some(0)));
    assert_eq!(entry.describe(), ["takes no operator arguments"]);
}

#[test]
fn comments_start_only_at_a_token() {
    check(
        "a = /bin/echo a#b \"#c\" #d ...",
        Ok(&["a = /bin/echo a#b \"#c\""]),
    );
    check("a=/bin/x#y", Ok(&["a = /bin/x#y"]));
    check("a = /bin/x\t# tab before", Ok(&["a = /bin/x"]));
    check("a = /bin/x \"y\" # after a quote", Ok(&["a = /bin/x y"]));
    check_error("a =# nothing", "test.allow:1:4: no program after '='");
    check_error(
        "a = /bin/x \"y\"# no space",
        "test.allow:1:15: text right after a closing double quote",
    );
    check_error(
        "a# = /bin/x",
        "test.allow:1:2: '#' cannot follow the name 'a': names are made of A-Z a-z 0-9 . _ -, then '='",
    );
}

#[test]
fn finding_end_of_line_comment_is_not_an_ellipsis() {
    // The old format had no end-of-line comments: the trailing `...` of the
    // comment let the operator append any file.
    let policy = policy_of("os = /bin/cat /etc/os-release # see also ...", false);
    check_resolve(&policy, &["os"], Ok(&["/bin/cat", "/etc/os-release"]));
    check_resolve(
        &policy,
        &["os", "/etc/shadow"],
        Err("'os' takes no extra arguments"),
    );
}

#[test]
fn finding_cr_only_file_is_refused() {
    // Read as one line, the first entry swallowed the second's `...`.
    check_error(
        "uname = /bin/uname\rdf = /bin/df -h ...\r",
        "test.allow:1:19: carriage return not followed by a line feed (lines end with LF or CRLF)",
    );
    // CRLF is a line end like LF.
    check(
        "uname = /bin/uname\r\ndf = /bin/df -h -- <path>*\r\n",
        Ok(&["df = /bin/df -h -- <path>*", "uname = /bin/uname"]),
    );
    check_error(
        "a = /bin/a\r\r\n",
        "test.allow:1:11: carriage return not followed by a line feed (lines end with LF or CRLF)",
    );
    // A CR inside quotes is no better.
    check_error(
        "a = /bin/echo \"x\ry\"",
        "test.allow:1:17: carriage return not followed by a line feed (lines end with LF or CRLF)",
    );
}

#[test]
fn finding_operator_arguments_cannot_become_options() {
    // The old entry `find /var/log -maxdepth 1 -name ...` ran
    // `-exec /bin/sh -c id`. Constrained, every argument has its place.
    let policy = policy_of(
        "logs = /usr/bin/find <path:/var/log/*> -maxdepth 1 -name <word:*.log>",
        false,
    );
    check_resolve(
        &policy,
        &["logs", "/var/log/nginx", "access.log"],
        Ok(&[
            "/usr/bin/find",
            "/var/log/nginx",
            "-maxdepth",
            "1",
            "-name",
            "access.log",
        ]),
    );
    check_resolve(
        &policy,
        &["logs", "/var/log/x", "-exec", "/bin/sh", "-c", "id"],
        Err("'logs' takes exactly 2 arguments, got 5"),
    );
    check_resolve(
        &policy,
        &["logs", "/var/log/x", "-exec"],
        Err(
            "argument 2 of 'logs' is '-exec': it begins with '-', and the allowlist entry allows no option there",
        ),
    );
    check_resolve(
        &policy,
        &["logs", "-exec", "x.log"],
        Err(
            "argument 1 of 'logs' is '-exec': it begins with '-', and the allowlist entry allows no option there",
        ),
    );
    // Even a glob that matches everything does not match an option.
    let star = policy_of("w = /bin/echo <word:*>", false);
    check_resolve(
        &star,
        &["w", "-x"],
        Err(
            "argument 1 of 'w' is '-x': it begins with '-', and the allowlist entry allows no option there",
        ),
    );
    check_resolve(&star, &["w", "x-"], Ok(&["/bin/echo", "x-"]));
}

#[test]
fn finding_journal_example_is_bounded() {
    // The old shipped `journal = journalctl -n 50 --no-pager ...` accepted
    // `-n all --file=... -o export`. The constrained form, as the shipped
    // file suggests it in a comment:
    let line = shipped_journal_example();
    let policy = policy_of(&line, false);
    check_resolve(
        &policy,
        &["journal", "50", "ssh.service"],
        Ok(&[
            "/bin/journalctl",
            "--no-pager",
            "-n",
            "50",
            "-u",
            "ssh.service",
        ]),
    );
    check_resolve(
        &policy,
        &["journal", "-n", "all", "--file=/x", "-o", "export"],
        Err("'journal' takes exactly 2 arguments, got 5"),
    );
    check_resolve(
        &policy,
        &["journal", "all", "ssh.service"],
        Err(
            "argument 1 of 'journal' is 'all': expected a whole number from 1 to 500 (digits only, no leading zero)",
        ),
    );
    check_resolve(
        &policy,
        &["journal", "50", "--file=/var/log/x"],
        Err(
            "argument 2 of 'journal' is '--file=/var/log/x': it begins with '-', and the allowlist entry allows no option there",
        ),
    );
    check_resolve(
        &policy,
        &["journal", "50", "ssh.socket"],
        Err("argument 2 of 'journal' is 'ssh.socket': it does not match *.service"),
    );
}

/// The commented-out journal entry of systemd/commands.allow, uncommented.
fn shipped_journal_example() -> String {
    let text = std::fs::read_to_string(shipped_path()).unwrap_or_default();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("# journal "))
        .unwrap_or_else(|| panic!("no '# journal' example in systemd/commands.allow"));
    format!("journal {line}")
}

fn shipped_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/commands.allow")
}

#[test]
fn shipped_example_is_safe() {
    let text = match std::fs::read_to_string(shipped_path()) {
        Ok(text) => text,
        Err(e) => panic!("{}: {e}", shipped_path().display()),
    };
    let list = match parse(&text) {
        Ok(list) => list,
        Err(e) => panic!("{e}"),
    };
    let names: Vec<&str> = list.entries().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["cpu-temp", "df", "free", "os", "uname", "uptime"]);
    for entry in list.entries() {
        for p in entry.placeholders() {
            // Nothing unchecked, and options only as a list of words.
            assert_ne!(p.spec, ArgSpec::Anything, "{}", entry.name);
            if p.spec.allows_options() {
                assert!(matches!(p.spec, ArgSpec::OneOf(_)), "{}", entry.name);
            }
        }
    }
    let policy = Policy::new(list, false);
    // What scripts/nspawn-check.sh and scripts/arm-check.sh run.
    check_resolve(&policy, &["uname", "-m"], Ok(&["/bin/uname", "-m"]));
    check_resolve(
        &policy,
        &["uname", "--help"],
        Err("argument 1 of 'uname' is '--help': expected one of -a -s -n -r -v -m -o"),
    );
    check_resolve(&policy, &["df"], Ok(&["/bin/df", "-h", "--"]));
    check_resolve(&policy, &["df", "/"], Ok(&["/bin/df", "-h", "--", "/"]));
    check_resolve(
        &policy,
        &["df", "--output=source"],
        Err(
            "argument 1 of 'df' is '--output=source': it begins with '-', and the allowlist entry allows no option there",
        ),
    );
    check_resolve(
        &policy,
        &["os", "/etc/shadow"],
        Err("'os' takes no extra arguments"),
    );
}

#[test]
fn parse_errors_name_line_and_column() {
    check_error(
        "uptime /usr/bin/uptime",
        "test.allow:1:8: expected '=' after the name 'uptime'",
    );
    check_error(
        "# comment\n\nbad name = /bin/x",
        "test.allow:3:5: expected '=' after the name 'bad'",
    );
    check_error(
        " = /bin/x",
        "test.allow:1:2: expected a name (A-Z a-z 0-9 . _ -), found '='",
    );
    check_error(
        "/bin/x",
        "test.allow:1:1: expected a name (A-Z a-z 0-9 . _ -), found '/'",
    );
    check_error(
        "a/b = /bin/x",
        "test.allow:1:2: '/' cannot follow the name 'a': names are made of A-Z a-z 0-9 . _ -, then '='",
    );
    check_error("a", "test.allow:1:2: expected '=' after the name 'a'");
    check_error(
        "a = /bin/a\n# another\n  a = /bin/b",
        "test.allow:3:3: 'a' is already defined on line 1",
    );
    check_error("a =", "test.allow:1:4: no program after '='");
    check_error(
        "a = ...",
        "test.allow:1:5: expected the program (an absolute path) first, found '...'",
    );
    check_error(
        "a = <path>",
        "test.allow:1:5: expected the program (an absolute path) first, found '<path>'",
    );
    check_error(
        "a = bin/a",
        "test.allow:1:5: program 'bin/a' is not an absolute path",
    );
    check_error(
        "a = uptime",
        "test.allow:1:5: program 'uptime' is not an absolute path",
    );
    check_error(
        "a = \"\"",
        "test.allow:1:5: program '' is not an absolute path",
    );
    // A quoted program may be anything absolute, even '<x>'.
    check("a = \"/<x>\"", Ok(&["a = \"/<x>\""]));
    check_error(
        "ok = /bin/ok\na = /bin/echo \"abc",
        "test.allow:2:15: unterminated double quote",
    );
    check_error(
        "a = /bin/echo \"ab\\\"",
        "test.allow:1:15: unterminated double quote",
    );
    check_error(
        "a = /bin/echo ab\"c\"",
        "test.allow:1:17: double quote inside an unquoted argument",
    );
    check_error(
        "a = /bin/echo \"ab\"c",
        "test.allow:1:19: text right after a closing double quote",
    );
    check_error(
        "a = /bin/echo a<b",
        "test.allow:1:16: '<' inside an argument: a placeholder is a whole argument, and a literal '<' must be quoted",
    );
    check_error(
        "a = /bin/sh -c echo >/tmp/x",
        "test.allow:1:21: '>' inside an argument: a placeholder is a whole argument, and a literal '>' must be quoted",
    );
}

#[test]
fn characters_outside_quotes() {
    check_error("a = /bin/echo x\0y", "test.allow:1:16: NUL byte");
    // NUL is refused even inside quotes and comments.
    check_error("a = /bin/echo \"x\0\"", "test.allow:1:17: NUL byte");
    check_error("# x\0", "test.allow:1:4: NUL byte");
    check_error(
        "a = /bin/echo x\u{1b}y",
        "test.allow:1:16: control character U+001B outside double quotes",
    );
    check_error(
        "# bell \u{7}",
        "test.allow:1:8: control character U+0007 outside double quotes",
    );
    check_error(
        "a = /bin/x \u{7f}",
        "test.allow:1:12: control character U+007F outside double quotes",
    );
    check_error(
        "a = /bin/x \u{85}",
        "test.allow:1:12: control character U+0085 outside double quotes",
    );
    check_error(
        "a\u{b} = /bin/x",
        "test.allow:1:2: control character U+000B outside double quotes",
    );
    check_error(
        "a = /bin/echo caf\u{e9}",
        "test.allow:1:18: non-ASCII character U+00E9 outside double quotes (quote the argument)",
    );
    // A no-break space does not separate arguments: it is refused.
    check_error(
        "a = /bin/df\u{a0}-h",
        "test.allow:1:12: non-ASCII character U+00A0 outside double quotes (quote the argument)",
    );
    // Columns count characters, not bytes.
    check_error(
        "a = /bin/echo \"é\" \u{1}",
        "test.allow:1:19: control character U+0001 outside double quotes",
    );
}

#[test]
fn placeholder_errors() {
    let cases = [
        ("<word", "1:12: placeholder has no closing '>'"),
        (
            "<word>x",
            "1:18: only '?' or '*' may follow a placeholder's closing '>'",
        ),
        (
            "<word>?*",
            "1:18: only '?' or '*' may follow a placeholder's closing '>'",
        ),
        (
            "<file>",
            "1:13: unknown placeholder type 'file' (any, word, path, int, one-of)",
        ),
        (
            "<>",
            "1:13: unknown placeholder type '' (any, word, path, int, one-of)",
        ),
        ("<int>", "1:13: 'int' needs a range: <int:MIN-MAX>"),
        ("<one-of>", "1:13: 'one-of' needs its words: <one-of:A|B>"),
        ("<any:x>", "1:16: 'any' takes no ':' parameter"),
        ("<word:>", "1:18: empty pattern after ':'"),
        (
            "<word:a/b>",
            "1:19: '/' cannot appear in a word pattern (allowed: A-Z a-z 0-9 . _ - + : @ , = * ?)",
        ),
        ("<path:var/*>", "1:18: a path pattern must begin with '/'"),
        (
            "<path:/var/../x>",
            "1:18: a path pattern may not have '.', '..' or empty components",
        ),
        (
            "<path:/var/>",
            "1:18: a path pattern may not have '.', '..' or empty components",
        ),
        (
            "<path://x>",
            "1:18: a path pattern may not have '.', '..' or empty components",
        ),
        (
            "<path:/a|b>",
            "1:20: '|' cannot appear in a path pattern (allowed: A-Z a-z 0-9 . _ - + : @ , = / * ?)",
        ),
        (
            "<int:1-x>",
            "1:17: expected MIN-MAX in plain decimal (no sign, no leading zero), e.g. <int:1-500>",
        ),
        (
            "<int:01-5>",
            "1:17: expected MIN-MAX in plain decimal (no sign, no leading zero), e.g. <int:1-500>",
        ),
        (
            "<int:-1-5>",
            "1:17: expected MIN-MAX in plain decimal (no sign, no leading zero), e.g. <int:1-500>",
        ),
        (
            "<int:5>",
            "1:17: expected MIN-MAX in plain decimal (no sign, no leading zero), e.g. <int:1-500>",
        ),
        ("<int:6-5>", "1:17: range 6-5 is empty: MIN is above MAX"),
        ("<one-of:|a>", "1:20: empty word in one-of"),
        ("<one-of:a||b>", "1:22: empty word in one-of"),
        ("<one-of:a|>", "1:22: empty word in one-of"),
        (
            "<one-of:a|b/c>",
            "1:23: '/' cannot appear in a one-of word (allowed: A-Z a-z 0-9 . _ - + : @ , =)",
        ),
    ];
    for (placeholder, message) in cases {
        check_error(
            &format!("a = /bin/a {placeholder}"),
            &format!("test.allow:{message}"),
        );
    }
}

#[test]
fn placeholder_order() {
    let after_optional =
        "only '?' placeholders, then one '*' or '...', may follow a '?' placeholder";
    let after_repeated = "nothing may follow a '*' placeholder or '...'";
    check_error(
        "a = /bin/a <word>? -x",
        &format!("test.allow:1:20: {after_optional}"),
    );
    check_error(
        "a = /bin/a <word>? <word>",
        &format!("test.allow:1:20: {after_optional}"),
    );
    check_error(
        "a = /bin/a <word>? \"x\"",
        &format!("test.allow:1:20: {after_optional}"),
    );
    check_error(
        "a = /bin/a <word>* <word>?",
        &format!("test.allow:1:20: {after_repeated}"),
    );
    check_error(
        "a = /bin/a <word>* x",
        &format!("test.allow:1:20: {after_repeated}"),
    );
    check_error(
        "a = /bin/a ... ...",
        &format!("test.allow:1:16: {after_repeated}"),
    );
    check_error(
        "a = /bin/a ... <word>*",
        &format!("test.allow:1:16: {after_repeated}"),
    );
    // Plain placeholders and fixed arguments mix freely.
    check(
        "a = /bin/a <word> -x <int:1-2> y <word>? <word>? <any>*",
        Ok(&["a = /bin/a <word> -x <int:1-2> y <word>? <word>? <any>*"]),
    );
}

#[test]
fn reserved_names_cannot_be_defined() {
    for name in RESERVED_NAMES {
        let message =
            format!("test.allow:2:1: '{name}' is a built-in command and cannot be defined");
        check(
            &format!("ok = /bin/true\n{name} = /bin/true"),
            Err(&[&message]),
        );
    }
}

#[test]
fn every_bad_line_is_reported() {
    let text = "bad line\nok = /bin/ok\nx = y\nok = /bin/ok2\n\ty = /bin/y <int>\n";
    let errors = [
        "test.allow:1:5: expected '=' after the name 'bad'",
        "test.allow:3:5: program 'y' is not an absolute path",
        "test.allow:4:1: 'ok' is already defined on line 2",
        "test.allow:5:14: 'int' needs a range: <int:MIN-MAX>",
    ];
    check(text, Err(&errors));
    match parse(text) {
        Err(e) => assert_eq!(e.to_string(), errors.join("; ")),
        Ok(list) => panic!("parsed: {list:?}"),
    }

    // At most MAX_REPORTED_ERRORS, then a note.
    let many = "x\n".repeat(MAX_REPORTED_ERRORS + 1);
    let messages: Vec<String> = match parse(&many) {
        Err(e) => e.messages().collect(),
        Ok(list) => panic!("parsed: {list:?}"),
    };
    assert_eq!(messages.len(), MAX_REPORTED_ERRORS + 1);
    assert_eq!(
        messages[MAX_REPORTED_ERRORS - 1],
        format!("test.allow:{MAX_REPORTED_ERRORS}:2: expected '=' after the name 'x'")
    );
    assert_eq!(
        messages[MAX_REPORTED_ERRORS],
        format!("test.allow: stopped after {MAX_REPORTED_ERRORS} errors")
    );
    // Exactly MAX_REPORTED_ERRORS bad lines: all shown, no note.
    let exact = "x\n".repeat(MAX_REPORTED_ERRORS);
    match parse(&exact) {
        Err(e) => {
            assert_eq!(e.errors.len(), MAX_REPORTED_ERRORS);
            assert!(!e.truncated);
        }
        Ok(list) => panic!("parsed: {list:?}"),
    }
}

const ALLOWLIST: &str = "\
uptime  = /usr/bin/uptime
df      = /bin/df -h -- <path>*
journal = /usr/bin/journalctl --no-pager -n <int:1-500> -u <word:*.service>
uname   = /bin/uname <one-of:-a|-m>?
one     = /bin/echo <any> <any>?
two     = /bin/echo <word> <word>
least1  = /bin/echo <word> <word>*
least2  = /bin/echo <word> <word> <word>*
flags   = /bin/echo <word:-?>*
files   = /bin/ls -- <path:/var/log/*>?
trusted = /bin/echo ...
";

fn policy_of(text: &str, allow_any: bool) -> Policy {
    match Allowlist::parse(text, Path::new("/etc/monitor/commands.allow")) {
        Ok(list) => Policy::new(list, allow_any),
        Err(e) => panic!("{e}"),
    }
}

fn policy(allow_any: bool) -> Policy {
    policy_of(ALLOWLIST, allow_any)
}

fn entry_of<'a>(policy: &'a Policy, name: &str) -> &'a Entry {
    match policy.allowlist().get(name) {
        Some(entry) => entry,
        None => panic!("no entry {name}"),
    }
}

/// Resolves `argv` and compares with the final argv or the refusal message.
fn check_resolve(policy: &Policy, argv: &[&str], expected: Result<&[&str], &str>) {
    let got = policy.resolve(&strings(argv)).map_err(|r| r.to_string());
    let want = expected.map(strings).map_err(str::to_owned);
    assert_eq!(got, want, "argv {argv:?}");
}

#[test]
fn entries_without_placeholders_take_nothing() {
    let p = policy(false);
    check_resolve(&p, &["uptime"], Ok(&["/usr/bin/uptime"]));
    check_resolve(
        &p,
        &["uptime", ""],
        Err("'uptime' takes no extra arguments"),
    );
}

#[test]
fn argument_counts() {
    let p = policy(false);
    check_resolve(&p, &["one"], Err("'one' takes 1 to 2 arguments, got 0"));
    check_resolve(&p, &["one", "a"], Ok(&["/bin/echo", "a"]));
    check_resolve(&p, &["one", "a", "b"], Ok(&["/bin/echo", "a", "b"]));
    check_resolve(
        &p,
        &["one", "a", "b", "c"],
        Err("'one' takes 1 to 2 arguments, got 3"),
    );
    check_resolve(
        &p,
        &["two", "a"],
        Err("'two' takes exactly 2 arguments, got 1"),
    );
    check_resolve(
        &p,
        &["two", "a", "b", "c"],
        Err("'two' takes exactly 2 arguments, got 3"),
    );
    check_resolve(&p, &["two", "a", "b"], Ok(&["/bin/echo", "a", "b"]));
    let single = policy_of("single = /bin/echo <word>", false);
    check_resolve(
        &single,
        &["single"],
        Err("'single' takes exactly 1 argument, got 0"),
    );
    check_resolve(
        &p,
        &["journal"],
        Err("'journal' takes exactly 2 arguments, got 0"),
    );
    check_resolve(
        &p,
        &["least1"],
        Err("'least1' takes at least 1 argument, got 0"),
    );
    check_resolve(&p, &["least1", "a"], Ok(&["/bin/echo", "a"]));
    check_resolve(
        &p,
        &["least2", "a"],
        Err("'least2' takes at least 2 arguments, got 1"),
    );
    check_resolve(
        &p,
        &["least2", "a", "b", "c", "d"],
        Ok(&["/bin/echo", "a", "b", "c", "d"]),
    );
    check_resolve(
        &p,
        &["uname", "-a", "-m"],
        Err("'uname' takes 0 to 1 arguments, got 2"),
    );
    check_resolve(&p, &["uname"], Ok(&["/bin/uname"]));
    check_resolve(&p, &["uname", "-m"], Ok(&["/bin/uname", "-m"]));
    check_resolve(&p, &["files"], Ok(&["/bin/ls", "--"]));
    check_resolve(
        &p,
        &["files", "/var/log/syslog"],
        Ok(&["/bin/ls", "--", "/var/log/syslog"]),
    );
}

#[test]
fn arity_and_descriptions() {
    let p = policy(false);
    /// (name, arity, description)
    type Case<'a> = (&'a str, (usize, Option<usize>), &'a [&'a str]);
    let cases: [Case; 5] = [
        ("uptime", (0, Some(0)), &["takes no operator arguments"]),
        (
            "journal",
            (2, Some(2)),
            &[
                "takes exactly 2 operator arguments",
                "argument 1: a whole number from 1 to 500",
                "argument 2: a word of A-Z a-z 0-9 . _ - + : @ , = matching *.service, not beginning with '-'",
            ],
        ),
        (
            "files",
            (0, Some(1)),
            &[
                "takes 0 to 1 operator arguments",
                "argument 1 (optional): an absolute path matching /var/log/*, without '.', '..' or empty components",
            ],
        ),
        (
            "least1",
            (1, None),
            &[
                "takes 1 or more operator arguments (at most 63)",
                "argument 1: a word of A-Z a-z 0-9 . _ - + : @ , =, not beginning with '-'",
                "arguments 2 and on (each): a word of A-Z a-z 0-9 . _ - + : @ , =, not beginning with '-'",
            ],
        ),
        (
            "trusted",
            (0, None),
            &[
                "takes 0 or more operator arguments (at most 63)",
                "arguments 1 and on (each): anything, options included (trusted: not checked)",
            ],
        ),
    ];
    for (name, arity, description) in cases {
        let entry = entry_of(&p, name);
        assert_eq!(entry.arity(), arity, "{name}");
        assert_eq!(entry.describe(), description, "{name}");
    }
    let one = policy_of("one = /bin/x <int:0-9>", false);
    assert_eq!(
        entry_of(&one, "one").describe(),
        [
            "takes exactly 1 operator argument",
            "argument 1: a whole number from 0 to 9"
        ]
    );
    let more = policy_of("m = /bin/x <any> <path> <one-of:a|-b> <word:-*>", false);
    assert_eq!(
        entry_of(&more, "m").describe(),
        [
            "takes exactly 4 operator arguments",
            "argument 1: any argument not beginning with '-'",
            "argument 2: an absolute path without '.', '..' or empty components",
            "argument 3: one of a -b",
            "argument 4: a word of A-Z a-z 0-9 . _ - + : @ , = matching -* (an option)",
        ]
    );
    let count = entry_of(&more, "m")
        .placeholders()
        .filter(|p| p.count == Count::One)
        .count();
    assert_eq!(count, 4);
}

/// Every refusal of one argument, through the entry `name` with one
/// placeholder `spec`: (argument, Ok or the message after "is 'ARG': ").
fn check_spec(spec: &str, cases: &[(&str, Option<&str>)]) {
    let policy = policy_of(&format!("t = /bin/t {spec}"), false);
    for &(arg, why) in cases {
        let expected =
            why.map(|why| format!("argument 1 of 't' is '{}': {why}", arg.escape_debug()));
        match expected {
            None => check_resolve(&policy, &["t", arg], Ok(&["/bin/t", arg])),
            Some(message) => check_resolve(&policy, &["t", arg], Err(&message)),
        }
    }
}

const OPTION: Option<&str> =
    Some("it begins with '-', and the allowlist entry allows no option there");

#[test]
fn int_placeholders_at_their_edges() {
    let range = Some("expected a whole number from 1 to 500 (digits only, no leading zero)");
    check_spec(
        "<int:1-500>",
        &[
            ("1", None),
            ("2", None),
            ("499", None),
            ("500", None),
            ("0", range),
            ("501", range),
            ("01", range),
            ("+5", range),
            (" 5", range),
            ("5 ", range),
            ("", range),
            ("all", range),
            ("1e2", range),
            ("18446744073709551616", range),
            ("-1", OPTION),
        ],
    );
    let zero = Some("expected a whole number from 0 to 0 (digits only, no leading zero)");
    check_spec("<int:0-0>", &[("0", None), ("1", zero), ("00", zero)]);
    check_spec(
        "<int:0-18446744073709551615>",
        &[
            ("18446744073709551615", None),
            (
                "18446744073709551616",
                Some(
                    "expected a whole number from 0 to 18446744073709551615 (digits only, no leading zero)",
                ),
            ),
        ],
    );
}

#[test]
fn word_placeholders() {
    let bad =
        |c: &str| format!("'{c}' is not allowed in a word (allowed: A-Z a-z 0-9 . _ - + : @ , =)");
    let slash = bad("/");
    let space = bad(" ");
    let newline = bad("\\n");
    let star = bad("*");
    check_spec(
        "<word>",
        &[
            ("ssh.service", None),
            ("getty@tty1.service", None),
            ("a-b_c.d+e:f@g,h=i", None),
            ("x-", None),
            ("", Some("expected a word, got nothing")),
            ("a/b", Some(&slash)),
            ("a b", Some(&space)),
            ("a\nb", Some(&newline)),
            ("*", Some(&star)),
            ("-x", OPTION),
            ("--file=/x", OPTION),
        ],
    );
    check_spec(
        "<word:*.service>",
        &[
            ("ssh.service", None),
            (".service", None),
            ("ssh.socket", Some("it does not match *.service")),
            ("ssh.service.d", Some("it does not match *.service")),
            ("-.service", OPTION),
        ],
    );
    check_spec(
        "<word:eth?>",
        &[
            ("eth0", None),
            ("eth", Some("it does not match eth?")),
            ("eth10", Some("it does not match eth?")),
        ],
    );
    // A glob written with a leading '-' allows exactly those options.
    check_spec(
        "<word:-?>",
        &[
            ("-a", None),
            ("--", None),
            ("--x", Some("it does not match -?")),
            ("a", Some("it does not match -?")),
        ],
    );
}

#[test]
fn path_placeholders() {
    let component = Some("a path may not have '.', '..' or empty components");
    let absolute = Some("expected an absolute path");
    let space = "' ' is not allowed in a path (allowed: A-Z a-z 0-9 . _ - + : @ , = /)";
    check_spec(
        "<path>",
        &[
            ("/", None),
            ("/home", None),
            ("/var/log/syslog.1", None),
            ("/.hidden", None),
            ("/a...b", None),
            ("", absolute),
            ("home", absolute),
            ("./x", absolute),
            ("~/x", absolute),
            ("-x", OPTION),
            ("//", component),
            ("/a//b", component),
            ("/a/", component),
            ("/a/.", component),
            ("/a/./b", component),
            ("/a/..", component),
            ("/var/log/../../etc/shadow", component),
            ("/a b", Some(space)),
        ],
    );
    let no_match = Some("it does not match /var/log/*");
    check_spec(
        "<path:/var/log/*>",
        &[
            ("/var/log/syslog", None),
            ("/var/log/nginx", None),
            ("/var/log", no_match),
            ("/var/log/nginx/access.log", no_match),
            ("/var/logs/x", no_match),
            ("/etc/shadow", no_match),
            ("/var/log/..", component),
        ],
    );
    check_spec(
        "<path:/>",
        &[("/", None), ("/a", Some("it does not match /"))],
    );
}

#[test]
fn one_of_and_any_placeholders() {
    let not_listed = Some("expected one of -a -m uname");
    check_spec(
        "<one-of:-a|-m|uname>",
        &[
            ("-a", None),
            ("-m", None),
            ("uname", None),
            ("-x", not_listed),
            ("-am", not_listed),
            ("", not_listed),
            ("-A", not_listed),
        ],
    );
    // Without an option among the words, an option is refused as such.
    check_spec(
        "<one-of:a|b>",
        &[
            ("a", None),
            ("-a", OPTION),
            ("c", Some("expected one of a b")),
        ],
    );
    check_spec(
        "<any>",
        &[
            ("", None),
            ("a b; rm -rf /", None),
            ("x-", None),
            ("\u{e9}\t", None),
            ("-", OPTION),
            ("-x", OPTION),
        ],
    );
}

#[test]
fn refusals_name_the_argument_position_and_escape_it() {
    let p = policy(false);
    check_resolve(
        &p,
        &["journal", "50", "a\nb"],
        Err(
            "argument 2 of 'journal' is 'a\\nb': '\\n' is not allowed in a word (allowed: A-Z a-z 0-9 . _ - + : @ , =)",
        ),
    );
    let long = format!("/{}", "x".repeat(200));
    let message = match p.resolve(&strings(&["journal", "50", &long])) {
        Err(r) => r.to_string(),
        Ok(argv) => panic!("accepted {argv:?}"),
    };
    assert_eq!(
        message,
        format!(
            "argument 2 of 'journal' is '/{}…(121 more bytes)': '/' is not allowed in a word (allowed: A-Z a-z 0-9 . _ - + : @ , =)",
            "x".repeat(79)
        )
    );
    check_resolve(
        &p,
        &["least2", "a", "b", "c", "-d"],
        Err(
            "argument 4 of 'least2' is '-d': it begins with '-', and the allowlist entry allows no option there",
        ),
    );
    check_resolve(
        &p,
        &["flags", "-a", "-b", "c"],
        Err("argument 3 of 'flags' is 'c': it does not match -?"),
    );
    check_resolve(&p, &["flags", "-a", "-b"], Ok(&["/bin/echo", "-a", "-b"]));
}

#[test]
fn trusted_ellipsis_passes_anything() {
    let p = policy(false);
    check_resolve(&p, &["trusted"], Ok(&["/bin/echo"]));
    check_resolve(
        &p,
        &["trusted", "-exec", "/bin/sh", "-c", "id", "", "a b"],
        Ok(&["/bin/echo", "-exec", "/bin/sh", "-c", "id", "", "a b"]),
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
        &["trusted", "a\0b"],
        Err("argument 1 contains a NUL byte"),
    );
    check_resolve(&p, &["up\0time"], Err("argument 0 contains a NUL byte"));
}

#[test]
fn operator_argument_limits() {
    for name in ["trusted", "least1"] {
        let p = policy(false);
        let at_limit: Vec<&str> = std::iter::once(name)
            .chain(std::iter::repeat_n("x", MAX_EXTRA_ARGS))
            .collect();
        match p.resolve(&strings(&at_limit)) {
            Ok(argv) => assert_eq!(argv.len(), 1 + MAX_EXTRA_ARGS),
            Err(r) => panic!("{name}: {r}"),
        }
        let over: Vec<&str> = std::iter::once(name)
            .chain(std::iter::repeat_n("x", MAX_EXTRA_ARGS + 1))
            .collect();
        check_resolve(&p, &over, Err("too many arguments: 64 (limit 63)"));

        let fits = "x".repeat(MAX_ARGV_BYTES - name.len());
        match p.resolve(&strings(&[name, &fits])) {
            Ok(argv) => assert_eq!(argv, ["/bin/echo", fits.as_str()]),
            Err(r) => panic!("{name}: {r}"),
        }
        let long = "x".repeat(MAX_ARGV_BYTES - name.len() + 1);
        check_resolve(
            &p,
            &[name, &long],
            Err("arguments too long: 8193 bytes (limit 8192)"),
        );
    }
}

#[test]
fn allow_any_runs_programs_but_not_relative_paths() {
    let p = policy(true);
    // Allowlist entries still win over a program of the same name.
    check_resolve(&p, &["uptime"], Ok(&["/usr/bin/uptime"]));
    check_resolve(
        &p,
        &["uptime", "-p"],
        Err("'uptime' takes no extra arguments"),
    );
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
    let over: Vec<&str> = std::iter::once("ls")
        .chain(std::iter::repeat_n("x", MAX_EXTRA_ARGS + 1))
        .collect();
    check_resolve(&p, &over, Err("too many arguments: 64 (limit 63)"));
}

#[test]
fn a_refused_allowlist_runs_nothing() {
    let why = "refusing allowlist /etc/monitor/commands.allow: it is writable by everyone";
    let refused = Allowlist::refused(Path::new("/etc/monitor/commands.allow"), why.to_owned());
    assert!(refused.exists());
    assert_eq!(refused.refusal(), Some(why));
    assert_eq!(refused.entries().count(), 0);
    let message = format!("this agent runs no processes: {why}");
    for allow_any in [false, true] {
        let p = Policy::new(refused.clone(), allow_any);
        check_resolve(&p, &["uptime"], Err(&message));
        check_resolve(&p, &["/bin/ls"], Err(&message));
        // Built-ins are answered by the agent itself: their refusal here
        // says so, not that processes are off.
        check_resolve(
            &p,
            &["ping"],
            Err("'ping' is a built-in command, not a program"),
        );
        check_resolve(&p, &[], Err("empty command"));
    }
    // A parsed allowlist, and a missing one, are not refused.
    assert_eq!(policy(false).allowlist().refusal(), None);
    let missing = Allowlist::missing(Path::new("/nonexistent/commands.allow"));
    assert_eq!(missing.refusal(), None);
    assert!(!missing.exists());
    assert!(policy(false).allowlist().exists());
}

/// xorshift64*: a fixed sequence, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Text made mostly of the characters the format cares about.
    fn text(&mut self, max_pieces: usize) -> String {
        const PIECES: &[&str] = &[
            "=",
            "<",
            ">",
            "\"",
            "\\",
            "#",
            ".",
            "...",
            "*",
            "?",
            "|",
            ":",
            "-",
            "/",
            "\r",
            "\n",
            "\r\n",
            "\t",
            " ",
            " ",
            "a",
            "z",
            "0",
            "9",
            "é",
            "\0",
            "\u{1b}",
            "\u{a0}",
            "<word>",
            "<path:/var/log/*>",
            "<int:1-5>",
            "<one-of:-a|b>",
            "<any>",
            "?",
            "x = /bin/x ",
            "/",
            "--",
        ];
        let len = self.below(max_pieces + 1);
        (0..len).map(|_| PIECES[self.below(PIECES.len())]).collect()
    }

    /// An allowlist of a few lines, most shaped like entries.
    fn allowlist(&mut self) -> String {
        const TOKENS: &[&str] = &[
            "-x",
            "--",
            "x",
            "\"a b\"",
            "\"-\"",
            "<any>",
            "<word>",
            "<word:-?>",
            "<word:*.log>",
            "<path>",
            "<path:/var/*>",
            "<int:0-9>",
            "<one-of:-a|b>",
            "<any>?",
            "<word>?",
            "<path>*",
            "<int:1-2>*",
            "...",
            "#",
            "# c ...",
        ];
        let mut text = String::new();
        for line in 0..1 + self.below(3) {
            if self.below(4) == 0 {
                text.push_str(&self.text(12));
            } else {
                text.push_str(&format!("e{line} = /bin/p"));
                for _ in 0..self.below(5) {
                    text.push(' ');
                    text.push_str(TOKENS[self.below(TOKENS.len())]);
                }
            }
            text.push('\n');
        }
        text
    }
}

#[test]
fn random_input_never_panics_nor_makes_options() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut entries_seen = 0;
    let mut resolved = 0;
    for round in 0..20_000 {
        let text = if round % 2 == 0 {
            rng.text(24)
        } else {
            rng.allowlist()
        };
        let list = match parse(&text) {
            Ok(list) => list,
            Err(e) => {
                let lines = text.split('\n').count();
                assert!(!e.errors.is_empty() && e.errors.len() <= MAX_REPORTED_ERRORS);
                for error in &e.errors {
                    assert!((1..=lines).contains(&error.line), "{text:?}: {error}");
                    assert!(error.column >= 1, "{text:?}: {error}");
                }
                continue;
            }
        };
        let policy = Policy::new(list.clone(), false);
        for entry in list.entries() {
            entries_seen += 1;
            // The template is what a file would say: it parses back to the
            // same entry (control characters aside: it shows them escaped).
            if !entry.template().contains('\\') {
                match parse(&format!("{} = {}", entry.name, entry.template())) {
                    Ok(again) => assert_eq!(
                        again.get(&entry.name),
                        Some(&Entry {
                            line: 1,
                            ..entry.clone()
                        })
                    ),
                    Err(e) => panic!("{text:?}: template {:?}: {e}", entry.template()),
                }
            }
            let options_allowed = entry.placeholders().any(|p| p.spec.allows_options());
            let fixed_options = entry
                .args
                .iter()
                .filter(|a| matches!(a, crate::commands::Arg::Fixed(t) if t.starts_with('-')))
                .count();
            for _ in 0..8 {
                let mut argv = vec![entry.name.clone()];
                argv.extend((0..rng.below(4)).map(|_| rng.text(3)));
                if rng.below(2) == 0 {
                    // Arguments that fit some placeholders.
                    const FITS: &[&str] = &["-a", "b", "-x", "x.log", "/var/x", "/", "5", "1"];
                    argv.extend((0..rng.below(4)).map(|_| FITS[rng.below(FITS.len())].to_owned()));
                }
                if let Ok(out) = policy.resolve(&argv) {
                    resolved += 1;
                    assert_eq!(out[0], entry.program);
                    assert_eq!(
                        out.len(),
                        1 + (entry.args.len() - entry.placeholders().count()) + argv.len() - 1
                    );
                    if !options_allowed {
                        let dashes = out[1..].iter().filter(|a| a.starts_with('-')).count();
                        assert_eq!(dashes, fixed_options, "{text:?} {argv:?} -> {out:?}");
                    }
                }
            }
        }
    }
    // The loop really reached the resolver.
    assert!(entries_seen > 5_000, "{entries_seen} entries");
    assert!(resolved > 5_000, "{resolved} resolved");
}
