//! The plain records that cross the store's face: what the ingest, the
//! command router and the operator API hand to the store and get back.
//!
//! They are the project's own types, shared by every backend: no protobuf
//! (the wire stops at `ingest.rs`, `commands.rs` and `admin.rs`) and no
//! database type (those stay inside the backend's folder). This module
//! holds data and its display only: no I/O, no clock.

use std::fmt;

use monitor::command::{Finished, Outcome};
use monitor::health::HealthMetric;
use monitor::metric::Metric;
use monitor::time::Rfc3339;

/// One batch as the ingest hands it over: validated, converted from the
/// wire, sample times already corrected for the agent's clock where needed.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingBatch {
    pub agent_id: String,
    pub hostname: String,
    pub agent_version: String,
    /// New at every start of the agent process.
    pub boot_id: u64,
    /// Unique within (agent_id, boot_id); starts at 1.
    pub seq: u64,
    /// Server wall clock when the batch arrived, ms since the Unix epoch.
    pub received_unix_ms: i64,
    /// Agent clock minus server clock, estimated from this batch, in ms.
    pub clock_offset_ms: i64,
    /// Batches the agent run dropped so far (a running total).
    pub dropped_batches_total: u64,
    /// The agent's address as the server saw it, e.g. "192.0.2.7:40312".
    pub peer: String,
    pub samples: Vec<StoredSample>,
    /// The health values (issue 14): stored beside the six, never in
    /// conflict with them.
    pub health: Vec<StoredHealth>,
}

/// One health value of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredHealth {
    /// Sample time, ms since the Unix epoch (server-corrected if needed).
    pub time_unix_ms: i64,
    pub metric: HealthMetric,
    /// The mount point of a labelled metric; empty for one-per-host ones.
    pub device: String,
    pub value: f64,
}

/// One stored health value as queries return it.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthRow {
    /// Sample time, ms since the Unix epoch.
    pub time_unix_ms: i64,
    pub hostname: String,
    pub metric: HealthMetric,
    pub device: String,
    pub value: f64,
}

impl HealthQuery {
    /// A row this query found: (time, device, value).
    pub(crate) fn row(&self, (time_unix_ms, device, value): (i64, String, f64)) -> HealthRow {
        HealthRow {
            time_unix_ms,
            hostname: self.hostname.clone(),
            metric: self.metric,
            device,
            value,
        }
    }
}

/// Which health values of a host a query wants.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthQuery {
    pub hostname: String,
    pub metric: HealthMetric,
    /// Inclusive lower bound, ms since the Unix epoch.
    pub since_unix_ms: i64,
    /// Exclusive upper bound; `None`: no bound.
    pub until_unix_ms: Option<i64>,
    /// At most this many rows; `None`: all of them.
    pub limit: Option<usize>,
}

/// One measurement of a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StoredSample {
    /// Sample time, ms since the Unix epoch (server-corrected if needed).
    pub time_unix_ms: i64,
    pub metric: Metric,
    pub value: f64,
}

/// What happened to a submitted batch. `Stored` and `Duplicate` mean
/// "acknowledge it"; `Conflict` means "refuse it": it can never be stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SubmitOutcome {
    /// Committed by this submit.
    Stored,
    /// Already committed earlier (a re-send); nothing was written.
    Duplicate,
    /// Refused whole: a sample contradicts a stored one. Nothing of the
    /// batch was stored (a batch is stored whole or refused whole).
    Conflict(Conflict),
}

/// A sample that names a (host, time, metric) already stored with another
/// value, or that its own batch sends twice with two values. Sending the
/// stored value again is not a conflict: it is acknowledged and not
/// stored twice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conflict {
    /// Sample time, ms since the Unix epoch.
    pub time_unix_ms: i64,
    pub metric: Metric,
    /// The value stored (or sent first, when `within_batch`).
    pub stored_value: f64,
    /// The value the refused batch sent.
    pub sent_value: f64,
    /// Both values came in the refused batch itself.
    pub within_batch: bool,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (time, metric) = (Rfc3339(self.time_unix_ms), self.metric);
        if self.within_batch {
            write!(
                f,
                "sample {metric} at {time}: sent twice in the batch, with values {} and {}",
                self.stored_value, self.sent_value
            )
        } else {
            write!(
                f,
                "sample {metric} at {time}: stored value {}, sent value {}",
                self.stored_value, self.sent_value
            )
        }
    }
}

