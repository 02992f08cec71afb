//! Prometheus remote-write 1.0's wire messages (`prometheus.WriteRequest`
//! of prometheus/prompb/remote.proto and types.proto), the few fields a
//! sender needs, derived by hand with prost: the project's own contract
//! stays `proto/monitor.proto`, and this one is Prometheus'.
//!
//! [`encode`] turns stored batches into one request body: protobuf, then
//! snappy block compression, as receivers expect with
//! `Content-Encoding: snappy`. Series are grouped per (metric, host) with
//! their samples in time order, as Prometheus requires within a request.
//! Only this module (and the forwarder's sending half) sees these types.

use std::collections::BTreeMap;

use prost::Message;

use crate::exported::{self, HOSTNAME_LABEL};
use crate::store::ForwardRow;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: labels sorted by name, `__name__` first.
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: timestamp in ms since the Unix epoch.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// A series' extra label beside `hostname` (a health metric's device or
/// flag), if any.
type Extra<'a> = crate::exported::HealthLabel<'a>;

/// The request holding every sample of `rows`, in exported names and
/// units, one series per (metric, host, device or flag), each in time
/// order; health values shaped as `/metrics` shapes them
/// (`exported::HEALTH_FAMILIES`).
pub fn write_request(rows: &[ForwardRow]) -> WriteRequest {
    let mut series: BTreeMap<(&'static str, &str, Extra<'_>), Vec<Sample>> = BTreeMap::new();
    for row in rows {
        for s in &row.samples {
            let name = exported::exported(s.metric).name;
            series
                .entry((name, row.hostname.as_str(), None))
                .or_default()
                .push(Sample {
                    value: exported::value(s.metric, s.value),
                    timestamp: s.time_unix_ms,
                });
        }
        for h in &row.health {
            for family in exported::health_families(h.metric) {
                for (extra, value) in family.samples(&h.device, h.value) {
                    series
                        .entry((family.name, row.hostname.as_str(), extra))
                        .or_default()
                        .push(Sample {
                            value,
                            timestamp: h.time_unix_ms,
                        });
                }
            }
        }
    }
    WriteRequest {
        timeseries: series
            .into_iter()
            .map(|((name, host, extra), mut samples)| {
                // Stable: the commit order stays among equal times (which
                // the store's one-value rule makes equal samples anyway).
                samples.sort_by_key(|s| s.timestamp);
                let label = |name: &str, value: &str| Label {
                    name: name.into(),
                    value: value.into(),
                };
                let mut labels = vec![label(HOSTNAME_LABEL, host)];
                labels.extend(extra.map(|(n, v)| label(n, v)));
                // Sorted by name, `__name__` first (it sorts first anyway).
                labels.sort_by(|a, b| a.name.cmp(&b.name));
                labels.insert(0, label("__name__", name));
                TimeSeries { labels, samples }
            })
            .collect(),
    }
}

/// A request body: `rows` as a snappy-compressed `WriteRequest`.
pub fn encode(rows: &[ForwardRow]) -> Result<Vec<u8>, snap::Error> {
    let pb = write_request(rows).encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&pb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredSample;
    use monitor::metric::Metric;

    fn row(id: i64, host: &str, samples: &[(i64, Metric, f64)]) -> ForwardRow {
        ForwardRow {
            journal_id: id,
            hostname: host.into(),
            received_unix_ms: 0,
            health: Vec::new(),
            samples: samples
                .iter()
                .map(|&(time_unix_ms, metric, value)| StoredSample {
                    time_unix_ms,
                    metric,
                    value,
                })
                .collect(),
        }
    }

    #[test]
    fn series_per_metric_and_host_in_time_order_and_a_round_trip() {
        let rows = [
            row(1, "b", &[(2000, Metric::CpuPercent, 50.0)]),
            row(2, "a", &[(1000, Metric::DiskReadKbps, 2.0)]),
            row(3, "b", &[(1000, Metric::CpuPercent, 25.0)]),
        ];
        let body = encode(&rows).unwrap();
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req, write_request(&rows));
        assert_eq!(req.timeseries.len(), 2);
        let cpu = req
            .timeseries
            .iter()
            .find(|t| t.labels[0].value == "monitor_host_cpu_ratio")
            .unwrap();
        assert_eq!(
            cpu.labels[1],
            Label {
                name: "hostname".into(),
                value: "b".into()
            }
        );
        let times: Vec<i64> = cpu.samples.iter().map(|s| s.timestamp).collect();
        assert_eq!(times, [1000, 2000]);
        assert_eq!(cpu.samples[0].value, 0.25);
        let disk = req
            .timeseries
            .iter()
            .find(|t| t.labels[0].value == "monitor_host_disk_read_bytes_per_second")
            .unwrap();
        assert_eq!(disk.samples[0].value, 2048.0);
    }

    #[test]
    fn health_values_become_labelled_series_with_sorted_labels() {
        use crate::store::StoredHealth;
        use monitor::health::HealthMetric;
        let mut r = row(1, "pi", &[]);
        let at = |time_unix_ms, metric, device: &str, value| StoredHealth {
            time_unix_ms,
            metric,
            device: device.into(),
            value,
        };
        r.health = vec![
            at(2000, HealthMetric::FsUsedPercent, "/boot", 50.0),
            at(1000, HealthMetric::FsUsedPercent, "/boot", 40.0),
            at(1000, HealthMetric::ThrottledFlags, "", f64::from(0x4_0004)),
        ];
        let req = write_request(&[r]);
        let find = |labels: &[(&str, &str)]| {
            req.timeseries
                .iter()
                .find(|t| {
                    t.labels
                        .iter()
                        .map(|l| (l.name.as_str(), l.value.as_str()))
                        .eq(labels.iter().copied())
                })
                .unwrap_or_else(|| panic!("no series {labels:?} in {req:?}"))
        };
        let fs = find(&[
            ("__name__", "monitor_host_filesystem_used_ratio"),
            ("hostname", "pi"),
            ("mountpoint", "/boot"),
        ]);
        let got: Vec<(i64, f64)> = fs.samples.iter().map(|s| (s.timestamp, s.value)).collect();
        assert_eq!(got, [(1000, 0.4), (2000, 0.5)]);
        let throttled = find(&[
            ("__name__", "monitor_host_throttled"),
            ("flag", "throttled"),
            ("hostname", "pi"),
        ]);
        assert_eq!(throttled.samples[0].value, 1.0);
        let capped = find(&[
            ("__name__", "monitor_host_throttled"),
            ("flag", "arm_frequency_capped"),
            ("hostname", "pi"),
        ]);
        assert_eq!(capped.samples[0].value, 0.0);
        // 1 file system series, 4 flags now, 4 since the agent started.
        assert_eq!(req.timeseries.len(), 9);
    }
}
