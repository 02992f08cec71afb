//! `monitorctl query`: a host's stored samples, oldest first, printed as
//! they stream in (one chunk at a time, so a long range never sits whole
//! in memory).

use monitor::pb;
use monitor::text::Escaped;
use monitor::time::{format_duration_short, now_unix_ms};

use crate::args::QueryConfig;
use crate::connect::Client;
use crate::error::CtlError;
use crate::{json, table, term};

pub async fn query(client: &mut Client, q: QueryConfig) -> Result<(), CtlError> {
    let since_ms = i64::try_from(q.since.as_millis()).unwrap_or(i64::MAX);
    let mut stream = client
        .query(pb::QueryRequest {
            hostname: q.host.clone(),
            metric: q.metric.unwrap_or_default().to_owned(),
            since_unix_ms: now_unix_ms().saturating_sub(since_ms),
            until_unix_ms: 0,
            limit: q.limit.unwrap_or(0),
        })
        .await?
        .into_inner();
    if q.json {
        let mut out = Vec::with_capacity(64 * 1024);
        while let Some(chunk) = stream.message().await? {
            for s in &chunk.samples {
                json::sample(&mut out, s)?;
            }
            term::print_out(&out)?;
            out.clear();
        }
        return Ok(());
    }
    let mut count = 0usize;
    let mut out = String::with_capacity(64 * 1024);
    table::samples_header(&mut out);
    while let Some(chunk) = stream.message().await? {
        for s in &chunk.samples {
            table::sample_row(&mut out, s);
        }
        count += chunk.samples.len();
        term::print_out(out.as_bytes())?;
        out.clear();
    }
    if count == 0 {
        eprintln!(
            "no samples for {} in the last {}",
            Escaped::capped(&q.host),
            format_duration_short(q.since)
        );
    }
    Ok(())
}
