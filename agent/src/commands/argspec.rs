//! Placeholders: what an allowlist entry accepts where the operator supplies
//! an argument (`<word>`, `<path:/var/log/*>`, `<int:1-500>`, ...), how
//! such a spec is written and how an operator's argument is checked against
//! it. The allowlist format itself, and where placeholders may stand in an
//! entry, are in [`super::policy`].
//!
//! The matching is deliberately small (no regex crate: the agent's binary
//! size matters on a Pi): fixed character sets, and a glob with only `*`
//! (any run of characters, never a `/` in a path) and `?` (one character).
//! The one rule every placeholder keeps: an argument beginning with `-` is
//! refused unless the spec itself was written to allow options (a
//! `<one-of:...>` alternative or a `<word:GLOB>` glob beginning with `-`,
//! or the trusted `...`), so an operator's argument never turns into an
//! option the entry did not name.
//!
//! This module must never do I/O, and never import from its siblings: the
//! policy and the refusals both build on it.

use std::fmt;

/// The characters of a `<word>` and of each component of a `<path>`, as
/// shown in messages.
pub const WORD_CHARS: &str = "A-Z a-z 0-9 . _ - + : @ , =";

/// Whether `c` may appear in a `<word>` (and in a `<path>` component).
pub fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | ':' | '@' | ',' | '=')
}

/// What one placeholder accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgSpec {
    /// `<any>`: any single argument that does not begin with `-`.
    Any,
    /// `<word>` or `<word:GLOB>`: a non-empty run of [`WORD_CHARS`],
    /// matching the glob if there is one.
    Word(Option<String>),
    /// `<path>` or `<path:GLOB>`: an absolute path without `.`, `..` or
    /// empty components, made of [`WORD_CHARS`] and `/`, matching the glob
    /// (component by component) if there is one.
    Path(Option<String>),
    /// `<int:MIN-MAX>`: decimal digits only, no sign, no leading zero, from
    /// `min` to `max` inclusive.
    Int { min: u64, max: u64 },
    /// `<one-of:A|B|...>`: exactly one of the listed words.
    OneOf(Vec<String>),
    /// `...`: anything at all, options included (a trusted setup's choice).
    Anything,
}

/// How many operator arguments one placeholder takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Exactly one (no suffix).
    One,
    /// Zero or one (`?` suffix).
    Optional,
    /// Zero or more (`*` suffix, and `...`).
    Many,
}

/// One placeholder of an entry: its spec and how many arguments it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub spec: ArgSpec,
    pub count: Count,
}

/// Why a placeholder as written is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// No `>` closes the `<`.
    Unterminated,
    /// Something other than `?` or `*` right after the `>`.
    TextAfter,
    /// A type other than any, word, path, int and one-of.
    UnknownType(String),
    /// `int` and `one-of` need a `:PARAMETER`.
    MissingParameter(&'static str),
    /// `any` takes no `:PARAMETER`.
    UnexpectedParameter(&'static str),
    /// An empty glob after `word:` or `path:`.
    EmptyGlob,
    /// A character a word or path glob cannot hold.
    GlobChar { c: char, path: bool },
    /// A path glob that does not begin with `/`.
    PathGlobNotAbsolute,
    /// A path glob with a `.`, `..` or empty component.
    PathGlobComponent,
    /// `int:` not followed by `MIN-MAX` in plain decimal.
    BadRange,
    /// `int:MIN-MAX` with `MIN` above `MAX`.
    ReversedRange { min: u64, max: u64 },
    /// An empty alternative in `one-of:`.
    EmptyChoice,
    /// A character an alternative of `one-of:` cannot hold.
    ChoiceChar(char),
}

/// Why an operator's argument does not fit its placeholder. Carries what
/// the message needs, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// It begins with `-` and the spec allows no option there.
    Option,
    /// Not plain decimal digits from `min` to `max`.
    NotInRange { min: u64, max: u64 },
    /// An empty word.
    EmptyWord,
    /// A character outside the word (or path) character set.
    BadChar { c: char, path: bool },
    /// A path that does not begin with `/`.
    NotAbsolute,
    /// A path with a `.`, `..` or empty component.
    BadComponent,
    /// It does not match the glob.
    NoMatch(String),
    /// Not one of the alternatives.
    NotOneOf(Vec<String>),
}

