//! The change feed remote-write forwards from on PostgreSQL: a `journal`
//! of stored batches in commit order, one cursor per destination in
//! `forward_cursors`, and the session lock that makes ONE replica of the
//! cluster forward to each destination.
//!
//! Why not simply a sequence: with several replicas writing at once, a
//! sequence id is not commit order. Replica A takes id 7, replica B takes
//! id 8 and commits first; a forwarder reading then sees 8, moves its
//! cursor past it, and never reads 7 once A commits. So ids are allocated
//! in commit order:
//! - A flush that stores batches takes [`LOCK_JOURNAL`] (a transaction
//!   advisory lock) as its LAST statement before COMMIT, allocates its
//!   rows' ids from `journal_ids` while holding it, and keeps it until its
//!   transaction ends. So the flushes holding ids follow one another: ids
//!   of one flush are all above those of every flush that held the lock
//!   before it.
//! - PostgreSQL makes a commit visible (ProcArrayEndTransaction) before it
//!   releases the transaction's locks (ResourceOwnerRelease, both in
//!   `CommitTransaction`). So when a reader's snapshot sees id k, the flush
//!   that holds k committed, every flush that took the lock before it had
//!   ended before that, and each id below k is visible in the same
//!   snapshot or belongs to a flush that rolled back (a gap, never filled).
//!   "Every row after my cursor" is therefore exactly what the cursor has
//!   not had, as on SQLite, whose single writer makes AUTOINCREMENT commit
//!   order.
//! - The cost: the flushes of the replicas hold the lock in turn for their
//!   COMMIT (the WAL flush), so replicas' commits no longer overlap while a
//!   destination is configured. Without one, no journal row is written and
//!   the lock is never taken.
//!
//! Whether to journal at all: a flush takes [`LOCK_JOURNAL_GATE`] shared
//! (flushes never wait for each other on it) and then looks whether any
//! cursor exists; registering a new destination takes the gate exclusive,
//! so it waits for the flushes that decided without it and every later
//! flush sees it. A new destination starts at the oldest row still in the
//! journal (as on SQLite), so it misses nothing committed after its
//! registration.
//!
//! One forwarder per destination across the cluster ([`ForwardLock`]): the
//! replica that holds the destination's session advisory lock on a
//! connection of its own forwards; the others try again every second. The
//! lock goes with its connection, so a replica that dies (`kill -9`, its
//! socket closes) hands the destination to the next one that tries, which
//! resumes from the stored cursor (and first sends again the request that
//! was in flight, as after a restart). Cursor writes go through that same
//! connection: a replica that lost it cannot move the cursor any more.
//!
//! Journal rows are deleted below every cursor, and those that arrived
//! longer ago than every destination's maximum lag (plus [`GRACE_MS`]) go
//! regardless: a forwarder would have dropped them as too old anyway. A
//! cursor nobody has moved while rows older than its maximum lag wait (no
//! replica forwards to it any more) is deleted, so it holds nothing.
//!
//! Nothing here may let a cursor pass a row it has not read, or delete a
//! row a cursor has not passed (but for the maximum-lag rule above).

use tokio_postgres::{Client, GenericClient, NoTls, Transaction};

use super::error::PostgresError;
use super::schema::{LOCK_FORWARD_CLASS, LOCK_JOURNAL, LOCK_JOURNAL_GATE};
use super::text::pg_text;
use crate::store::feed;
use crate::store::records::{CursorRecord, ForwardBatch};

/// How much longer than a destination's maximum lag its rows are kept
/// (ms): the forwarder drops them only after its retry sleep (at most
/// 30 s) and the next read.
const GRACE_MS: i64 = 10 * 60_000;

/// One stored batch's journal row, staged by the flush.
pub(crate) struct Entry {
    pub(crate) host_id: i64,
    pub(crate) received_unix_ms: i64,
    /// The journal record (`journal_record::encode`, as SQLite's journal).
    pub(crate) record: Vec<u8>,
}

/// Writes the flush's journal rows, if any destination has a cursor: the
/// last statements of the flush's transaction before COMMIT (see the
/// module doc for why the lock order gives commit order).
pub(crate) async fn append(
    tx: &Transaction<'_>,
    entries: &[Entry],
) -> Result<(), tokio_postgres::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    // Separate statements: each takes its snapshot after the lock before
    // it was granted.
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($1)",
        &[&LOCK_JOURNAL_GATE],
    )
    .await?;
    let wanted: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM forward_cursors)", &[])
        .await?
        .get(0);
    if !wanted {
        return Ok(());
    }
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_JOURNAL])
        .await?;
    let n = i64::try_from(entries.len()).unwrap_or(i64::MAX);
    let hosts: Vec<i64> = entries.iter().map(|e| e.host_id).collect();
    let received: Vec<i64> = entries.iter().map(|e| e.received_unix_ms).collect();
    let records: Vec<&[u8]> = entries.iter().map(|e| e.record.as_slice()).collect();
    // One call takes the flush's n ids: the last is returned, the row of
    // position o (1..n) gets last - n + o.
    tx.execute(
        "WITH ids AS (SELECT setval('journal_ids', nextval('journal_ids') + $1 - 1) AS last)
         INSERT INTO journal (journal_id, host_id, received_unix_ms, record)
         SELECT ids.last - $1 + u.o, u.h, u.r, u.b
         FROM ids, unnest($2::bigint[], $3::bigint[], $4::bytea[]) WITH ORDINALITY AS u(h, r, b, o)",
        &[&n, &hosts, &received, &records],
    )
    .await?;
    Ok(())
}

