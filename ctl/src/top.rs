//! `monitorctl top`: the hosts table, redrawn every `--interval` until
//! Ctrl-C (or once, with `--once`).

use std::fmt::Write as _;

use monitor::time::{Rfc3339, format_duration_short};

use crate::args::TopConfig;
use crate::connect::Client;
use crate::error::CtlError;
use crate::{table, term};

/// Moves the cursor home and clears the screen (our own sequence: every
/// server string in the frame is escaped).
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

pub async fn top(client: &mut Client, t: TopConfig) -> Result<(), CtlError> {
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let resp = crate::hosts::all_hosts(client).await?;
        let online = resp.hosts.iter().filter(|h| h.online).count();
        let mut frame = String::new();
        if !t.once {
            frame.push_str(CLEAR_SCREEN);
        }
        let _ = writeln!(
            frame,
            "monitor — {} — {} hosts, {} online (refresh {}, Ctrl-C to quit)\n",
            Rfc3339(resp.server_unix_ms),
            resp.hosts.len(),
            online,
            format_duration_short(t.every)
        );
        frame.push_str(&table::hosts(&resp));
        term::print_out(frame.as_bytes())?;
        if t.once {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(t.every) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}
