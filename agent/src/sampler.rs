//! The tick loop: read the kernel's counters, build a batch, hand it on.
//!
//! Ticks follow a fixed schedule (start + n × interval, kept by the
//! kernel's timer: `ticker.rs`) so they do not drift with the tick's own
//! cost; a late tick is not made up with a burst.
//! `set-interval` takes effect from the next tick, `collect-now` adds a tick
//! at once (and sends it at once, whatever the flush interval). A tick that
//! completes a write (`flush.rs`) puts it on the open stream itself
//! (`outbox.rs`: no await, no task woken but tonic's). The loop never awaits
//! anything but its timer and those two signals, so a slow server or a long
//! command never delays sampling.

use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use crate::collector::{Collector, Readings};
use crate::metrics::AgentMetric;
use crate::state::Shared;
use crate::ticker::{self, Ticker};
use monitor::batch::TickBatch;

/// Where batches go.
pub enum Sink {
    /// Into the send buffer (normal operation).
    Buffer,
    /// As JSON lines on stdout (`--stdout`).
    Stdout,
}

/// Runs ticks on `ticker` until `count` ticks were taken (or forever).
pub async fn run(
    shared: Rc<Shared>,
    mut collector: Collector,
    ticker: Ticker,
    sink: Sink,
    count: Option<u64>,
) {
    let mut interval_rx = shared.interval.subscribe();
    let mut interval = *interval_rx.borrow_and_update();
    // The kernel keeps the schedule (see ticker.rs for why not tokio's
    // timer): the first tick now, the next one an interval later.
    let mut last_tick = ticker::now();
    plan(&ticker, last_tick + interval, interval).await;
    let mut seq = 0u64;
    let mut stdout_line = String::with_capacity(512);
    // Whether this tick is a `collect-now` one: sent at once.
    let mut asked = false;
    loop {
        last_tick = ticker::now();
        let now = std::time::Instant::now();
        let parse_errors_before = collector.parse_errors_total();
        let readings = collector.sample(now);
        shared.last_tick.set(Some(now));
        shared
            .parse_errors_total
            .set(parse_errors_before.saturating_add(u64::from(readings.parse_errors)));
        seq += 1;
        let time_unix_ms = monitor::time::now_unix_ms();
        match sink {
            Sink::Buffer => {
                let batch = TickBatch {
                    boot_id: shared.identity.boot_id,
                    seq,
                    time_unix_ms,
                    values: readings.wire_values(),
                    health: readings.health_values(),
                };
                let dropped = shared.buffer.borrow_mut().push(batch);
                if let Some(d) = dropped {
                    log::debug!("buffer full: dropped batch {}", d.seq);
                }
                shared.with_spool(|spool, buffer| match buffer.newest() {
                    Some(batch) => spool.append(batch, buffer.iter()),
                    None => Ok(()),
                });
                // A tick that completes a write (`flush.rs`) hands it to
                // the connection itself (`outbox.rs`); the others send
                // nothing and wake nothing.
                if std::mem::take(&mut asked) {
                    shared.flush_now.set(true);
                }
                shared.send_due();
            }
            Sink::Stdout => {
                stdout_line.clear();
                write_json_lines(
                    &mut stdout_line,
                    &shared.identity.hostname,
                    time_unix_ms,
                    readings,
                );
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
        // Wait for the next tick; an interval change re-plans the wait.
        loop {
            tokio::select! {
                ticked = ticker.tick() => {
                    if let Err(e) = ticked {
                        // Cannot happen with a timerfd the agent made; if
                        // it did, keep sampling at the interval regardless.
                        log::error!("tick timer: {e}");
                        tokio::time::sleep(interval).await;
                    }
                    break;
                }
                () = shared.collect_now.notified() => {
                    // A tick now, sent at once; the schedule goes on from it.
                    asked = true;
                    plan(&ticker, ticker::now() + interval, interval).await;
                    break;
                }
                changed = interval_rx.changed() => {
                    if changed.is_err() {
                        // Cannot happen (the sender lives in `shared`, which
                        // we hold); never spin on a closed channel anyway.
                        let _ = ticker.tick().await;
                        break;
                    }
                    let new_interval = *interval_rx.borrow_and_update();
                    log::info!("interval changed to {}", fmt_secs(new_interval));
                    // The next tick moves to last tick + new interval.
                    interval = new_interval;
                    plan(&ticker, last_tick + interval, interval).await;
                }
            }
        }
    }
}

/// Schedules the next tick at `first`, then one every `every`. A timer
/// that cannot be set (it cannot fail with the values the sampler passes)
/// is logged and the tick taken after a plain sleep, so sampling goes on.
async fn plan(ticker: &Ticker, first: Duration, every: Duration) {
    if let Err(e) = ticker.schedule(first, every) {
        log::error!("tick timer: {e}");
        tokio::time::sleep(first.saturating_sub(ticker::now())).await;
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Appends one JSON object per sample, one per line, in the shape monitorctl
/// prints: `{"time":"…","hostname":"…","metric":"…","value":…}`, every
/// metric the agent computes (the wire carries a subset). A per-file-system
/// value adds its label, e.g. `"mountpoint":"/boot/firmware"`.
pub fn write_json_lines(out: &mut String, hostname: &str, time_unix_ms: i64, readings: &Readings) {
    use std::fmt::Write as _;
    let time = monitor::time::Rfc3339(time_unix_ms);
    for (metric, value) in readings.iter() {
        // Hostnames are validated to [A-Za-z0-9._-], so no escaping is needed.
        let _ = writeln!(
            out,
            "{{\"time\":\"{time}\",\"hostname\":\"{hostname}\",\"metric\":\"{}\",\"value\":{}}}",
            metric.name(),
            JsonNumber(value)
        );
    }
    let fs = AgentMetric::FsUsedPercent.spec();
    for (mount_point, value) in readings.filesystems() {
        let _ = writeln!(
            out,
            "{{\"time\":\"{time}\",\"hostname\":\"{hostname}\",\"metric\":\"{}\",\"{}\":\"{}\",\"value\":{}}}",
            fs.name,
            fs.label.unwrap_or("label"),
            JsonString(mount_point),
            JsonNumber(*value)
        );
    }
}

/// A string's JSON escaping (without the quotes): mount points can hold
/// any byte but NUL and '/'-separated names.
struct JsonString<'a>(&'a str);

impl std::fmt::Display for JsonString<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x20 || c == '\u{7f}' => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
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

    #[test]
    fn json_lines() {
        let mut readings = Readings::default();
        readings.set(AgentMetric::CpuPercent, Some(12.345_67));
        readings.set(AgentMetric::NetInKbps, Some(0.0));
        readings.set(AgentMetric::TempCelsius, Some(48.686));
        readings.add_filesystem("/".into(), 41.5);
        readings.add_filesystem("/media/a \"b\"\\\n".into(), 99.0);
        let mut out = String::new();
        write_json_lines(&mut out, "pi-1", 1_795_608_000_123, &readings);
        assert_eq!(
            out,
            "{\"time\":\"2026-11-25T12:00:00.123Z\",\"hostname\":\"pi-1\",\"metric\":\"cpu_percent\",\"value\":12.346}\n\
             {\"time\":\"2026-11-25T12:00:00.123Z\",\"hostname\":\"pi-1\",\"metric\":\"net_in_kbps\",\"value\":0}\n\
             {\"time\":\"2026-11-25T12:00:00.123Z\",\"hostname\":\"pi-1\",\"metric\":\"temp_celsius\",\"value\":48.686}\n\
             {\"time\":\"2026-11-25T12:00:00.123Z\",\"hostname\":\"pi-1\",\"metric\":\"fs_used_percent\",\"mountpoint\":\"/\",\"value\":41.5}\n\
             {\"time\":\"2026-11-25T12:00:00.123Z\",\"hostname\":\"pi-1\",\"metric\":\"fs_used_percent\",\"mountpoint\":\"/media/a \\\"b\\\"\\\\\\u000a\",\"value\":99}\n"
        );
    }
}