/// Samples of one host in a time range, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleQuery {
    pub hostname: String,
    /// `None`: every metric, merged by time.
    pub metric: Option<Metric>,
    /// Inclusive lower bound, ms since the Unix epoch.
    pub since_unix_ms: i64,
    /// Exclusive upper bound, ms since the Unix epoch; `None`: no bound.
    pub until_unix_ms: Option<i64>,
    /// At most this many rows; `None`: all of them.
    pub limit: Option<usize>,
}

/// Samples of one host in a time range, summarised per time bucket: what
/// a plot can show at its width, without moving every sample (see
/// [`crate::store::Store::series`] for the contract).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesQuery {
    pub hostname: String,
    /// Inclusive lower bound, ms since the Unix epoch: the first bucket
    /// starts here.
    pub since_unix_ms: i64,
    /// Exclusive upper bound, ms since the Unix epoch.
    pub until_unix_ms: i64,
    /// Width of every bucket, ms (at least 1): bucket k holds the samples
    /// with time in `[since + k·step, since + (k+1)·step)`.
    pub step_ms: i64,
}

/// Every host's samples in a time range, summarised per time bucket as
/// [`SeriesQuery`] does for one (see [`crate::store::Store::fleet_series`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSeriesQuery {
    /// Inclusive lower bound, ms since the Unix epoch: the first bucket
    /// starts here.
    pub since_unix_ms: i64,
    /// Exclusive upper bound, ms since the Unix epoch.
    pub until_unix_ms: i64,
    /// Width of every bucket, ms (at least 1).
    pub step_ms: i64,
}

impl FleetSeriesQuery {
    /// The same range and buckets for one host.
    pub fn for_host(&self, hostname: &str) -> SeriesQuery {
        SeriesQuery {
            hostname: hostname.to_owned(),
            since_unix_ms: self.since_unix_ms,
            until_unix_ms: self.until_unix_ms,
            step_ms: self.step_ms,
        }
    }
}

/// One host's series in a [`FleetSeriesQuery`].
#[derive(Clone, Debug, PartialEq)]
pub struct HostSeries {
    pub hostname: String,
    /// In [`Metric::ALL`] order; a series without a sample in the range
    /// has no buckets.
    pub series: Vec<Series>,
}

/// The buckets of one series: of one of the six metrics, or (`K` =
/// [`HealthSeriesKey`]) of a health metric with its label.
#[derive(Clone, Debug, PartialEq)]
pub struct Series<K = Metric> {
    /// What the series is of.
    pub metric: K,
    /// The most frequent time between two consecutive samples of the
    /// series in the range (the agent's interval, as stored), ms; `None`
    /// with fewer than two samples.
    pub interval_ms: Option<i64>,
    /// The buckets holding at least one sample, oldest first.
    pub buckets: Vec<Bucket>,
}

/// What a health series is of: its metric and, for a labelled one, its
/// label: a file system's mount point (`("mountpoint", "/boot")`, as the
/// agent sent it), or one condition of the throttling word (`("flag",
/// "under_voltage")`, its values 0 or 1); see `health_series.rs`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HealthSeriesKey {
    pub metric: HealthMetric,
    pub label: Option<(&'static str, String)>,
}

/// What one bucket of a series holds: enough for min, max and mean, and
/// for telling an outage from a quiet moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// Where the bucket starts, ms since the Unix epoch.
    pub start_unix_ms: i64,
    /// Samples in it (at least 1).
    pub count: u32,
    pub min: f64,
    pub max: f64,
    /// Of the samples' values (mean = sum / count).
    pub sum: f64,
    /// The longest time between two consecutive samples of the series
    /// whose later one is in this bucket, ms (0 for the range's first
    /// sample): more than two intervals means ticks are missing.
    pub max_gap_ms: i64,
}

/// One stored sample as queries return it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSampleRow {
    /// Sample time, ms since the Unix epoch.
    pub time_unix_ms: i64,
    pub hostname: String,
    pub metric: Metric,
    pub value: f64,
    /// Server wall clock when the batch holding it arrived, ms.
    pub received_unix_ms: i64,
}

