//! `monitorctl dashboard`: asks the server for a one-time login URL for its
//! web dashboard (the operator's credential vouches for the request) and
//! prints it, one line on stdout, so `xdg-open "$(monitorctl dashboard)"`
//! works; how long it lasts goes to stderr. The URL is a secret for 60
//! seconds: it is printed, never logged.

use monitor::pb;
use monitor::text::Escaped;

use crate::connect::Client;
use crate::error::CtlError;
use crate::term;

pub async fn dashboard(client: &mut Client) -> Result<(), CtlError> {
    let answer = client
        .dashboard_login(pb::DashboardLoginRequest {})
        .await?
        .into_inner();
    // The server's string, escaped like any other before the terminal.
    let line = format!("{}\n", Escaped::capped(&answer.url));
    term::write(term::Stream::Stdout, &line)?;
    let note = if answer.expires_unix_ms > 0 {
        format!(
            "open it in a browser before {} (it works once); the server's certificate is \
             signed by its own CA (tls/ca.pem beside its database)\n",
            monitor::time::Rfc3339(answer.expires_unix_ms)
        )
    } else {
        "the server runs with --insecure: the dashboard is open to anyone who reaches it\n"
            .to_owned()
    };
    Ok(term::write(term::Stream::Stderr, &note)?)
}
