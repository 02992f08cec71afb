//! The command ids this agent has seen, each kept until its grant expires
//! (by this agent's own clock) so a replay is refused, across restarts.
//!
//! A security review sent 4,100 fresh ids and evicted a live one, whose
//! replay then ran: this cache never evicts a live id. When it is full of
//! live ids (more commands within one grant lifetime, 10 minutes, than
//! anyone sends), a new command is refused instead, and says why.
//!
//! The ids live in memory and in `seen-commands` in the state directory:
//! one line `EXPIRES_UNIX_MS ID` appended (and synced) per command before
//! it runs, so a restart, a crash or a power cut cannot make an id new
//! again. The file is rewritten without the expired lines when it grows
//! past twice the live ones. A file that cannot be written is logged, and
//! the cache goes on in memory.

use std::collections::HashMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use monitor::files::{self, SECRET_MODE};

/// The file in the state directory.
pub const SEEN_FILE: &str = "seen-commands";
/// Live ids kept at most.
pub const CAPACITY: usize = 10_000;

/// Why a command id cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayRefusal {
    /// Seen before, and its grant has not expired.
    Replay,
    /// The cache is full of live ids.
    Full,
}

impl fmt::Display for ReplayRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayRefusal::Replay => f.write_str("this command id was seen before (a replay?)"),
            ReplayRefusal::Full => write!(
                f,
                "{CAPACITY} commands are still within their validity: refusing more until some expire"
            ),
        }
    }
}

#[derive(Debug)]
pub struct ReplayCache {
    /// id → expiry (ms since the Unix epoch, this agent's clock).
    live: HashMap<String, i64>,
    /// Where the ids are kept; `None`: memory only.
    path: Option<PathBuf>,
    /// Lines in the file (live or not).
    lines: usize,
}

fn parse_line(line: &str) -> Option<(i64, &str)> {
    let (expires, id) = line.split_once(' ')?;
    let expires = expires.parse().ok()?;
    (!id.is_empty() && id.len() <= monitor::command::MAX_ID_BYTES).then_some((expires, id))
}

impl ReplayCache {
    /// A cache in memory only.
    pub fn in_memory() -> ReplayCache {
        ReplayCache {
            live: HashMap::new(),
            path: None,
            lines: 0,
        }
    }

    /// The cache of `state_dir`, with the ids still live at `now_unix_ms`.
    /// A damaged line is skipped (a torn last line after a crash); an
    /// unreadable file falls back to memory with a warning.
    pub fn open(state_dir: &Path, now_unix_ms: i64) -> ReplayCache {
        let path = state_dir.join(SEEN_FILE);
        let mut cache = ReplayCache {
            live: HashMap::new(),
            path: Some(path.clone()),
            lines: 0,
        };
        let mut torn = false;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                // A last line without its newline was torn by a crash:
                // rewrite the file before anything is appended to it.
                torn = !text.is_empty() && !text.ends_with('\n');
                for line in text.lines() {
                    cache.lines += 1;
                    if let Some((expires, id)) = parse_line(line)
                        && expires > now_unix_ms
                        && cache.live.len() < CAPACITY
                    {
                        cache.live.insert(id.to_owned(), expires);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                log::warn!(
                    "cannot read {}: {e}; command ids are remembered in memory only",
                    path.display()
                );
                cache.path = None;
            }
        }
        if torn {
            cache.compact();
        } else {
            cache.compact_if_needed();
        }
        cache
    }

    /// Records `id` (valid until `expires_unix_ms`) as seen, or refuses it.
    pub fn first_sighting(
        &mut self,
        id: &str,
        expires_unix_ms: i64,
        now_unix_ms: i64,
    ) -> Result<(), ReplayRefusal> {
        if self.live.get(id).is_some_and(|&exp| exp > now_unix_ms) {
            return Err(ReplayRefusal::Replay);
        }
        if self.live.len() >= CAPACITY {
            self.live.retain(|_, exp| *exp > now_unix_ms);
            if self.live.len() >= CAPACITY {
                return Err(ReplayRefusal::Full);
            }
        }
        self.live.insert(id.to_owned(), expires_unix_ms);
        self.append(id, expires_unix_ms);
        Ok(())
    }

