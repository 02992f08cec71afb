//! A paced HTTP scraper standing in for Prometheus, so node_exporter can be
//! measured the way it is used: one scrape per interval on a kept-alive
//! connection, asking for gzip like Prometheus does.
//!
//! Each scrape is written as one line, `UNIX_MS BYTES` (BYTES 0 when it
//! failed), so a script can count the scrapes inside a measurement window.
//! Scrapes follow a fixed schedule and a late one is not made up with a
//! burst. Only for loopback exporters: the address is the caller's, and
//! nothing is sent but GET requests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What Prometheus 2.x sends.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// Largest header line or chunk-size line accepted.
const MAX_LINE_BYTES: usize = 8192;

/// One kept-alive connection to the exporter.
struct Conn {
    reader: BufReader<TcpStream>,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn read_line(r: &mut BufReader<TcpStream>, line: &mut String) -> io::Result<()> {
    line.clear();
    let n = r.by_ref().take(MAX_LINE_BYTES as u64).read_line(line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the exporter closed the connection",
        ));
    }
    Ok(())
}

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// One GET; returns the body's size on the wire.
    fn get(&mut self, host: &str, path: &str) -> io::Result<u64> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {ACCEPT}\r\nAccept-Encoding: gzip\r\nUser-Agent: monitor-loadgen\r\n\r\n"
        );
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        read_line(&mut self.reader, &mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(bad(format!("status line '{}'", line.trim_end())));
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        loop {
            read_line(&mut self.reader, &mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(
                        value
                            .parse()
                            .map_err(|_| bad(format!("Content-Length '{value}'")))?,
                    );
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                }
            }
        }
        match (chunked, length) {
            (true, _) => self.read_chunked(&mut line),
            (false, Some(n)) => self.skip(n).map(|()| n),
            (false, None) => Err(bad("neither Content-Length nor chunked".to_owned())),
        }
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut self.reader.by_ref().take(n), &mut io::sink())?;
        if copied < n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body cut short",
            ));
        }
        Ok(())
    }

    fn read_chunked(&mut self, line: &mut String) -> io::Result<u64> {
        let mut total = 0;
        loop {
            read_line(&mut self.reader, line)?;
            let size_text = line.trim_end().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| bad(format!("chunk size '{size_text}'")))?;
            if size == 0 {
                // Trailers (none expected), then the empty line.
                loop {
                    read_line(&mut self.reader, line)?;
                    if line.trim_end().is_empty() {
                        return Ok(total);
                    }
                }
            }
            self.skip(size)?;
            total += size;
            read_line(&mut self.reader, line)?;
        }
    }
}

/// Scrapes `http://ADDR/PATH` every `interval`, `count` times (or until
/// killed), writing one line per scrape to `out`. Returns how many
/// scrapes failed. A failed scrape drops the connection; the next opens
/// a new one.
pub fn run(
    addr: SocketAddr,
    path: &str,
    interval: Duration,
    count: Option<u64>,
    out: &mut dyn Write,
) -> io::Result<u64> {
    let host = addr.to_string();
    let timeout = interval.max(Duration::from_secs(1)) * 5;
    let mut conn: Option<Conn> = None;
    let mut next = Instant::now();
    let mut done = 0u64;
    let mut failed = 0u64;
    loop {
        let result = match conn.as_mut() {
            Some(c) => c.get(&host, path),
            None => Conn::open(addr, timeout).and_then(|mut c| {
                let r = c.get(&host, path);
                conn = Some(c);
                r
            }),
        };
        let bytes = match result {
            Ok(n) => n,
            Err(e) => {
                conn = None;
                failed += 1;
                eprintln!("scrape {addr}{path}: {e}");
                0
            }
        };
        writeln!(out, "{} {bytes}", monitor::time::now_unix_ms())?;
        out.flush()?;
        done += 1;
        if count.is_some_and(|c| done >= c) {
            break;
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now + interval;
        }
        std::thread::sleep(next - now);
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection HTTP server on loopback that answers every request
    /// with `response` and counts the requests.
    fn serve(
        response: &'static [u8],
        requests: usize,
    ) -> (SocketAddr, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut seen = 0;
            let mut line = String::new();
            while seen < requests {
                line.clear();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                if line == "\r\n" {
                    seen += 1;
                    writer.write_all(response).unwrap();
                }
            }
            seen
        });
        (addr, handle)
    }

    fn check(response: &'static [u8], expected_bytes: u64) {
        let (addr, server) = serve(response, 3);
        let mut out = Vec::new();
        let failed = run(
            addr,
            "/metrics",
            Duration::from_millis(10),
            Some(3),
            &mut out,
        )
        .unwrap();
        assert_eq!(failed, 0);
        assert_eq!(
            server.join().unwrap(),
            3,
            "three requests on one connection"
        );
        let text = String::from_utf8(out).unwrap();
        let sizes: Vec<u64> = text
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(sizes, vec![expected_bytes; 3]);
    }

    #[test]
    fn content_length_body() {
        check(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 5);
    }

    #[test]
    fn chunked_body() {
        check(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnode\r\n9;x=1\r\n_exporter\r\n0\r\n\r\n",
            13,
        );
    }

    #[test]
    fn error_status_counts_as_failed() {
        let (addr, _server) = serve(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", 1);
        let mut out = Vec::new();
        let failed = run(
            addr,
            "/metrics",
            Duration::from_millis(10),
            Some(1),
            &mut out,
        )
        .unwrap();
        assert_eq!(failed, 1);
        assert!(String::from_utf8(out).unwrap().ends_with(" 0\n"));
    }
}