/// Journal rows after `after` (up to `until`), oldest first, whole, as
/// many as fit in `max_samples` samples (at least one).
pub(crate) async fn read_after(
    c: &impl GenericClient,
    target: &str,
    (after, until): (i64, Option<i64>),
    max_samples: usize,
) -> Result<ForwardBatch, PostgresError> {
    let sql = |e| PostgresError::of("reading the journal", target, e);
    let newest: i64 = c
        .query_one(
            "SELECT COALESCE(max(journal_id), $1) FROM journal",
            &[&after],
        )
        .await
        .map_err(sql)?
        .get(0);
    let mut gather = feed::Gather::new(after, newest, max_samples);
    let rows = c
        .query(
            "SELECT j.journal_id, h.hostname, j.received_unix_ms, j.record
             FROM journal j JOIN hosts h ON h.host_id = j.host_id
             WHERE j.journal_id > $1 AND j.journal_id <= $2
             ORDER BY j.journal_id LIMIT $3",
            &[&after, &until.unwrap_or(i64::MAX), &gather.row_limit()],
        )
        .await
        .map_err(sql)?;
    for r in rows {
        let journal_id: i64 = r.get(0);
        let record: &[u8] = r.get(3);
        let row = feed::forward_row(journal_id, r.get(1), r.get(2), record).ok_or_else(|| {
            PostgresError::BadValue(format!("journal row {journal_id}: invalid record"))
        })?;
        if !gather.push(row) {
            break;
        }
    }
    Ok(gather.finish())
}

/// The cursor rows of `destinations`, each made (at the oldest row still
/// in the journal) if missing, with `max_lag_ms` as its maximum lag. Other
/// destinations' cursors stay: other replicas may forward to them (one
/// nobody forwards to any more is deleted by [`prune`]).
pub(crate) async fn register(
    c: &mut impl GenericClient,
    target: &str,
    destinations: &[String],
    max_lag_ms: i64,
) -> Result<Vec<(i32, CursorRecord)>, PostgresError> {
    let sql = |e| PostgresError::of("registering remote-write destinations", target, e);
    let mut out = Vec::with_capacity(destinations.len());
    for d in destinations {
        if let Some(found) = cursor(c, d).await.map_err(sql)? {
            // Written only when it changed: waiting replicas call this
            // every second.
            c.execute(
                "UPDATE forward_cursors SET max_lag_ms = $2
                 WHERE destination = $1 AND max_lag_ms <> $2",
                &[&pg_text(d), &max_lag_ms],
            )
            .await
            .map_err(sql)?;
            out.push(found);
            continue;
        }
        let tx = c.transaction().await.map_err(sql)?;
        // Waits for the flushes that decided without this destination.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_JOURNAL_GATE])
            .await
            .map_err(sql)?;
        tx.execute(
            "INSERT INTO forward_cursors (destination, journal_id, sending_through, max_lag_ms,
                 updated_unix_ms)
             SELECT $1, COALESCE((SELECT min(journal_id) - 1 FROM journal),
                     (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM journal_ids)),
                 0, $2, $3
             ON CONFLICT (destination) DO NOTHING",
            &[&pg_text(d), &max_lag_ms, &monitor::time::now_unix_ms()],
        )
        .await
        .map_err(sql)?;
        let made = cursor(&tx, d).await.map_err(sql)?;
        tx.commit().await.map_err(sql)?;
        out.push(made.ok_or_else(|| {
            PostgresError::BadValue(format!("forward_cursors lost the row of {d}"))
        })?);
    }
    Ok(out)
}

/// `destination`'s lock id and cursor, if registered.
async fn cursor(
    c: &impl GenericClient,
    destination: &str,
) -> Result<Option<(i32, CursorRecord)>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "SELECT lock_id, journal_id, sending_through FROM forward_cursors
             WHERE destination = $1",
            &[&pg_text(destination)],
        )
        .await?;
    Ok(row.map(|r| {
        (
            r.get(0),
            CursorRecord {
                destination: destination.to_owned(),
                journal_id: r.get(1),
                sending_through: r.get(2),
            },
        )
    }))
}

/// What one [`prune`] deleted.
#[derive(Debug, Default)]
pub(crate) struct Pruned {
    /// Cursors nobody moved while rows older than their lag waited.
    pub(crate) cursors: u64,
    pub(crate) rows: u64,
}

