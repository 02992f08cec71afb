//! The writer's memory: what it knows without reading the file. Host ids
//! by name with their newest sample time, the host table it shares with
//! readers, the dedup state of recent runs, which hosts wait for a
//! merge, and which for their health rollup.
//!
//! Memory is changed only after a commit succeeded (a flush works on
//! staged copies and applies them after COMMIT, see `flush.rs`), or from
//! what the file holds at open (`load.rs`): a failed transaction leaves
//! memory exactly as the file is.

use std::collections::HashMap;
use std::sync::Arc;

use super::merges::Merges;
use super::rollups::Rollups;
use crate::store::sqlite::hosts::HostTable;
use crate::store::sqlite::runs::RunCache;
use crate::throttle::LogThrottle;

/// Everything the writer holds in memory.
pub(super) struct Memory {
    /// hostname → host_id of every row of `hosts` (bounded by the table).
    pub(super) host_ids: HashMap<String, i64>,
    /// host_id → no stored sample of the host is newer than this, ms since
    /// the Unix epoch (an upper bound: never lowered, retention only
    /// deletes). A batch with only newer samples cannot conflict with a
    /// stored one (see `conflicts.rs`). Absent: nothing stored.
    pub(super) newest_sample_unix_ms: HashMap<i64, i64>,
    /// Every host's state and unmerged ticks, shared with the readers.
    pub(super) hosts: Arc<HostTable>,
    /// The dedup state of recently seen runs, and of every run an unmerged
    /// journal row names.
    pub(super) runs: RunCache,
    pub(super) merges: Merges,
    /// Which hosts' closed minutes of health values wait for their rollup.
    pub(super) rollups: Rollups,
    /// Paces the line about batches told apart by their samples (see
    /// `flush.rs`): a forging client sends them by the thousand.
    pub(super) checked_by_value_log: LogThrottle,
    /// destination → its forwarding cursor (see `forward.rs`); the lowest
    /// holds the journal back (`Merges::forward_hold`).
    pub(super) cursors: HashMap<String, i64>,
}
