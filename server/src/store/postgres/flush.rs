//! One flush: a group of requests in one transaction, answered only after
//! COMMIT. A batch is stored whole, or is a duplicate (its seq is stored
//! already, see `store/dedup.rs`), or is refused whole as a conflict; its
//! run's de-duplication state commits in the same transaction as its
//! samples, so exactly once holds across replicas and restarts.
//!
//! Order inside the transaction: the flush's hosts are inserted if new and
//! their rows locked (sorted by hostname), then their runs (sorted by
//! key): two replicas writing batches of one host take turns, and lock in
//! the same order, so they cannot deadlock on each other (a deadlock with
//! anything else fails the flush, which the writer retries). Then each
//! request in queue order, deciding its answer against what is committed
//! plus what earlier requests of this flush stage; then the staged rows,
//! runs, hosts and latest values in one statement each (multi-row
//! `INSERT ... SELECT FROM unnest`); last, the stored batches' journal
//! rows for remote-write, whose lock is then held only for the COMMIT
//! (see `journal.rs`).
//!
//! Nothing here keeps state between flushes: a failed transaction leaves
//! nothing behind but its error.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_postgres::{Client, Transaction};

use super::error::PostgresError;
use super::journal;
use super::text::pg_text;
use super::trust;
use crate::store::dedup::{Seen, SeqSet};
use crate::store::encoding::{encode_argv, metric_from_id, metric_id, u64_from_sql, u64_to_sql};
use crate::store::error::StoreError;
use crate::store::records::{
    CommandRecord, CommandResultRecord, Conflict, IncomingBatch, SubmitOutcome,
};
use crate::store::requests::{Answer, Request};
use crate::store::ticks::{self, METRICS, TickRow, check_stored, fill_missing};

/// A row of `ticks` as the flush stages it.
#[derive(Clone, Copy)]
struct Staged {
    receive_lag_ms: i64,
    values: [Option<f64>; METRICS],
}

/// A host of the flush: its locked row and what the flush adds.
struct Host {
    host_id: i64,
    /// Newest stored sample time, this flush's stored batches included.
    newest: i64,
    /// Batches of this host the flush stores, and the last one's index.
    stored: i64,
    last: Option<usize>,
}

/// A run of the flush: its locked row and what the flush adds.
struct Run {
    run_id: i64,
    seqs: SeqSet,
    last_seen_unix_ms: i64,
    changed: bool,
}

/// The flush's locked runs by (agent_id, boot_id).
type Runs = HashMap<(String, u64), Run>;

/// What the flush stages for the tables, written after the requests.
#[derive(Default)]
struct Writes {
    ticks: BTreeMap<(i64, i64, i64), Staged>,
    /// (host_id, metric id) → (time, run, value) of the newest value.
    latest: HashMap<(i64, usize), (i64, i64, f64)>,
    /// The stored batches' health values.
    health: super::health::HealthWrites,
    /// Batches whose seq fell where their run's gaps were forgotten, told
    /// apart by their samples (see `store/dedup.rs`).
    checked_by_value: Vec<CheckedByValue>,
    /// The stored batches' journal rows, in queue order (written only if a
    /// remote-write destination has a cursor: see `journal.rs`).
    journal: Vec<journal::Entry>,
}

/// A batch the flush told apart by its samples: (hostname, agent id, seq).
pub(crate) type CheckedByValue = (String, String, u64);

/// What a committed flush did.
pub(crate) struct Flushed {
    /// One per request, in order.
    pub(crate) answers: Vec<Answer>,
    /// How long COMMIT took.
    pub(crate) commit: std::time::Duration,
    pub(crate) checked_by_value: Vec<CheckedByValue>,
}