    fn append(&mut self, id: &str, expires_unix_ms: i64) {
        let Some(path) = &self.path else {
            return;
        };
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(SECRET_MODE)
            .open(path)
            .and_then(|mut f| {
                f.write_all(format!("{expires_unix_ms} {id}\n").as_bytes())?;
                f.sync_data()
            });
        match written {
            Ok(()) => {
                self.lines += 1;
                self.compact_if_needed();
            }
            Err(e) => {
                log::warn!(
                    "cannot record a command id in {}: {e}; remembered in memory only",
                    path.display()
                );
                self.path = None;
            }
        }
    }

    /// Rewrites the file with the live ids when it holds more than twice
    /// as many lines (and at least a few hundred).
    fn compact_if_needed(&mut self) {
        if self.lines > 256.max(2 * self.live.len()) {
            self.compact();
        }
    }

    /// Rewrites the file with the live ids only.
    fn compact(&mut self) {
        let Some(path) = &self.path else {
            return;
        };
        let mut text = String::new();
        for (id, exp) in &self.live {
            text.push_str(&format!("{exp} {id}\n"));
        }
        match files::write_atomic(path, text.as_bytes(), SECRET_MODE) {
            Ok(()) => self.lines = self.live.len(),
            Err(e) => log::warn!("cannot compact {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_608_000_000;

    #[test]
    fn an_id_is_refused_until_its_expiry_then_forgotten() {
        let mut c = ReplayCache::in_memory();
        assert_eq!(c.first_sighting("a", NOW + 100, NOW), Ok(()));
        assert_eq!(
            c.first_sighting("a", NOW + 100, NOW + 99),
            Err(ReplayRefusal::Replay)
        );
        // At its expiry it could not run anyway (the grant check refuses
        // it); the cache may forget it then.
        assert_eq!(c.first_sighting("a", NOW + 200, NOW + 100), Ok(()));
    }

    #[test]
    fn a_full_cache_refuses_rather_than_forgetting_a_live_id() {
        let mut c = ReplayCache::in_memory();
        for i in 0..CAPACITY {
            c.first_sighting(&format!("id-{i}"), NOW + 1000, NOW)
                .unwrap();
        }
        assert_eq!(
            c.first_sighting("new", NOW + 1000, NOW),
            Err(ReplayRefusal::Full)
        );
        // The oldest live id is still refused: nothing was evicted.
        assert_eq!(
            c.first_sighting("id-0", NOW + 1000, NOW + 1),
            Err(ReplayRefusal::Replay)
        );
        // Once they expire there is room again.
        assert_eq!(c.first_sighting("new", NOW + 5000, NOW + 1000), Ok(()));
        assert_eq!(c.live.len(), 1);
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(
            ReplayRefusal::Replay.to_string(),
            "this command id was seen before (a replay?)"
        );
        assert_eq!(
            ReplayRefusal::Full.to_string(),
            format!(
                "{CAPACITY} commands are still within their validity: refusing more until some expire"
            )
        );
    }

    /// A state directory whose `seen-commands` holds `expired` lines that
    /// expired before NOW, then `live` lines valid after it.
    fn seen_file(expired: usize, live: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..expired {
            text.push_str(&format!("{} old-{i}\n", NOW - 1));
        }
        for i in 0..live {
            text.push_str(&format!("{} live-{i}\n", NOW + 10_000));
        }
        std::fs::write(dir.path().join(SEEN_FILE), text).unwrap();
        dir
    }

    fn file_lines(dir: &tempfile::TempDir) -> usize {
        std::fs::read_to_string(dir.path().join(SEEN_FILE))
            .unwrap()
            .lines()
            .count()
    }

    #[test]
    fn a_line_is_live_only_with_an_id_of_1_to_max_bytes_and_a_later_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let max = "m".repeat(monitor::command::MAX_ID_BYTES);
        let long = "l".repeat(monitor::command::MAX_ID_BYTES + 1);
        let text = format!(
            "{later} \n{later} {long}\n{later} {max}\n{NOW} at-now\n",
            later = NOW + 10_000
        );
        std::fs::write(dir.path().join(SEEN_FILE), text).unwrap();
        let mut c = ReplayCache::open(dir.path(), NOW);
        assert_eq!(c.live.len(), 1, "only the id of exactly the largest size");
        assert_eq!(
            c.first_sighting(&max, NOW + 10_000, NOW),
            Err(ReplayRefusal::Replay)
        );
        assert_eq!(c.first_sighting(&long, NOW + 10_000, NOW), Ok(()));
    }

    #[test]
    fn a_file_of_more_live_ids_than_the_capacity_loads_the_capacity() {
        let dir = seen_file(0, CAPACITY + 1);
        let mut c = ReplayCache::open(dir.path(), NOW);
        assert_eq!(c.live.len(), CAPACITY);
        assert_eq!(
            c.first_sighting("new", NOW + 1000, NOW),
            Err(ReplayRefusal::Full)
        );
    }

    #[test]
    fn an_unreadable_file_leaves_the_cache_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(SEEN_FILE)).unwrap();
        let mut c = ReplayCache::open(dir.path(), NOW);
        assert_eq!(c.path, None, "a directory is not a file of ids");
        assert_eq!(c.first_sighting("a", NOW + 100, NOW), Ok(()));
        assert_eq!(
            c.first_sighting("a", NOW + 100, NOW),
            Err(ReplayRefusal::Replay)
        );
    }

