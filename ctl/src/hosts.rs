//! `monitorctl hosts`: every known host, online or not, as a table or one
//! JSON object per line.

use monitor::pb;

use crate::connect::Client;
use crate::error::CtlError;
use crate::{json, table, term};

pub async fn hosts(client: &mut Client, json: bool) -> Result<(), CtlError> {
    let resp = client
        .list_hosts(pb::ListHostsRequest {})
        .await?
        .into_inner();
    if json {
        let mut out = Vec::new();
        for h in &resp.hosts {
            json::host(&mut out, h)?;
        }
        return Ok(term::print_out(&out)?);
    }
    if resp.hosts.is_empty() {
        eprintln!("no host has reported yet");
        return Ok(());
    }
    Ok(term::print_out(table::hosts(&resp).as_bytes())?)
}