/// Writes `requests` in one transaction of `client`; returns one answer
/// per request. `horizon_unix_ms`: ticks older than this fall in dropped
/// partitions and are acknowledged without being written.
pub(crate) async fn write(
    client: &mut Client,
    requests: &[Request],
    horizon_unix_ms: i64,
) -> Result<Flushed, tokio_postgres::Error> {
    // Pure work first: a batch that contradicts itself is refused before
    // anything of it, even its host, is written.
    let mut grouped: Vec<Option<Result<Vec<TickRow>, Conflict>>> =
        Vec::with_capacity(requests.len());
    for r in requests {
        grouped.push(match r {
            Request::Batch { batch, .. } => {
                let mut rows = Vec::new();
                Some(
                    ticks::group_samples(&batch.samples, |m| metric_id(m) as usize, &mut rows).map(
                        |dropped| {
                            if dropped.not_finite > 0 {
                                log::warn!(
                                    "store: {} {} seq {}: {} samples are not finite numbers; \
                                     not stored",
                                    batch.hostname,
                                    batch.agent_id,
                                    batch.seq,
                                    dropped.not_finite
                                );
                            }
                            rows
                        },
                    ),
                )
            }
            _ => None,
        });
    }
    let tx = client.transaction().await?;
    let mut hosts = lock_hosts(&tx, requests, &grouped).await?;
    let mut runs = lock_runs(&tx, requests, &grouped).await?;
    let mut writes = Writes::default();
    let mut answers = Vec::with_capacity(requests.len());
    for (index, request) in requests.iter().enumerate() {
        let answer = match request {
            Request::Batch { batch, .. } => {
                let rows = grouped.get_mut(index).and_then(Option::take);
                match rows {
                    Some(Ok(rows)) => Answer::Batch(
                        write_batch(
                            &tx,
                            (index, batch),
                            rows,
                            (&mut hosts, &mut runs),
                            &mut writes,
                        )
                        .await?,
                    ),
                    Some(Err(conflict)) => Answer::Batch(SubmitOutcome::Conflict(conflict)),
                    None => Answer::Failed(StoreError::Closed),
                }
            }
            Request::Command { record, .. } => {
                write_command(&tx, record).await?;
                Answer::Done
            }
            Request::CommandResult { record, .. } => match write_command_result(&tx, record).await?
            {
                true => Answer::Done,
                false => Answer::Failed(StoreError::UnknownCommand(record.command_id.clone())),
            },
            Request::Trust { write, .. } => {
                Answer::Trust(trust::write(&tx, write, monitor::time::now_unix_ms()).await?)
            }
            // The face never queues these for PostgreSQL: its cursors move
            // on the forwarding lock's connection (journal.rs).
            Request::Cursors { .. } => Answer::Failed(StoreError::Unsupported {
                what: "cursor writes through the writer",
                backend: "PostgreSQL",
            }),
            // Handled by the writer: nothing to write.
            Request::Close { .. } => Answer::Done,
            #[cfg(test)]
            _ => Answer::Failed(StoreError::Closed),
        };
        answers.push(answer);
    }
    write_ticks(&tx, &writes, horizon_unix_ms).await?;
    write_runs(&tx, &runs).await?;
    write_hosts(&tx, requests, &hosts).await?;
    write_latest(&tx, &writes, horizon_unix_ms).await?;
    super::health::write(&tx, &writes.health, horizon_unix_ms).await?;
    super::health::roll(&tx, &writes.health, horizon_unix_ms).await?;
    // Last: it may take the lock that orders the replicas' commits.
    journal::append(&tx, &writes.journal).await?;
    let committing = std::time::Instant::now();
    tx.commit().await?;
    Ok(Flushed {
        answers,
        commit: committing.elapsed(),
        checked_by_value: writes.checked_by_value,
    })
}

