//! `monitorctl exec` (run a command on hosts, print their output as it
//! comes, then one result line per host) and `monitorctl cancel`.
//!
//! The command's id arrives in the first event (`Started`); Ctrl-C cancels
//! the command on every host, a second Ctrl-C quits at once. Output goes
//! through [`LineBuffers`]: prefixed, escaped, bounded. Nothing here keeps
//! a list that grows with the events: results are only counted.

use monitor::pb;
use monitor::pb::exec_event::Kind;
use monitor::text::Escaped;

use crate::args::{ExecConfig, Targets};
use crate::connect::Client;
use crate::error::CtlError;
use crate::lines::LineBuffers;
use crate::outcome;
use crate::term::{self, Stream};

/// How many hosts answered, and how many of those failed.
#[derive(Debug, Default)]
struct Tally {
    hosts: u64,
    failed: u64,
}

/// A note for the operator on stderr.
fn note(text: std::fmt::Arguments<'_>) -> Result<(), CtlError> {
    Ok(term::write(Stream::Stderr, &format!("{text}\n"))?)
}

/// Runs `e` on its hosts, with the operator's signature `signed` (the
/// server refuses anything but `ping` and `info` without one).
pub async fn exec(
    client: &mut Client,
    e: ExecConfig,
    signed: Option<pb::SignedCommand>,
) -> Result<(), CtlError> {
    let (hosts, all) = match e.targets {
        Targets::Hosts(hosts) => (hosts, false),
        Targets::All => (Vec::new(), true),
    };
    let mut stream = client
        .exec(pb::ExecRequest {
            hosts,
            all,
            argv: e.argv,
            timeout_ms: e.timeout_ms,
            signed,
        })
        .await?
        .into_inner();
    let mut id = String::new();
    let mut lines = LineBuffers::default();
    let mut tally = Tally::default();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut cancelled = false;
    loop {
        let event = tokio::select! {
            ev = stream.message() => ev?,
            _ = &mut ctrl_c => {
                if cancelled {
                    return Err(CtlError::Interrupted);
                }
                cancelled = true;
                note(format_args!(
                    "cancelling {} (Ctrl-C again to quit at once)",
                    Escaped::capped(&id)
                ))?;
                // The hosts' results say whether the cancel arrived.
                let _ = client.cancel(pb::CancelRequest { command_id: id.clone() }).await;
                ctrl_c.set(tokio::signal::ctrl_c());
                continue;
            }
        };
        let Some(ev) = event else { break };
        match ev.kind {
            Some(Kind::Started(_)) => {
                id = ev.command_id;
                note(format_args!("command {}", Escaped::capped(&id)))?;
            }
            Some(Kind::Output(o)) => {
                let stream = Stream::of_output(o.stream);
                lines.push(&ev.hostname, stream, &o.data, &mut term::write)?;
            }
            Some(Kind::Finished(f)) => {
                lines.flush(&ev.hostname, &mut term::write)?;
                let (ok, text) = outcome::result_text(&f);
                note(format_args!("{}: {text}", Escaped::capped(&ev.hostname)))?;
                tally.hosts += 1;
                tally.failed += u64::from(!ok);
            }
            Some(Kind::Rejected(_) | Kind::Accepted(_)) | None => {}
        }
    }
    // Output of a host whose result never came is still shown.
    lines.flush_all(&mut term::write)?;
    if tally.hosts > 1 {
        note(format_args!(
            "{} hosts: {} ok, {} failed",
            tally.hosts,
            tally.hosts - tally.failed,
            tally.failed
        ))?;
    }
    if tally.failed > 0 || tally.hosts == 0 {
        Err(CtlError::Reported)
    } else {
        Ok(())
    }
}

pub async fn cancel(client: &mut Client, id: String) -> Result<(), CtlError> {
    let resp = client
        .cancel(pb::CancelRequest {
            command_id: id.clone(),
        })
        .await?
        .into_inner();
    let hosts: Vec<String> = resp
        .hosts
        .iter()
        .map(|h| Escaped::capped(h).to_string())
        .collect();
    let text = format!(
        "cancel of {} sent to {} hosts: {}\n",
        Escaped::capped(&id),
        hosts.len(),
        hosts.join(", ")
    );
    Ok(term::print_out(text.as_bytes())?)
}