    #[test]
    fn the_file_is_rewritten_only_beyond_256_lines_and_twice_the_live_ids() {
        // 256 lines, one live, ending in a newline (not torn): kept as is.
        let dir = seen_file(255, 1);
        let c = ReplayCache::open(dir.path(), NOW);
        assert_eq!((c.live.len(), file_lines(&dir)), (1, 256));
        // 400 lines, 300 live: fewer than twice the live ones, kept.
        let dir = seen_file(100, 300);
        let c = ReplayCache::open(dir.path(), NOW);
        assert_eq!((c.live.len(), file_lines(&dir)), (300, 400));
        // 210 lines, 10 live: each new id adds a line, and the 257th line
        // makes the file be rewritten with the live ids only.
        let dir = seen_file(200, 10);
        let mut c = ReplayCache::open(dir.path(), NOW);
        assert_eq!(file_lines(&dir), 210);
        for i in 0..100 {
            c.first_sighting(&format!("new-{i}"), NOW + 10_000, NOW)
                .unwrap();
        }
        assert_eq!((c.live.len(), file_lines(&dir)), (110, 110));
    }

    #[test]
    fn ids_survive_a_restart_and_the_file_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ReplayCache::open(dir.path(), NOW);
        c.first_sighting("kept", NOW + 10_000, NOW).unwrap();
        c.first_sighting("gone", NOW + 10, NOW).unwrap();
        drop(c);
        let mut again = ReplayCache::open(dir.path(), NOW + 100);
        assert_eq!(
            again.first_sighting("kept", NOW + 10_000, NOW + 100),
            Err(ReplayRefusal::Replay)
        );
        assert_eq!(
            again.first_sighting("gone", NOW + 10_000, NOW + 100),
            Ok(())
        );
        // A torn last line (a crash mid-write) is skipped.
        let path = dir.path().join(SEEN_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"123").unwrap();
        drop(f);
        let mut third = ReplayCache::open(dir.path(), NOW + 200);
        assert_eq!(
            third.first_sighting("kept", NOW + 10_000, NOW + 200),
            Err(ReplayRefusal::Replay)
        );
        // Many expired lines are compacted away.
        for i in 0..600 {
            third
                .first_sighting(&format!("t{i}"), NOW + 300, NOW + 250)
                .unwrap();
        }
        let later = ReplayCache::open(dir.path(), NOW + 400);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 256, "{lines} lines kept");
        assert_eq!(later.live.len(), 2, "only the live ids: kept and gone");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