/// Deletes abandoned cursors, then the journal rows every cursor passed
/// or too old for every destination (all of them when there is no
/// cursor). `now_unix_ms` is this server's clock, as the forwarders' lag.
pub(crate) async fn prune(c: &Client, now_unix_ms: i64) -> Result<Pruned, tokio_postgres::Error> {
    let cursors = c
        .execute(
            "DELETE FROM forward_cursors f
             WHERE f.updated_unix_ms < $1::bigint - f.max_lag_ms - $2::bigint
               AND EXISTS (SELECT 1 FROM journal j WHERE j.journal_id > f.journal_id
                   AND j.received_unix_ms < $1::bigint - f.max_lag_ms - $2::bigint)",
            &[&now_unix_ms, &GRACE_MS],
        )
        .await?;
    let rows = c
        .execute(
            "DELETE FROM journal
             WHERE journal_id <= (SELECT COALESCE(min(journal_id), 9223372036854775807)
                                  FROM forward_cursors)
                OR received_unix_ms < $1::bigint - $2::bigint - (SELECT COALESCE(max(max_lag_ms), 0)
                                                 FROM forward_cursors)",
            &[&now_unix_ms, &GRACE_MS],
        )
        .await?;
    Ok(Pruned { cursors, rows })
}

/// A replica's claim to be the one forwarder of a destination: a session
/// advisory lock on a connection of its own (see the module doc).
pub(crate) struct ForwardLock {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) target: String,
    pub(crate) destination: String,
    pub(crate) max_lag_ms: i64,
    client: Option<Client>,
    held: bool,
}

impl ForwardLock {
    pub(crate) fn new(
        pg: tokio_postgres::Config,
        target: String,
        destination: String,
        max_lag_ms: i64,
    ) -> ForwardLock {
        ForwardLock {
            pg,
            target,
            destination,
            max_lag_ms,
            client: None,
            held: false,
        }
    }

    /// Whether this replica forwards to the destination now (as far as it
    /// knows: the lock's connection is open).
    pub(crate) fn is_held(&self) -> bool {
        self.held && self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Tries to become the destination's forwarder: `Some(cursor)` (read
    /// once the lock is held, so it is the last one stored) when this
    /// replica holds the lock, `None` when another replica does.
    pub(crate) async fn take(&mut self) -> Result<Option<CursorRecord>, PostgresError> {
        if !self.is_held() {
            self.held = false;
        }
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let (client, connection) = self
                .pg
                .connect(NoTls)
                .await
                .map_err(|e| PostgresError::of("connecting", &self.target, e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    log::debug!("store: a forwarding lock's connection ended: {e}");
                }
            });
            self.client = Some(client);
        }
        let target = self.target.clone();
        let sql = |e| PostgresError::of("taking a remote-write destination", &target, e);
        let Some(client) = self.client.as_mut() else {
            return Ok(None);
        };
        let destinations = [self.destination.clone()];
        let Some((lock_id, _)) = register(client, &self.target, &destinations, self.max_lag_ms)
            .await?
            .pop()
        else {
            return Ok(None);
        };
        if !self.held {
            self.held = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&LOCK_FORWARD_CLASS, &lock_id],
                )
                .await
                .map_err(sql)?
                .get(0);
        }
        if !self.held {
            return Ok(None);
        }
        Ok(cursor(&*client, &self.destination)
            .await
            .map_err(sql)?
            .map(|(_, c)| c))
    }

    /// Notes the request about to be sent (after the cursor, up to
    /// `through`).
    pub(crate) async fn set_sending(&mut self, through: i64) -> Result<(), PostgresError> {
        self.write(
            "UPDATE forward_cursors SET sending_through = $2, updated_unix_ms = $3
             WHERE destination = $1",
            through,
        )
        .await
    }

    /// Moves the cursor (never back) and clears the request in flight.
    pub(crate) async fn set_cursor(&mut self, journal_id: i64) -> Result<(), PostgresError> {
        self.write(
            "UPDATE forward_cursors SET journal_id = GREATEST(journal_id, $2),
                 sending_through = 0, updated_unix_ms = $3
             WHERE destination = $1",
            journal_id,
        )
        .await
    }

    /// A cursor write on the lock's connection: it fails once the lock is
    /// gone with its connection, so a replica that lost the destination
    /// cannot move its cursor.
    async fn write(&mut self, statement: &str, value: i64) -> Result<(), PostgresError> {
        let client = match self.client.as_ref() {
            Some(c) if self.held && !c.is_closed() => c,
            _ => {
                self.held = false;
                return Err(PostgresError::BadValue(format!(
                    "this replica no longer forwards to {}",
                    self.destination
                )));
            }
        };
        let now = monitor::time::now_unix_ms();
        let n = client
            .execute(statement, &[&pg_text(&self.destination), &value, &now])
            .await
            .map_err(|e| PostgresError::of("moving a remote-write cursor", &self.target, e));
        match n {
            Ok(1) => Ok(()),
            Ok(_) => {
                // Deleted as abandoned: register it again at the next take
                // (closing the connection releases the old row's lock).
                self.held = false;
                self.client = None;
                Err(PostgresError::BadValue(format!(
                    "the cursor of {} is gone from forward_cursors",
                    self.destination
                )))
            }
            Err(e) => {
                if e.is_unreachable() {
                    self.held = false;
                    self.client = None;
                }
                Err(e)
            }
        }
    }
}