/// Parses a placeholder token: `<TYPE>` or `<TYPE:PARAMETER>`, then
/// nothing, `?` or `*`. The token must begin with `<`. On error, the byte
/// offset into `token` where the problem is (tokens outside quotes are
/// ASCII, so it is also the character offset).
pub fn parse_placeholder(token: &str) -> Result<Placeholder, (usize, SpecError)> {
    let Some(close) = token.find('>') else {
        return Err((0, SpecError::Unterminated));
    };
    let count = match &token[close + 1..] {
        "" => Count::One,
        "?" => Count::Optional,
        "*" => Count::Many,
        _ => return Err((close + 1, SpecError::TextAfter)),
    };
    let inner = token.get(1..close).unwrap_or_default();
    let (kind, parameter) = match inner.split_once(':') {
        Some((kind, parameter)) => (kind, Some(parameter)),
        None => (inner, None),
    };
    // Where the parameter starts in the token: after '<', the type and ':'.
    let at = 1 + kind.len() + 1;
    let spec = match (kind, parameter) {
        ("any", None) => ArgSpec::Any,
        ("any", Some(_)) => return Err((at - 1, SpecError::UnexpectedParameter("any"))),
        ("word", None) => ArgSpec::Word(None),
        ("word", Some(glob)) => {
            check_glob(glob, false).map_err(|(i, e)| (at + i, e))?;
            ArgSpec::Word(Some(glob.to_owned()))
        }
        ("path", None) => ArgSpec::Path(None),
        ("path", Some(glob)) => {
            check_glob(glob, true).map_err(|(i, e)| (at + i, e))?;
            ArgSpec::Path(Some(glob.to_owned()))
        }
        ("int", None) => return Err((1, SpecError::MissingParameter("int"))),
        ("int", Some(range)) => {
            let (min, max) = parse_range(range).map_err(|e| (at, e))?;
            ArgSpec::Int { min, max }
        }
        ("one-of", None) => return Err((1, SpecError::MissingParameter("one-of"))),
        ("one-of", Some(choices)) => {
            ArgSpec::OneOf(parse_choices(choices).map_err(|(i, e)| (at + i, e))?)
        }
        (other, _) => return Err((1, SpecError::UnknownType(other.to_owned()))),
    };
    Ok(Placeholder { spec, count })
}

/// A word glob: word characters, `*` and `?`. A path glob: `/` first, then
/// components of those, none empty, `.` or `..`.
fn check_glob(glob: &str, path: bool) -> Result<(), (usize, SpecError)> {
    if glob.is_empty() {
        return Err((0, SpecError::EmptyGlob));
    }
    if let Some((i, c)) = glob
        .char_indices()
        .find(|&(_, c)| !(is_word_char(c) || c == '*' || c == '?' || (path && c == '/')))
    {
        return Err((i, SpecError::GlobChar { c, path }));
    }
    if path {
        let Some(rest) = glob.strip_prefix('/') else {
            return Err((0, SpecError::PathGlobNotAbsolute));
        };
        if bad_components(rest) {
            return Err((0, SpecError::PathGlobComponent));
        }
    }
    Ok(())
}

/// Whether a path after its leading `/` has an empty, `.` or `..`
/// component; the root itself (nothing after the `/`) has none.
fn bad_components(after_root: &str) -> bool {
    !after_root.is_empty()
        && after_root
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
}

