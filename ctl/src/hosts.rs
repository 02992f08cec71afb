//! `monitorctl hosts`: every known host, online or not, as a table or one
//! JSON object per line. The server answers in pages ([`all_hosts`] asks
//! for each in turn), so a fleet of any size comes back in bounded
//! messages.

use monitor::pb;

use crate::connect::Client;
use crate::error::CtlError;
use crate::{json, table, term};

/// Hosts asked for per page: the server's largest page.
const PAGE_SIZE: u32 = 2000;
/// Pages asked for at most (40 million hosts): a server that keeps
/// answering with more is broken, and the loop must end.
const MAX_PAGES: usize = 20_000;

/// Every host the server knows, page after page, as one answer (the
/// server's clock from the last page). A server that does not page (older
/// than paging) answers everything at once with no next page.
pub async fn all_hosts(client: &mut Client) -> Result<pb::ListHostsResponse, CtlError> {
    let mut all = pb::ListHostsResponse::default();
    let mut token = String::new();
    for _ in 0..MAX_PAGES {
        let page = client
            .list_hosts(pb::ListHostsRequest {
                page_size: PAGE_SIZE,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        all.hosts.extend(page.hosts);
        all.server_unix_ms = page.server_unix_ms;
        // Tokens are hostnames, each page after the last: one that does
        // not move forward would repeat forever.
        if page.next_page_token.is_empty() || page.next_page_token <= token {
            return Ok(all);
        }
        token = page.next_page_token;
    }
    Ok(all)
}

pub async fn hosts(client: &mut Client, json: bool) -> Result<(), CtlError> {
    let resp = all_hosts(client).await?;
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
