//! `monitorctl history`: commands sent, newest first, one row per host
//! with its outcome, as a table or one JSON object per line.

use monitor::pb;

use crate::args::HistoryConfig;
use crate::connect::Client;
use crate::error::CtlError;
use crate::{json, table, term};

pub async fn history(client: &mut Client, h: HistoryConfig) -> Result<(), CtlError> {
    let resp = client
        .history(pb::HistoryRequest {
            hostname: h.host.unwrap_or_default(),
            limit: h.limit.unwrap_or(0),
        })
        .await?
        .into_inner();
    if h.json {
        let mut out = Vec::new();
        for e in &resp.entries {
            json::history(&mut out, e)?;
        }
        return Ok(term::print_out(&out)?);
    }
    Ok(term::print_out(table::history(&resp.entries).as_bytes())?)
}
