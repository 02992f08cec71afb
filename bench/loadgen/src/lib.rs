//! Benchmark tools for monitor, used by `bench/run.sh` (see BENCHMARKS.md):
//!
//! - [`sim`]: simulated agents, each a real gRPC connection with its own
//!   Report and CommandStream, indistinguishable from the agent on the wire;
//! - [`capacity`]: how many of them one server holds at a 1 s interval;
//! - [`storm`]: how fast a fleet is back after the server restarts;
//! - [`cmdlat`]: command round trips and fan-out with a fleet connected;
//! - [`scrape`]: a paced Prometheus-like scraper for node_exporter;
//! - [`procinfo`]: a process's CPU, memory and threads from /proc;
//! - [`tls`]: the operator's credential and one client certificate per
//!   simulated agent, for a server with TLS (the default).
//!
//! These tools measure; they must never talk to anything but loopback, and
//! never leave a process or connection behind when they return.

pub mod admin;
pub mod capacity;
pub mod cmdlat;
pub mod histogram;
pub mod procinfo;
pub mod scrape;
pub mod sim;
pub mod storm;
pub mod tls;

use std::fmt::Display;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// Milliseconds with two decimals, the unit every latency is printed in.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// `key=value` result lines for bench/run.sh, in the order they were put.
#[derive(Debug, Default)]
pub struct Results {
    lines: Vec<String>,
}

impl Results {
    /// Records one value; line breaks in it become spaces so one result is
    /// always one line.
    pub fn put(&mut self, key: &str, value: impl Display) {
        let value = value.to_string().replace(['\n', '\r'], " ");
        self.lines.push(format!("{key}={value}"));
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Appends the lines to `path`.
    pub fn append_to(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Whether `url` is `http://` or `https://` to a loopback address: the
/// only kind of server these tools will load.
pub fn is_loopback_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: bool) {
        assert_eq!(is_loopback_url(url), expected, "{url}");
    }

    #[test]
    fn only_loopback_urls() {
        check("http://127.0.0.1:50051", true);
        check("http://127.0.0.9:1", true);
        check("http://[::1]:50051", true);
        check("http://localhost:50051", true);
        check("http://10.0.0.1:50051", false);
        check("http://example.com:50051", false);
        check("https://127.0.0.1:50051", true);
        check("https://[::1]:50051", true);
        check("https://10.0.0.1:50051", false);
        check("ftp://127.0.0.1:50051", false);
        check("127.0.0.1:50051", false);
    }

    #[test]
    fn results_are_one_line_each() {
        let mut r = Results::default();
        r.put("a.b", 3);
        r.put("why", "two\nlines");
        assert_eq!(r.lines(), ["a.b=3", "why=two lines"]);
    }

    #[test]
    fn milliseconds() {
        assert_eq!(ms(Duration::from_micros(1_234)), "1.23");
        assert_eq!(ms(Duration::from_secs(2)), "2000.00");
    }
}
