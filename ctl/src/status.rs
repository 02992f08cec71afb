//! `monitorctl status`: the server's own state (version, uptime, store
//! queue, ingest counters, remote-write destinations), as lines of text or
//! one JSON object. Every string from the server is escaped.

use monitor::pb;
use monitor::text::Escaped;

use crate::connect::Client;
use crate::error::CtlError;
use crate::{json, term};

pub async fn status(client: &mut Client, json: bool) -> Result<(), CtlError> {
    let s = client.status(pb::StatusRequest {}).await?.into_inner();
    let mut out = Vec::new();
    if json {
        json::status(&mut out, &s)?;
    } else {
        out.extend_from_slice(text(&s).as_bytes());
    }
    Ok(term::print_out(&out)?)
}

/// The human form.
pub fn text(s: &pb::StatusResponse) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let uptime_s = (s.server_unix_ms - s.started_unix_ms).max(0) / 1000;
    let _ = writeln!(t, "version           {}", Escaped::capped(&s.version));
    let _ = writeln!(
        t,
        "up                {}d {:02}:{:02}:{:02} (since {})",
        uptime_s / 86_400,
        uptime_s / 3600 % 24,
        uptime_s / 60 % 60,
        uptime_s % 60,
        monitor::time::Rfc3339(s.started_unix_ms)
    );
    let _ = writeln!(
        t,
        "agents connected  {} of {} hosts known",
        s.agents_connected, s.hosts_known
    );
    let _ = writeln!(t, "store queue       {} requests", s.store_queued);
    let _ = writeln!(
        t,
        "ingested          {} batches, {} samples since start",
        s.batches_ingested, s.samples_ingested
    );
    let http = if s.http_listen.is_empty() {
        "off".to_owned()
    } else {
        format!("{}/metrics", Escaped::capped(&s.http_listen))
    };
    let _ = writeln!(t, "http listener     {http}");
    if s.remote_write.is_empty() {
        let _ = writeln!(t, "remote-write      none");
    }
    for r in &s.remote_write {
        let _ = writeln!(
            t,
            "remote-write      {}: lag {:.1}s, sent {}, failed (retried) {}, dropped {} \
             (refused {}, too old {})",
            Escaped::capped(&r.url),
            r.lag_seconds,
            r.sent_samples,
            r.failed_samples,
            r.dropped_samples,
            r.refused_samples,
            r.too_old_samples
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_and_shows_every_destination() {
        let s = pb::StatusResponse {
            version: "0.1.0".into(),
            started_unix_ms: 1_000,
            server_unix_ms: 1_000 + 90_061_000,
            agents_connected: 2,
            hosts_known: 3,
            remote_write: vec![pb::RemoteWriteStatus {
                url: "http://a/w\u{1b}[31m".into(),
                lag_seconds: 1.25,
                sent_samples: 10,
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = text(&s);
        assert!(t.contains("1d 01:01:01"), "{t}");
        assert!(t.contains("2 of 3 hosts known"), "{t}");
        assert!(t.contains("http listener     off"), "{t}");
        assert!(t.contains("lag 1.2s, sent 10"), "{t}");
        assert!(!t.contains('\u{1b}'), "{t}");
    }
}