/// `MIN-MAX`, both plain decimal, `MIN <= MAX`.
fn parse_range(range: &str) -> Result<(u64, u64), SpecError> {
    let (min, max) = range.split_once('-').ok_or(SpecError::BadRange)?;
    let min = parse_decimal(min).ok_or(SpecError::BadRange)?;
    let max = parse_decimal(max).ok_or(SpecError::BadRange)?;
    if min > max {
        return Err(SpecError::ReversedRange { min, max });
    }
    Ok((min, max))
}

/// `A|B|...`: non-empty alternatives of word characters.
fn parse_choices(choices: &str) -> Result<Vec<String>, (usize, SpecError)> {
    let mut list = Vec::new();
    let mut at = 0;
    for choice in choices.split('|') {
        if choice.is_empty() {
            return Err((at, SpecError::EmptyChoice));
        }
        if let Some((i, c)) = choice.char_indices().find(|&(_, c)| !is_word_char(c)) {
            return Err((at + i, SpecError::ChoiceChar(c)));
        }
        list.push(choice.to_owned());
        at += choice.len() + 1;
    }
    Ok(list)
}

/// Plain decimal: digits only (no sign, no space), no leading zero (a
/// program may read `010` as octal), within `u64`.
fn parse_decimal(text: &str) -> Option<u64> {
    let plain = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if plain { text.parse().ok() } else { None }
}

impl ArgSpec {
    /// Whether the spec, as written, accepts an argument beginning with `-`.
    pub fn allows_options(&self) -> bool {
        match self {
            ArgSpec::Anything => true,
            ArgSpec::OneOf(choices) => choices.iter().any(|c| c.starts_with('-')),
            ArgSpec::Word(Some(glob)) => glob.starts_with('-'),
            ArgSpec::Any | ArgSpec::Word(None) | ArgSpec::Path(_) | ArgSpec::Int { .. } => false,
        }
    }

