//! The time partitions of `ticks`: which partition a sample time falls in,
//! making the ones a flush needs, and dropping the ones retention passed.
//!
//! A partition covers `[k × width, (k + 1) × width)` ms since the Unix
//! epoch and is named `ticks_p{k}` (`ticks_m{k}` for k < 0). The width is
//! chosen once, when the tables are made ([`width_for`]), and kept in
//! `monitor_schema`, so a changed retention never asks for partitions that
//! overlap existing ones. Creating and dropping run in transactions of
//! their own under an advisory lock, so replicas never race on them.
//!
//! Nothing here may drop a partition that holds a sample newer than the
//! retention cutoff.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::schema::LOCK_PARTITIONS;

/// Narrowest and widest partition.
const MIN_WIDTH_MS: i64 = 60_000;
const MAX_WIDTH_MS: i64 = 86_400_000;

/// The partition width for a new database with this retention: an eighth
/// of it (so retention keeps at most an eighth more than asked), between
/// a minute and a day, rounded down to a whole minute.
pub(crate) fn width_for(retention_ms: i64) -> i64 {
    let w = (retention_ms / 8).clamp(MIN_WIDTH_MS, MAX_WIDTH_MS);
    w - w % MIN_WIDTH_MS
}

/// The partition index of `time_unix_ms`.
pub(crate) fn index_of(time_unix_ms: i64, width_ms: i64) -> i64 {
    time_unix_ms.div_euclid(width_ms)
}

/// The table name of partition `k`.
pub(crate) fn name_of(k: i64) -> String {
    if k < 0 {
        format!("ticks_m{}", k.unsigned_abs())
    } else {
        format!("ticks_p{k}")
    }
}

/// The partition index a table name stands for, if it is one of ours.
pub(crate) fn index_of_name(name: &str) -> Option<i64> {
    if let Some(n) = name.strip_prefix("ticks_p") {
        return n.parse().ok().filter(|&k: &i64| k >= 0);
    }
    let n: i64 = name.strip_prefix("ticks_m")?.parse().ok()?;
    (n > 0).then_some(-n)
}

/// Whether every sample of partition `k` is older than `cutoff_unix_ms`.
pub(crate) fn expired(k: i64, width_ms: i64, cutoff_unix_ms: i64) -> bool {
    (k + 1).saturating_mul(width_ms) <= cutoff_unix_ms
}

/// The partitions of `ticks` that exist now.
pub(crate) async fn existing(
    client: &impl tokio_postgres::GenericClient,
) -> Result<BTreeSet<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'ticks'::regclass",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| index_of_name(r.get::<_, &str>(0)))
        .collect())
}

/// Makes partitions `wanted` (those another replica made meanwhile are
/// left alone).
pub(crate) async fn create(
    client: &mut Client,
    wanted: &BTreeSet<i64>,
    width_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_PARTITIONS])
        .await?;
    for &k in wanted {
        let (from, to) = (k.saturating_mul(width_ms), (k + 1).saturating_mul(width_ms));
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF ticks FOR VALUES FROM ({from}) TO ({to})",
            name_of(k)
        ))
        .await?;
    }
    tx.commit().await
}

/// Drops every partition wholly older than `cutoff_unix_ms` and the latest
/// values that were in them; returns the indexes dropped.
pub(crate) async fn drop_expired(
    client: &mut Client,
    width_ms: i64,
    cutoff_unix_ms: i64,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_PARTITIONS])
        .await?;
    // In index order (a BTreeSet): the newest dropped is the last.
    let dropped: Vec<i64> = existing(&tx)
        .await?
        .into_iter()
        .filter(|&k| expired(k, width_ms, cutoff_unix_ms))
        .collect();
    for &k in &dropped {
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", name_of(k)))
            .await?;
    }
    if let Some(&newest) = dropped.last() {
        // A latest value goes with its samples.
        let gone_before = (newest + 1).saturating_mul(width_ms);
        tx.execute(
            "DELETE FROM host_latest WHERE time_unix_ms < $1",
            &[&gone_before],
        )
        .await?;
        // The health values go to the same boundary (deleted by time: see
        // schema.rs); the raw ones and their minute rows by whole minutes,
        // so a minute row never sums up values that are gone.
        let minute = crate::store::health_rollup::minute_of(gone_before);
        for (table, column, before) in [
            ("health", "time_unix_ms", minute),
            ("health_minutes", "minute_unix_ms", minute),
            ("host_health_latest", "time_unix_ms", gone_before),
        ] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE {column} < $1"),
                &[&before],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_an_eighth_of_retention_within_bounds() {
        // A week: 21 h partitions.
        assert_eq!(width_for(7 * 86_400_000), 75_600_000);
        assert_eq!(width_for(30 * 86_400_000), 86_400_000);
        assert_eq!(width_for(3_600_000), 420_000);
        assert_eq!(width_for(60_000), 60_000);
        assert_eq!(width_for(3650 * 86_400_000), 86_400_000);
    }

    #[test]
    fn names_and_indexes_round_trip() {
        for k in [0, 1, 20_000, -1, -7] {
            assert_eq!(index_of_name(&name_of(k)), Some(k), "{k}");
        }
        assert_eq!(index_of_name("ticks"), None);
        assert_eq!(index_of_name("ticks_p-1"), None);
        assert_eq!(index_of_name("ticks_m0"), None);
        assert_eq!(index_of_name("other_p1"), None);
    }

    #[test]
    fn a_partition_expires_only_when_all_of_it_is_older() {
        let w = 1000;
        assert_eq!(index_of(1999, w), 1);
        assert_eq!(index_of(-1, w), -1);
        assert!(expired(1, w, 2000));
        assert!(!expired(1, w, 1999));
        assert!(!expired(2, w, 2500));
    }
}
