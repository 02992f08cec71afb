//! The warnings a unit test's own thread logged, for the tests that check
//! what the agent tells the operator (a refusal, a full spool). Compiled
//! into the unit tests only; it must never install itself in the agent.

use std::cell::RefCell;
use std::sync::Once;

struct Captured;

static LOGGER: Captured = Captured;
static INSTALL: Once = Once::new();

thread_local! {
    /// Each test runs on a thread of its own, so tests running in
    /// parallel never see each other's lines.
    static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LINES.with(|l| l.borrow_mut().push(record.args().to_string()));
    }
    fn flush(&self) {}
}

/// The lines this thread logged at warning level or above since the last
/// call (the first call starts the capture).
pub fn take_lines() -> Vec<String> {
    INSTALL.call_once(|| {
        // Nothing else in this crate's unit tests installs a logger.
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    });
    LINES.with(|l| std::mem::take(&mut *l.borrow_mut()))
}
