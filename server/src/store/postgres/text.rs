//! Text as PostgreSQL takes it: a `text` value cannot hold a NUL byte, and
//! one such string would fail a whole flush (every batch in it) again and
//! again. Strings from agents (versions, command messages) may hold one.
//!
//! Nothing else may change: every other character is kept as it came.

/// `s` with each NUL replaced by U+FFFD.
pub(crate) fn pg_text(s: &str) -> String {
    match s.contains('\0') {
        true => s.replace('\0', "\u{FFFD}"),
        false => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nul_changes() {
        assert_eq!(pg_text("0.1.0"), "0.1.0");
        assert_eq!(pg_text("a\0b"), "a\u{FFFD}b");
        assert_eq!(pg_text("é\tx"), "é\tx");
    }
}
