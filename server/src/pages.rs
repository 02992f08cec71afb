//! Paging by name: the first entries whose name sorts after a token, as
//! `ListHosts` pages through the registry and the store's host table.
//!
//! Pure: it picks from what it is given, with no lock, clock or I/O. It
//! must stay linear in the entries scanned (plus the page's sort), so a
//! page of 1,000 out of 30,000 hosts never sorts or copies all of them.

/// The first `limit` of `entries` (name, value) whose name sorts after
/// `after` (all of them when `None`), by name.
pub fn first_after<'a, T>(
    entries: impl Iterator<Item = (&'a str, T)>,
    after: Option<&str>,
    limit: usize,
) -> Vec<T> {
    let mut picked: Vec<(&'a str, T)> = entries
        .filter(|(name, _)| after.is_none_or(|a| *name > a))
        .collect();
    if picked.len() > limit {
        picked.select_nth_unstable_by(limit, |a, b| a.0.cmp(b.0));
        picked.truncate(limit);
    }
    picked.sort_unstable_by(|a, b| a.0.cmp(b.0));
    picked.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(names: &[&str], after: Option<&str>, limit: usize, expected: &[&str]) {
        let got = first_after(names.iter().map(|n| (*n, *n)), after, limit);
        assert_eq!(got, expected, "after {after:?}, limit {limit}");
    }

    #[test]
    fn pages_are_sorted_slices_after_a_name() {
        let names = ["d", "b", "e", "a", "c"];
        check(&names, None, 2, &["a", "b"]);
        check(&names, Some("b"), 2, &["c", "d"]);
        check(&names, Some("d"), 2, &["e"]);
        check(&names, Some("e"), 2, &[]);
        check(&names, Some("bb"), 10, &["c", "d", "e"]);
        check(&names, None, usize::MAX, &["a", "b", "c", "d", "e"]);
        check(&names, None, 0, &[]);
        check(&[], None, 3, &[]);
    }
}