/// Inserts the flush's new hosts and locks every host row it writes.
async fn lock_hosts(
    tx: &Transaction<'_>,
    requests: &[Request],
    grouped: &[Option<Result<Vec<TickRow>, Conflict>>],
) -> Result<HashMap<String, Host>, tokio_postgres::Error> {
    // The first batch of each host, by hostname (sorted: lock order).
    let mut first: BTreeMap<&str, &IncomingBatch> = BTreeMap::new();
    for (r, g) in requests.iter().zip(grouped) {
        if let (Request::Batch { batch, .. }, Some(Ok(_))) = (r, g) {
            first.entry(batch.hostname.as_str()).or_insert(batch);
        }
    }
    if first.is_empty() {
        return Ok(HashMap::new());
    }
    let names: Vec<&str> = first.keys().copied().collect();
    let agent_ids: Vec<String> = first.values().map(|b| pg_text(&b.agent_id)).collect();
    let versions: Vec<String> = first.values().map(|b| pg_text(&b.agent_version)).collect();
    let peers: Vec<String> = first.values().map(|b| pg_text(&b.peer)).collect();
    let received: Vec<i64> = first.values().map(|b| b.received_unix_ms).collect();
    let offsets: Vec<i64> = first.values().map(|b| b.clock_offset_ms).collect();
    let dropped: Vec<i64> = first
        .values()
        .map(|b| u64_to_sql(b.dropped_batches_total))
        .collect();
    tx.execute(
        "INSERT INTO hosts (hostname, agent_id, agent_version, peer, first_seen_unix_ms,
             last_seen_unix_ms, clock_offset_ms, dropped_batches_total, batches_stored_total,
             newest_sample_unix_ms)
         SELECT n, a, v, p, r, r, o, d, 0, $8
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
             $6::bigint[], $7::bigint[]) AS u(n, a, v, p, r, o, d)
         ORDER BY n
         ON CONFLICT (hostname) DO NOTHING",
        &[
            &names,
            &agent_ids,
            &versions,
            &peers,
            &received,
            &offsets,
            &dropped,
            &i64::MIN,
        ],
    )
    .await?;
    let rows = tx
        .query(
            "SELECT hostname, host_id, newest_sample_unix_ms FROM hosts
             WHERE hostname = ANY($1) ORDER BY hostname FOR UPDATE",
            &[&names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                Host {
                    host_id: r.get(1),
                    newest: r.get(2),
                    stored: 0,
                    last: None,
                },
            )
        })
        .collect())
}

/// Inserts the flush's new runs and locks every run row it writes.
async fn lock_runs(
    tx: &Transaction<'_>,
    requests: &[Request],
    grouped: &[Option<Result<Vec<TickRow>, Conflict>>],
) -> Result<Runs, tokio_postgres::Error> {
    let mut first: BTreeMap<(&str, u64), i64> = BTreeMap::new();
    for (r, g) in requests.iter().zip(grouped) {
        if let (Request::Batch { batch, .. }, Some(Ok(_))) = (r, g) {
            first
                .entry((batch.agent_id.as_str(), batch.boot_id))
                .or_insert(batch.received_unix_ms);
        }
    }
    if first.is_empty() {
        return Ok(HashMap::new());
    }
    let agents: Vec<String> = first.keys().map(|(a, _)| pg_text(a)).collect();
    let boots: Vec<i64> = first.keys().map(|&(_, b)| u64_to_sql(b)).collect();
    let seen: Vec<i64> = first.values().copied().collect();
    tx.execute(
        "INSERT INTO agent_runs (agent_id, boot_id, high_seq, gaps, first_seen_unix_ms,
             last_seen_unix_ms)
         SELECT a, b, 0, ''::bytea, s, s
         FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(a, b, s)
         ORDER BY a, b
         ON CONFLICT (agent_id, boot_id) DO NOTHING",
        &[&agents, &boots, &seen],
    )
    .await?;
    let rows = tx
        .query(
            "SELECT r.agent_id, r.boot_id, r.run_id, r.high_seq, r.gaps, r.last_seen_unix_ms
             FROM agent_runs r
             JOIN unnest($1::text[], $2::bigint[]) AS u(a, b)
                 ON r.agent_id = u.a AND r.boot_id = u.b
             ORDER BY r.agent_id, r.boot_id
             FOR UPDATE OF r",
            &[&agents, &boots],
        )
        .await?;
    let mut runs = HashMap::with_capacity(rows.len());
    for r in rows {
        let run_id: i64 = r.get(2);
        let gaps: &[u8] = r.get(4);
        // A row this server cannot read is treated as empty rather than
        // failing every flush: logged, and its seqs start over.
        let seqs = SeqSet::decode(u64_from_sql(r.get(3)), gaps).unwrap_or_else(|| {
            log::error!("store: agent_runs row {run_id} has an invalid gaps value; reset");
            SeqSet::default()
        });
        runs.insert(
            (r.get::<_, String>(0), u64_from_sql(r.get(1))),
            Run {
                run_id,
                seqs,
                last_seen_unix_ms: r.get(5),
                changed: false,
            },
        );
    }
    Ok(runs)
}