/// The newest stored value of one metric of a host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatestValue {
    pub metric: Metric,
    /// Sample time, ms since the Unix epoch.
    pub time_unix_ms: i64,
    pub value: f64,
}

/// Everything the store knows about a host, from the batches it stored:
/// the truth for the host's facts (the server's registry only knows which
/// hosts are connected right now, see `registry.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct HostRecord {
    pub hostname: String,
    /// Of the agent that sent the latest stored batch.
    pub agent_id: String,
    pub agent_version: String,
    /// Peer address of the latest stored batch.
    pub peer: String,
    /// Server time of the first stored batch, ms since the Unix epoch.
    pub first_seen_unix_ms: i64,
    /// Server time of the latest stored batch, ms since the Unix epoch.
    pub last_seen_unix_ms: i64,
    /// Agent clock minus server clock at the latest stored batch, ms.
    pub clock_offset_ms: i64,
    /// The running total reported by the latest stored batch (it restarts
    /// at 0 with each agent run).
    pub dropped_batches_total: u64,
    /// Batches of this host ever stored (duplicates not counted).
    pub batches_stored_total: u64,
    /// Batches since the store opened whose seq fell where the store had
    /// forgotten which seqs of their run it holds (see
    /// `sqlite/dedup.rs`): told apart from duplicates by their samples
    /// instead. Not kept in the file.
    pub batches_checked_by_value_total: u64,
    /// Newest value of each metric that has samples, in [`Metric::ALL`]
    /// order.
    pub latest: Vec<LatestValue>,
    /// Newest value of each health metric (and device) the host sent, in
    /// [`HealthMetric::ALL`] order then by device; at most
    /// `MAX_HEALTH_SERIES_PER_HOST` of them (see `latest_health.rs`).
    pub health: Vec<LatestHealth>,
    /// New (metric, device) pairs that met the host's full table of latest
    /// health values (see `latest_health.rs`).
    pub health_series_over_cap_total: u64,
}

/// The newest stored value of one health metric (and device) of a host.
#[derive(Clone, Debug, PartialEq)]
pub struct LatestHealth {
    pub metric: HealthMetric,
    /// The mount point of a labelled metric; empty for one-per-host ones.
    pub device: String,
    /// Sample time, ms since the Unix epoch.
    pub time_unix_ms: i64,
    pub value: f64,
}

/// An operator command, recorded when it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    /// Unique per operator command; recording the same id again is a no-op.
    pub command_id: String,
    /// Server time the operator asked, ms since the Unix epoch.
    pub time_unix_ms: i64,
    /// Every host the command targets.
    pub targets: Vec<String>,
    pub argv: Vec<String>,
    /// The operator who sent it (from their certificate; empty with
    /// `--insecure`).
    pub operator: String,
}

/// How a recorded command ended on one host. Recording a result again for
/// the same (command, host) replaces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandResultRecord {
    pub command_id: String,
    pub hostname: String,
    /// How it ended (the truncation flags are not stored).
    pub finished: Finished,
    /// Server time the result arrived, ms since the Unix epoch.
    pub finished_unix_ms: i64,
}

/// One (command, host) of the history. Result fields are `None`/0/empty
/// while the host has not answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRow {
    pub command_id: String,
    /// When the operator asked, ms since the Unix epoch.
    pub time_unix_ms: i64,
    pub hostname: String,
    pub argv: Vec<String>,
    /// Every host the command targeted, in the operator's order.
    pub targets: Vec<String>,
    /// `None` while the result is pending.
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub message: String,
    /// When the result arrived, ms since the Unix epoch.
    pub finished_unix_ms: Option<i64>,
    /// The operator who sent the command.
    pub operator: String,
}

/// A join token as the store keeps it: its secret only as a hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinTokenRecord {
    /// SHA-256 of the secret the token carries.
    pub secret_sha256: [u8; 32],
    /// The only hostname it enrols.
    pub hostname: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    /// The operator who made it.
    pub created_by: String,
    /// When it was spent; `None` while unused.
    pub used_unix_ms: Option<i64>,
    /// The peer address that spent it.
    pub used_by: Option<String>,
}