    /// Checks one operator argument.
    pub fn check(&self, arg: &str) -> Result<(), Mismatch> {
        if arg.starts_with('-') && !self.allows_options() {
            return Err(Mismatch::Option);
        }
        match self {
            ArgSpec::Any | ArgSpec::Anything => Ok(()),
            ArgSpec::Int { min, max } => match parse_decimal(arg) {
                Some(n) if (*min..=*max).contains(&n) => Ok(()),
                _ => Err(Mismatch::NotInRange {
                    min: *min,
                    max: *max,
                }),
            },
            ArgSpec::OneOf(choices) => {
                if choices.iter().any(|c| c == arg) {
                    Ok(())
                } else {
                    Err(Mismatch::NotOneOf(choices.clone()))
                }
            }
            ArgSpec::Word(glob) => {
                if arg.is_empty() {
                    return Err(Mismatch::EmptyWord);
                }
                if let Some(c) = arg.chars().find(|&c| !is_word_char(c)) {
                    return Err(Mismatch::BadChar { c, path: false });
                }
                match glob {
                    Some(glob) if !glob_match(glob.as_bytes(), arg.as_bytes()) => {
                        Err(Mismatch::NoMatch(glob.clone()))
                    }
                    _ => Ok(()),
                }
            }
            ArgSpec::Path(glob) => {
                let Some(rest) = arg.strip_prefix('/') else {
                    return Err(Mismatch::NotAbsolute);
                };
                if let Some(c) = rest.chars().find(|&c| !(is_word_char(c) || c == '/')) {
                    return Err(Mismatch::BadChar { c, path: true });
                }
                if bad_components(rest) {
                    return Err(Mismatch::BadComponent);
                }
                match glob {
                    Some(glob) if !path_match(glob, arg) => Err(Mismatch::NoMatch(glob.clone())),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// A path glob against a path, component by component: `*` and `?` never
/// match a `/`.
fn path_match(glob: &str, path: &str) -> bool {
    let mut globs = glob.split('/');
    let mut parts = path.split('/');
    loop {
        match (globs.next(), parts.next()) {
            (None, None) => return true,
            (Some(g), Some(p)) if glob_match(g.as_bytes(), p.as_bytes()) => {}
            _ => return false,
        }
    }
}

/// `*` matches any run of bytes (empty included), `?` exactly one, every
/// other byte itself. Linear in practice: only the last `*` is retried.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // The pattern position after the last `*`, and the text position that
    // star's match ends at so far.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((after, end)) => {
                    star = Some((after, end + 1));
                    p = after;
                    t = end + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl fmt::Display for ArgSpec {
    /// The spec in plain words, as `--check-commands` and refusals show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgSpec::Any => f.write_str("any argument not beginning with '-'"),
            ArgSpec::Word(None) => write!(f, "a word of {WORD_CHARS}, not beginning with '-'"),
            ArgSpec::Word(Some(glob)) if glob.starts_with('-') => {
                write!(f, "a word of {WORD_CHARS} matching {glob} (an option)")
            }
            ArgSpec::Word(Some(glob)) => write!(
                f,
                "a word of {WORD_CHARS} matching {glob}, not beginning with '-'"
            ),
            ArgSpec::Path(None) => {
                f.write_str("an absolute path without '.', '..' or empty components")
            }
            ArgSpec::Path(Some(glob)) => write!(
                f,
                "an absolute path matching {glob}, without '.', '..' or empty components"
            ),
            ArgSpec::Int { min, max } => write!(f, "a whole number from {min} to {max}"),
            ArgSpec::OneOf(choices) => write!(f, "one of {}", choices.join(" ")),
            ArgSpec::Anything => f.write_str("anything, options included (trusted: not checked)"),
        }
    }
}

/// What a character set is called in messages, and what it allows.
fn char_set(path: bool) -> (&'static str, &'static str) {
    if path {
        ("path", "A-Z a-z 0-9 . _ - + : @ , = /")
    } else {
        ("word", WORD_CHARS)
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Unterminated => f.write_str("placeholder has no closing '>'"),
            SpecError::TextAfter => {
                f.write_str("only '?' or '*' may follow a placeholder's closing '>'")
            }
            SpecError::UnknownType(kind) => write!(
                f,
                "unknown placeholder type '{}' (any, word, path, int, one-of)",
                kind.escape_debug()
            ),
            SpecError::MissingParameter("int") => f.write_str("'int' needs a range: <int:MIN-MAX>"),
            SpecError::MissingParameter(kind) => {
                write!(f, "'{kind}' needs its words: <{kind}:A|B>")
            }
            SpecError::UnexpectedParameter(kind) => write!(f, "'{kind}' takes no ':' parameter"),
            SpecError::EmptyGlob => f.write_str("empty pattern after ':'"),
            SpecError::GlobChar { c, path } => {
                let (what, allowed) = char_set(*path);
                write!(
                    f,
                    "'{}' cannot appear in a {what} pattern (allowed: {allowed} * ?)",
                    c.escape_debug()
                )
            }
            SpecError::PathGlobNotAbsolute => f.write_str("a path pattern must begin with '/'"),
            SpecError::PathGlobComponent => {
                f.write_str("a path pattern may not have '.', '..' or empty components")
            }
            SpecError::BadRange => f.write_str(
                "expected MIN-MAX in plain decimal (no sign, no leading zero), e.g. <int:1-500>",
            ),
            SpecError::ReversedRange { min, max } => {
                write!(f, "range {min}-{max} is empty: MIN is above MAX")
            }
            SpecError::EmptyChoice => f.write_str("empty word in one-of"),
            SpecError::ChoiceChar(c) => write!(
                f,
                "'{}' cannot appear in a one-of word (allowed: {WORD_CHARS})",
                c.escape_debug()
            ),
        }
    }
}

impl fmt::Display for Mismatch {
    /// A clause that reads well after "argument N of 'NAME' is 'ARG': ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Option => {
                f.write_str("it begins with '-', and the allowlist entry allows no option there")
            }
            Mismatch::NotInRange { min, max } => write!(
                f,
                "expected a whole number from {min} to {max} (digits only, no leading zero)"
            ),
            Mismatch::EmptyWord => f.write_str("expected a word, got nothing"),
            Mismatch::BadChar { c, path } => {
                let (what, allowed) = char_set(*path);
                write!(
                    f,
                    "'{}' is not allowed in a {what} (allowed: {allowed})",
                    c.escape_debug()
                )
            }
            Mismatch::NotAbsolute => f.write_str("expected an absolute path"),
            Mismatch::BadComponent => {
                f.write_str("a path may not have '.', '..' or empty components")
            }
            Mismatch::NoMatch(glob) => write!(f, "it does not match {glob}"),
            Mismatch::NotOneOf(choices) => write!(f, "expected one of {}", choices.join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slow, obviously right matcher to compare the fast one with.
    fn reference(pattern: &[u8], text: &[u8]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some((&c, rest)) => match text.split_first() {
                Some((&t, text_rest)) if c == b'?' || c == t => reference(rest, text_rest),
                _ => false,
            },
        }
    }

    #[test]
    fn glob_matches_like_the_reference() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "abc", true),
            ("?", "", false),
            ("?", "a", true),
            ("?", "ab", false),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("*.service", "ssh.service", true),
            ("*.service", "ssh.socket", false),
            ("*a*b", "xaxaxb", true),
            ("a*", "b", false),
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("ab", "abc", false),
            ("abc", "ab", false),
            ("**", "x", true),
            ("*?", "", false),
        ];
        for &(pattern, text, want) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                want,
                "{pattern} {text}"
            );
            assert_eq!(
                reference(pattern.as_bytes(), text.as_bytes()),
                want,
                "{pattern} {text}"
            );
        }
        // Every short pattern over {a, b, *, ?} against every short text.
        let alphabet = [b'a', b'b', b'*', b'?'];
        let words = |len: usize, letters: &[u8]| -> Vec<Vec<u8>> {
            let mut all = vec![Vec::new()];
            for _ in 0..len {
                all = all
                    .iter()
                    .flat_map(|w| {
                        letters.iter().map(move |&l| {
                            let mut w = w.clone();
                            w.push(l);
                            w
                        })
                    })
                    .collect();
            }
            all
        };
        for plen in 0..=4 {
            for pattern in words(plen, &alphabet) {
                for tlen in 0..=5 {
                    for text in words(tlen, &alphabet[..2]) {
                        assert_eq!(
                            glob_match(&pattern, &text),
                            reference(&pattern, &text),
                            "{:?} {:?}",
                            String::from_utf8_lossy(&pattern),
                            String::from_utf8_lossy(&text)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn path_globs_stay_within_components() {
        assert!(path_match("/var/log/*", "/var/log/syslog"));
        assert!(!path_match("/var/log/*", "/var/log/a/b"));
        assert!(!path_match("/var/log/*", "/var/log"));
        assert!(path_match("/var/*/x", "/var/a/x"));
        assert!(!path_match("/var/*/x", "/var/a/b/x"));
        assert!(path_match("/", "/"));
        assert!(!path_match("/", "/a"));
        assert!(path_match("/*", "/a"));
        assert!(!path_match("/v?r", "/v/r"));
    }

    #[test]
    fn word_characters() {
        for c in "azAZ09._-+:@,=".chars() {
            assert!(is_word_char(c), "{c:?}");
        }
        for c in "/ \t\"'\\<>|;&$*?#~`!()[]{}\u{e9}\0".chars() {
            assert!(!is_word_char(c), "{c:?}");
        }
    }

    #[test]
    fn decimals_are_plain() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("500"), Some(500));
        assert_eq!(parse_decimal("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "00",
            "010",
            "+5",
            "-5",
            " 5",
            "5 ",
            "5x",
            "18446744073709551616",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }
}