/// Decides one batch (request `index`) against what is committed and what
/// earlier requests staged, and stages it if it is stored.
async fn write_batch(
    tx: &Transaction<'_>,
    (index, batch): (usize, &IncomingBatch),
    mut rows: Vec<TickRow>,
    (hosts, runs): (&mut HashMap<String, Host>, &mut Runs),
    writes: &mut Writes,
) -> Result<SubmitOutcome, tokio_postgres::Error> {
    // Both exist: lock_hosts and lock_runs made every one of the flush.
    let (Some(host), Some(run)) = (
        hosts.get_mut(&batch.hostname),
        runs.get_mut(&(pg_text(&batch.agent_id), batch.boot_id)),
    ) else {
        return Ok(SubmitOutcome::Duplicate);
    };
    let by_value = match run.seqs.seen(batch.seq) {
        Seen::Stored => return Ok(SubmitOutcome::Duplicate),
        Seen::Missing => false,
        Seen::Forgotten => true,
    };
    if by_value {
        writes
            .checked_by_value
            .push((batch.hostname.clone(), batch.agent_id.clone(), batch.seq));
    }
    // A batch told apart by value is checked whatever its times (rows
    // newer than the host's newest cannot be stored yet): its samples
    // already stored must go, so that nothing is stored twice.
    if (by_value || rows.iter().any(|r| r.time_unix_ms <= host.newest))
        && let Err(conflict) = check_conflicts(tx, host, &mut rows, writes).await?
    {
        return Ok(SubmitOutcome::Conflict(conflict));
    }
    if by_value && rows.is_empty() {
        // Every sample is stored already: the batch was.
        return Ok(SubmitOutcome::Duplicate);
    }
    writes.journal.push(journal::Entry {
        host_id: host.host_id,
        received_unix_ms: batch.received_unix_ms,
        record: crate::store::journal_record::encode(&rows, &batch.health),
    });
    run.seqs.insert(batch.seq);
    run.last_seen_unix_ms = run.last_seen_unix_ms.max(batch.received_unix_ms);
    run.changed = true;
    host.stored += 1;
    host.last = Some(index);
    writes.health.stage(host.host_id, &batch.health);
    for row in &rows {
        host.newest = host.newest.max(row.time_unix_ms);
        let key = (host.host_id, row.time_unix_ms, run.run_id);
        let staged = writes.ticks.entry(key).or_insert(Staged {
            receive_lag_ms: batch.received_unix_ms.saturating_sub(row.time_unix_ms),
            values: [None; METRICS],
        });
        staged.values = fill_missing(staged.values, row.values).merged;
        for (m, v) in row.values.iter().enumerate() {
            let Some(value) = *v else { continue };
            let candidate = (row.time_unix_ms, run.run_id, value);
            writes
                .latest
                .entry((host.host_id, m))
                .and_modify(|l| {
                    if (candidate.0, candidate.1) > (l.0, l.1) {
                        *l = candidate;
                    }
                })
                .or_insert(candidate);
        }
    }
    Ok(SubmitOutcome::Stored)
}

/// The conflict rule for rows not newer than the host's newest sample:
/// values already stored at their (host, time) in any run (committed, or
/// staged by this flush) are taken out; a different value is the conflict.
async fn check_conflicts(
    tx: &Transaction<'_>,
    host: &Host,
    rows: &mut Vec<TickRow>,
    writes: &Writes,
) -> Result<Result<(), Conflict>, tokio_postgres::Error> {
    let times: Vec<i64> = rows
        .iter()
        .map(|r| r.time_unix_ms)
        .filter(|&t| t <= host.newest)
        .collect::<BTreeSet<i64>>()
        .into_iter()
        .collect();
    let mut stored: HashMap<i64, Vec<[Option<f64>; METRICS]>> = HashMap::new();
    let found = tx
        .query(
            &format!(
                "SELECT time_unix_ms, {} FROM ticks WHERE host_id = $1 AND time_unix_ms = ANY($2)",
                crate::store::encoding::METRIC_COLUMNS.join(", ")
            ),
            &[&host.host_id, &times],
        )
        .await?;
    for r in found {
        let mut values = [None; METRICS];
        for (i, v) in values.iter_mut().enumerate() {
            *v = r.get(i + 1);
        }
        stored.entry(r.get(0)).or_default().push(values);
    }
    for (&(h, t, _), s) in writes.ticks.range((host.host_id, i64::MIN, i64::MIN)..) {
        if h != host.host_id {
            break;
        }
        if times.binary_search(&t).is_ok() {
            stored.entry(t).or_default().push(s.values);
        }
    }
    for row in rows.iter_mut() {
        let Some(olds) = stored.get(&row.time_unix_ms) else {
            continue;
        };
        if let Err(conflict) = check_stored(row, olds, |i| metric_from_id(i as i64)) {
            return Ok(Err(conflict));
        }
    }
    rows.retain(|r| r.values.iter().any(Option::is_some));
    Ok(Ok(()))
}