/// Why a join token buys nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Used { at_unix_ms: i64, by: String },
    Expired { at_unix_ms: i64 },
    WrongHost { token_hostname: String },
}

impl JoinTokenRecord {
    /// Why this token cannot enrol `hostname` at `now_unix_ms`, if it
    /// cannot.
    pub fn refusal(&self, hostname: &str, now_unix_ms: i64) -> Option<TokenRefusal> {
        if let Some(at) = self.used_unix_ms {
            return Some(TokenRefusal::Used {
                at_unix_ms: at,
                by: self.used_by.clone().unwrap_or_default(),
            });
        }
        if now_unix_ms >= self.expires_unix_ms {
            return Some(TokenRefusal::Expired {
                at_unix_ms: self.expires_unix_ms,
            });
        }
        if self.hostname != hostname {
            return Some(TokenRefusal::WrongHost {
                token_hostname: self.hostname.clone(),
            });
        }
        None
    }
}

/// A change to the trust tables (tokens, certificates), written through
/// the backend's ordered writes like everything else.
#[derive(Clone, Debug)]
pub(crate) enum TrustWrite {
    CreateJoinToken(JoinTokenRecord),
    Redeem {
        secret_sha256: [u8; 32],
        hostname: String,
        peer: String,
        cert: CertificateRecord,
    },
    RecordCertificate(CertificateRecord),
    RegisterSigningKey(SigningKeyRecord),
    Revoke {
        role: String,
        name: String,
        now_unix_ms: i64,
    },
}

/// What a [`TrustWrite`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TrustAnswer {
    Done,
    Refused(TokenRefusal),
    Revoked(u32),
}

/// An operator's public signing key, as registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// Ed25519, 32 bytes.
    pub public_key: [u8; 32],
    pub operator: String,
    pub registered_unix_ms: i64,
    /// When its operator was removed; `None` while good.
    pub revoked_unix_ms: Option<i64>,
}

/// Which replica of a shared store holds a host's command stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub hostname: String,
    pub replica: String,
    /// Whether that replica renewed its lease in time (a dead replica's
    /// sessions stop being live within the lease).
    pub live: bool,
}

/// What one replica asks another about a command, through the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayKind {
    /// Run the command (body: the request for the agent) on `hostname`.
    Run = 1,
    /// Cancel the command on `hostname`.
    Cancel = 2,
    /// What `hostname`'s agent answered (body: its response), for the
    /// replica the operator called.
    Response = 3,
}

/// One message between replicas: kept in the store until its addressee
/// takes it (the store is the truth; a notification only rings the bell).
/// The body is opaque bytes: the store never sees protobuf types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRecord {
    pub kind: RelayKind,
    /// The replica that sent it.
    pub from: String,
    pub hostname: String,
    pub command_id: String,
    pub body: Vec<u8>,
}

/// The certificate authority every replica sharing a store signs with:
/// its private key (PKCS#8 DER) and certificate (DER). Whoever can read
/// the store's `authority` table can sign certificates: the database is
/// as secret as the TLS directory's `ca.key`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorityRecord {
    pub key_der: Vec<u8>,
    pub cert_der: Vec<u8>,
}

impl std::fmt::Debug for AuthorityRecord {
    /// The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthorityRecord(..)")
    }
}

