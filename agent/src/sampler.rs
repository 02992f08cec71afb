//! The tick loop: read the kernel's counters, build a batch, hand it on.
//!
//! Ticks follow a fixed schedule (start + n × interval) so they do not drift
//! with the tick's own cost; a late tick is not made up with a burst.
//! `set-interval` takes effect from the next tick, `collect-now` adds a tick
//! at once. The loop never awaits anything but its timer and those two
//! signals, so a slow server or a long command never delays sampling.

use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use monitor::batch::{MetricValues, TickBatch};
use tokio::time::Instant;

use crate::collector::{Collector, Readings};
use crate::state::Shared;

/// Where batches go.
pub enum Sink {
    /// Into the send buffer (normal operation).
    Buffer,
    /// As JSON lines on stdout (`--stdout`).
    Stdout,
}

/// Runs ticks until `count` ticks were taken (or forever).
pub async fn run(shared: Rc<Shared>, mut collector: Collector, sink: Sink, count: Option<u64>) {
    let mut interval_rx = shared.interval.subscribe();
    let mut interval = *interval_rx.borrow_and_update();
    let mut next = Instant::now();
    let mut seq = 0u64;
    let mut stdout_line = String::with_capacity(512);
    loop {
        let now = std::time::Instant::now();
        let readings = collector.sample(now);
        shared.last_tick.set(Some(now));
        shared
            .parse_errors_total
            .set(collector.parse_errors_total());
        seq += 1;
        let batch = TickBatch {
            boot_id: shared.identity.boot_id,
            seq,
            time_unix_ms: monitor::time::now_unix_ms(),
            values: values_of(&readings),
        };
        match sink {
            Sink::Buffer => {
                let dropped = shared.buffer.borrow_mut().push(batch);
                if let Some(d) = dropped {
                    log::debug!("buffer full: dropped batch {}", d.seq);
                }
                shared.with_spool(|spool, buffer| spool.append(&batch, buffer.iter()));
                shared.batch_ready.notify_one();
            }
            Sink::Stdout => {
                stdout_line.clear();
                write_json_lines(&mut stdout_line, &shared.identity.hostname, &batch);
                let mut out = std::io::stdout().lock();
                if let Err(e) = out
                    .write_all(stdout_line.as_bytes())
                    .and_then(|()| out.flush())
                {
                    // Stdout closed (e.g. piped into `head`): nothing left to do.
                    log::debug!("stdout: {e}");
                    return;
                }
            }
        }
        if count.is_some_and(|c| seq >= c) {
            return;
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            // Late (suspended, or the machine is overloaded): skip the
            // missed ticks rather than bursting.
            next = now + interval;
        }
        // Wait for the next tick; an interval change re-plans the wait.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                () = shared.collect_now.notified() => {
                    next = Instant::now();
                    break;
                }
                changed = interval_rx.changed() => {
                    if changed.is_err() {
                        // Cannot happen (the sender lives in `shared`, which
                        // we hold); never spin on a closed channel anyway.
                        tokio::time::sleep_until(next).await;
                        break;
                    }
                    let new_interval = *interval_rx.borrow_and_update();
                    log::info!("interval changed to {}", fmt_secs(new_interval));
                    // The tick already planned moves to last tick + new interval.
                    next = next - interval + new_interval;
                    interval = new_interval;
                }
            }
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The values the collector produced, in wire order.
pub fn values_of(r: &Readings) -> MetricValues {
    r.iter().collect()
}

/// Appends one JSON object per sample, one per line, in the shape monitorctl
/// prints: `{"time":"…","hostname":"…","metric":"…","value":…}`.
pub fn write_json_lines(out: &mut String, hostname: &str, batch: &TickBatch) {
    use std::fmt::Write as _;
    for (metric, value) in batch.values.iter() {
        // Hostnames are validated to [A-Za-z0-9._-], so no escaping is needed.
        let _ = writeln!(
            out,
            "{{\"time\":\"{}\",\"hostname\":\"{}\",\"metric\":\"{}\",\"value\":{}}}",
            monitor::time::Rfc3339(batch.time_unix_ms),
            hostname,
            metric.name(),
            JsonNumber(value)
        );
    }
}

/// Formats a finite f64 as a JSON number (rounded to 3 decimals).
struct JsonNumber(f64);

impl std::fmt::Display for JsonNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_finite() {
            let rounded = (self.0 * 1000.0).round() / 1000.0;
            write!(f, "{rounded}")
        } else {
            f.write_str("null")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor::metric::Metric;

    #[test]
    fn json_lines() {
        let mut values = MetricValues::default();
        values.set(Metric::CpuPercent, 12.345_67);
        values.set(Metric::NetInKbps, 0.0);
        let batch = TickBatch {
            boot_id: 1,
            seq: 1,
            time_unix_ms: 1_795_608_000_123,
            values,
        };
        let mut out = String::new();
        write_json_lines(&mut out, "pi-1", &batch);
        assert_eq!(
            out,
            "{\"time\":\"2026-11-25T12:00:00.123Z\",\"hostname\":\"pi-1\",\"metric\":\"cpu_percent\",\"value\":12.346}\n\
             {\"time\":\"2026-11-25T12:00:00.123Z\",\"hostname\":\"pi-1\",\"metric\":\"net_in_kbps\",\"value\":0}\n"
        );
    }
}