async fn write_ticks(
    tx: &Transaction<'_>,
    writes: &Writes,
    horizon_unix_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let live = writes
        .ticks
        .iter()
        .filter(|((_, t, _), _)| *t >= horizon_unix_ms);
    let n = writes.ticks.len();
    let (mut host, mut time, mut run, mut lag) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut columns: [Vec<Option<f64>>; METRICS] = Default::default();
    for (&(h, t, r), s) in live {
        host.push(h);
        time.push(t);
        run.push(r);
        lag.push(s.receive_lag_ms);
        for (c, v) in columns.iter_mut().zip(s.values) {
            c.push(v);
        }
    }
    if host.is_empty() {
        return Ok(());
    }
    let names = crate::store::encoding::METRIC_COLUMNS;
    let casts: Vec<String> = (0..METRICS)
        .map(|i| format!("${}::float8[]", i + 5))
        .collect();
    let fills: Vec<String> = names
        .iter()
        .map(|c| format!("{c} = COALESCE(ticks.{c}, EXCLUDED.{c})"))
        .collect();
    let sql = format!(
        "INSERT INTO ticks (host_id, time_unix_ms, run_id, receive_lag_ms, {})
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], {})
         ON CONFLICT (host_id, time_unix_ms, run_id) DO UPDATE SET {}",
        names.join(", "),
        casts.join(", "),
        fills.join(", ")
    );
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&host, &time, &run, &lag];
    for c in &columns {
        params.push(c);
    }
    tx.execute(&sql, &params).await?;
    Ok(())
}

async fn write_runs(tx: &Transaction<'_>, runs: &Runs) -> Result<(), tokio_postgres::Error> {
    let changed: Vec<&Run> = runs.values().filter(|r| r.changed).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = changed.iter().map(|r| r.run_id).collect();
    let highs: Vec<i64> = changed
        .iter()
        .map(|r| u64_to_sql(r.seqs.high_seq()))
        .collect();
    let gaps: Vec<Vec<u8>> = changed.iter().map(|r| r.seqs.encode_gaps()).collect();
    let seen: Vec<i64> = changed.iter().map(|r| r.last_seen_unix_ms).collect();
    tx.execute(
        "UPDATE agent_runs SET high_seq = u.h, gaps = u.g, last_seen_unix_ms = u.s
         FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bigint[]) AS u(id, h, g, s)
         WHERE agent_runs.run_id = u.id",
        &[&ids, &highs, &gaps, &seen],
    )
    .await?;
    Ok(())
}

/// Each host shows its latest stored batch's agent, version, peer and
/// counters, and counts the batches stored.
async fn write_hosts(
    tx: &Transaction<'_>,
    requests: &[Request],
    hosts: &HashMap<String, Host>,
) -> Result<(), tokio_postgres::Error> {
    let mut ids = Vec::new();
    let (mut agents, mut versions, mut peers) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seen, mut offsets, mut dropped, mut counts, mut newest) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for h in hosts.values() {
        let Some(Request::Batch { batch, .. }) = h.last.and_then(|i| requests.get(i)) else {
            continue;
        };
        ids.push(h.host_id);
        agents.push(pg_text(&batch.agent_id));
        versions.push(pg_text(&batch.agent_version));
        peers.push(pg_text(&batch.peer));
        seen.push(batch.received_unix_ms);
        offsets.push(batch.clock_offset_ms);
        dropped.push(u64_to_sql(batch.dropped_batches_total));
        counts.push(h.stored);
        newest.push(h.newest);
    }
    if ids.is_empty() {
        return Ok(());
    }
    tx.execute(
        "UPDATE hosts SET agent_id = u.a, agent_version = u.v, peer = u.p,
             last_seen_unix_ms = u.s, clock_offset_ms = u.o, dropped_batches_total = u.d,
             batches_stored_total = hosts.batches_stored_total + u.n,
             newest_sample_unix_ms = GREATEST(hosts.newest_sample_unix_ms, u.t)
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
             $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
             AS u(id, a, v, p, s, o, d, n, t)
         WHERE hosts.host_id = u.id",
        &[
            &ids, &agents, &versions, &peers, &seen, &offsets, &dropped, &counts, &newest,
        ],
    )
    .await?;
    Ok(())
}

