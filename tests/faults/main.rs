//! Fault tests: the delivery guarantees of issue 5, proved against the real
//! binaries while things break under them.
//!
//! Each test kills, freezes, partitions or corrupts something, then checks
//! what must still hold: every batch an agent produced is stored exactly
//! once (or counted as dropped, exactly), the database passes
//! `integrity_check`, peers that went silent are noticed, and nothing
//! panics on a broken file. The figures each run measures are printed
//! (`cargo test --test faults -- --nocapture` shows them).
//!
//! How "stored exactly once" is measured: agents run with `--count N`, so
//! they produce a known number of batches, then flush (bounded by
//! `MONITOR_SHUTDOWN_TIMEOUT`) and exit 0. The test then reads the database
//! itself: per host, `batches_stored_total` (batches the writer counted as
//! new) must equal N, the number of distinct sample times (one per batch:
//! ticks are 100 ms apart) must equal N, and the row count must match what
//! the fake /proc tree makes each tick produce. A batch stored twice would
//! raise `batches_stored_total` above N even though the samples table's key
//! would hide the second copy of its rows.
//!
//! Bounds: every wait polls with a deadline; the whole suite runs in about
//! two minutes. `MONITOR_SLOW_TESTS=1` lengthens the chaos runs (more
//! agents, more ticks, a minute of kills). `MONITOR_FAULT_SEED=N` replays a
//! kill schedule. Network traffic stays on loopback, or on a veth pair
//! between two network namespaces these tests create (10.213.7.0/30, which
//! exists nowhere else) and always delete.
//!
//! These tests must never touch the machine's clock, real interfaces or
//! any address outside loopback and their own namespaces.
//!
//! One module per kind of fault (sections 1 to 8 below); `support` holds
//! the fake host and the agent helpers, `db` reads the server's file,
//! `netns` builds the namespaces for the partition test.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod db;
mod netns;
mod support;

// 1. kill -9 the server again and again
mod kill9;
// 2. the server is away for longer than the buffer holds
mod overflow;
// 3. network partition between two network namespaces
mod partition;
// 4. half-open connections: a frozen server, a frozen agent
mod frozen;
// 5. agent restart with the on-disk spool
mod spool_restart;
// 6. corrupt and truncated files
mod corrupt_files;
// 7. clocks, clean stops, overload
mod clocks_stops_overload;
// 8. ticks sent together (--flush-interval), kill -9 of the agent
mod flush;