/// A client certificate the server issued: the truth behind the trust
/// table the handshakes read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRecord {
    /// SHA-256 of the certificate's DER.
    pub fingerprint: [u8; 32],
    /// "agent" or "operator".
    pub role: String,
    /// The hostname or operator name it names.
    pub name: String,
    pub issued_unix_ms: i64,
    pub not_after_unix_ms: i64,
    /// When it was revoked; `None` while good.
    pub revoked_unix_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_names_the_sample_and_both_values() {
        let c = Conflict {
            time_unix_ms: 1_700_000_000_250,
            metric: Metric::CpuPercent,
            stored_value: 10.0,
            sent_value: 20.5,
            within_batch: false,
        };
        assert_eq!(
            c.to_string(),
            "sample cpu_percent at 2023-11-14T22:13:20.250Z: stored value 10, sent value 20.5"
        );
        let c = Conflict {
            within_batch: true,
            ..c
        };
        assert_eq!(
            c.to_string(),
            "sample cpu_percent at 2023-11-14T22:13:20.250Z: sent twice in the batch, with \
             values 10 and 20.5"
        );
    }

    fn token(used: Option<(i64, &str)>) -> JoinTokenRecord {
        JoinTokenRecord {
            secret_sha256: [7; 32],
            hostname: "pi-1".into(),
            created_unix_ms: 1_000,
            expires_unix_ms: 2_000,
            created_by: "alice".into(),
            used_unix_ms: used.map(|(at, _)| at),
            used_by: used.map(|(_, by)| by.to_owned()),
        }
    }

    #[test]
    fn a_join_token_enrols_its_own_host_until_the_millisecond_before_it_expires() {
        let t = token(None);
        assert_eq!(t.refusal("pi-1", 1_999), None);
        assert_eq!(
            t.refusal("pi-1", 2_000),
            Some(TokenRefusal::Expired { at_unix_ms: 2_000 })
        );
        assert_eq!(
            t.refusal("pi-2", 1_500),
            Some(TokenRefusal::WrongHost {
                token_hostname: "pi-1".into()
            })
        );
        // Spent is said first, even after the expiry or for another host.
        let spent = Some(TokenRefusal::Used {
            at_unix_ms: 1_200,
            by: "127.0.0.1:4000".into(),
        });
        let t = token(Some((1_200, "127.0.0.1:4000")));
        assert_eq!(t.refusal("pi-1", 1_500), spent);
        assert_eq!(t.refusal("pi-2", 3_000), spent);
    }
}

/// Stored batches in commit order, as a forwarder (remote-write) reads
/// them after its cursor: see [`crate::store::Store::forward_batch`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ForwardBatch {
    /// Whole stored batches, oldest commit first.
    pub rows: Vec<ForwardRow>,
    /// The newest journal id read (the cursor once these are sent); the
    /// cursor asked for when `rows` is empty.
    pub through: i64,
    /// The newest journal id stored so far (for the lag).
    pub newest: i64,
}

/// One stored batch: its host and its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardRow {
    /// Its place in commit order.
    pub journal_id: i64,
    pub hostname: String,
    /// Server time the batch arrived, ms since the Unix epoch.
    pub received_unix_ms: i64,
    /// In the order the batch held them (by sample time, then metric).
    pub samples: Vec<StoredSample>,
    /// The batch's health values, in the order it held them.
    pub health: Vec<StoredHealth>,
}

/// Where a forwarding destination is in the commit order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorRecord {
    /// The destination's name (its URL without credentials).
    pub destination: String,
    /// Every stored batch up to this journal id was sent (or dropped).
    pub journal_id: i64,
    /// A request holding the batches after `journal_id` up to this one
    /// was being sent when the server last stopped (0: none): send exactly
    /// those again first, so a receiver that applies a request whole (as
    /// Prometheus does) has each of them once.
    pub sending_through: i64,
}

/// A change to the forwarding cursors (one writer request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CursorWrite {
    /// These are the destinations now: cursors of others are deleted (they
    /// must not hold the journal), missing ones start at the oldest batch
    /// still in the journal.
    Register(Vec<String>),
    /// `destination` sent (or dropped) everything up to `journal_id`.
    Set {
        destination: String,
        journal_id: i64,
    },
    /// `destination` is about to send the batches after its cursor up to
    /// `through`.
    Sending { destination: String, through: i64 },
}

/// What one committed flush did, for the server's own metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlushStats {
    /// The transaction failed (nothing of it stored; the other fields
    /// are zero but `requests`).
    pub failed: bool,
    /// How long COMMIT took (the fsyncs).
    pub commit: std::time::Duration,
    /// Requests answered by the flush.
    pub requests: usize,
    /// Batches stored (duplicates and conflicts not counted).
    pub batches_stored: usize,
    /// Samples in those batches.
    pub samples_stored: usize,
}

/// Called by the backend after each committed flush, on its writer thread:
/// it must be cheap and never block (count, nothing more). How the server
/// times commits without the store depending on a metrics library.
#[derive(Clone)]
pub struct FlushObserver(pub std::sync::Arc<dyn Fn(&FlushStats) + Send + Sync>);

impl fmt::Debug for FlushObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlushObserver")
    }
}