/// The newest values; one in a dropped partition went with its samples.
async fn write_latest(
    tx: &Transaction<'_>,
    writes: &Writes,
    horizon_unix_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let n = writes.latest.len();
    let (mut host, mut metric, mut time, mut run, mut value) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (&(h, m), &(t, r, v)) in &writes.latest {
        if t < horizon_unix_ms {
            continue;
        }
        host.push(h);
        metric.push(m as i16);
        time.push(t);
        run.push(r);
        value.push(v);
    }
    if host.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO host_latest (host_id, metric_id, time_unix_ms, run_id, value)
         SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::bigint[], $4::bigint[],
             $5::float8[])
         ON CONFLICT (host_id, metric_id) DO UPDATE SET
             time_unix_ms = EXCLUDED.time_unix_ms, run_id = EXCLUDED.run_id,
             value = EXCLUDED.value
         WHERE (EXCLUDED.time_unix_ms, EXCLUDED.run_id)
             > (host_latest.time_unix_ms, host_latest.run_id)",
        &[&host, &metric, &time, &run, &value],
    )
    .await?;
    Ok(())
}

/// Records a command and its targets; recording its id again is a no-op.
async fn write_command(
    tx: &Transaction<'_>,
    c: &CommandRecord,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO commands (command_id, time_unix_ms, argv, operator) VALUES ($1, $2, $3, $4)
         ON CONFLICT (command_id) DO NOTHING",
        &[
            &pg_text(&c.command_id),
            &c.time_unix_ms,
            &encode_argv(&c.argv),
            &pg_text(&c.operator),
        ],
    )
    .await?;
    let targets: Vec<String> = c.targets.iter().map(|t| pg_text(t)).collect();
    let indexes: Vec<i32> = (0..targets.len() as i32).collect();
    tx.execute(
        "INSERT INTO command_results (command_row, hostname, target_index)
         SELECT c.command_row, u.h, u.i
         FROM commands c, unnest($2::text[], $3::int[]) AS u(h, i)
         WHERE c.command_id = $1
         ON CONFLICT (command_row, hostname) DO NOTHING",
        &[&pg_text(&c.command_id), &targets, &indexes],
    )
    .await?;
    Ok(())
}

/// Returns false if the command id was never recorded.
async fn write_command_result(
    tx: &Transaction<'_>,
    r: &CommandResultRecord,
) -> Result<bool, tokio_postgres::Error> {
    // A host that was not a target gets target_index -1: its result is
    // kept, but it does not appear among the command's targets.
    let n = tx
        .execute(
            "INSERT INTO command_results (command_row, hostname, target_index, outcome, exit_code,
                 signal, duration_ms, stdout_bytes, stderr_bytes, message, finished_unix_ms)
             SELECT command_row, $2, -1, $3, $4, $5, $6, $7, $8, $9, $10
             FROM commands WHERE command_id = $1
             ON CONFLICT (command_row, hostname) DO UPDATE SET
                 outcome = EXCLUDED.outcome, exit_code = EXCLUDED.exit_code,
                 signal = EXCLUDED.signal, duration_ms = EXCLUDED.duration_ms,
                 stdout_bytes = EXCLUDED.stdout_bytes, stderr_bytes = EXCLUDED.stderr_bytes,
                 message = EXCLUDED.message, finished_unix_ms = EXCLUDED.finished_unix_ms",
            &[
                &pg_text(&r.command_id),
                &pg_text(&r.hostname),
                &r.finished.outcome.name(),
                &r.finished.exit_code,
                &r.finished.signal,
                &u64_to_sql(r.finished.duration_ms),
                &u64_to_sql(r.finished.stdout_bytes),
                &u64_to_sql(r.finished.stderr_bytes),
                &pg_text(&r.finished.message),
                &r.finished_unix_ms,
            ],
        )
        .await?;
    Ok(n > 0)
}

/// Wraps a flush's error for every request in it.
pub(crate) fn failed(target: &str, e: tokio_postgres::Error) -> PostgresError {
    PostgresError::of("committing a flush", target, e)
}
