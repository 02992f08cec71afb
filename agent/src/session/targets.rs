//! Where the next session connects: the servers `MONITOR_SERVER` names
//! (replicas sharing one store), and, for a server named by a DNS name,
//! each address the name has.
//!
//! Both follow one rule. An agent starts where its hostname's hash points
//! (so a fleet spreads evenly, and one agent comes back to the same place
//! after a restart) and moves on after every session that failed or ended:
//! to the next server in the list and, once back at a name, to that name's
//! next address. A list of URLs behaves as it always did; one name with
//! three addresses behaves as a list of three.
//!
//! A name is resolved again at every connection attempt, so a changed DNS
//! answer is followed without a restart: tokio's `lookup_host` (the system
//! resolver, run on a blocking thread, so the agent's one thread never
//! waits on it) within [`RESOLVE_TIMEOUT`]. The addresses are sorted and
//! de-duplicated, so every agent sees the same list whatever order the
//! resolver gives (round-robin DNS rotates it), and at most
//! [`MAX_ADDRESSES`] are kept.
//!
//! What this must never do: start a lookup while an earlier one is still
//! running (a resolver that hangs would otherwise leave one blocked thread
//! per retry; the running one is awaited again instead), connect to an
//! address the name did not give, or check the server's certificate
//! against the address connected to: TLS verifies the URL's host (SNI and
//! the certificate's name), and requests carry the URL's authority.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use tonic::codegen::http::Uri;
use tonic::transport::Endpoint;

/// Longest a name's lookup is waited for at one attempt.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most addresses of one name used (the rest are ignored): as many as
/// servers a list may name.
pub const MAX_ADDRESSES: usize = crate::config::MAX_SERVERS;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoint for `url` with the connection settings every session
/// uses.
pub fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    let (interval, timeout) = monitor::keepalive::from_env();
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(interval)
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(true))
}

/// The hash of an agent's hostname that spreads a fleet: FNV-1a, stable
/// across builds and platforms (std's hasher is not).
fn spread_of(hostname: &str) -> u64 {
    hostname.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Which of `n` servers the agent named `hostname` tries first.
pub fn first_server(hostname: &str, n: usize) -> usize {
    usize::try_from(spread_of(hostname) % n.max(1) as u64).unwrap_or(0)
}

/// Which of a name's `addresses` (sorted) the agent with hash `spread`
/// uses at its `turn`-th attempt at that name, in a list of `servers`: its
/// own start (the hash's part the server's choice did not use), then each
/// next one.
fn address_index(spread: u64, servers: usize, turn: usize, addresses: usize) -> usize {
    let n = addresses.max(1) as u64;
    let start = (spread / servers.max(1) as u64) % n;
    usize::try_from((start + turn as u64 % n) % n).unwrap_or(0)
}

/// What a lookup answers.
type Answer = io::Result<Vec<SocketAddr>>;
type LookupFuture = Pin<Box<dyn Future<Output = Answer>>>;
/// Starts the lookup of `host:port` (the system's resolver; tests give
/// their own).
type Resolver = Box<dyn Fn(String, u16) -> LookupFuture>;

fn system_resolver() -> Resolver {
    Box::new(|host, port| {
        Box::pin(async move {
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(Iterator::collect)
        })
    })
}

/// One server of the list.
struct Server {
    /// The URL as configured (scheme, host, port).
    uri: Uri,
    /// The URL's host without brackets: the name TLS verifies.
    host: String,
    port: u16,
    /// The host is an IP address: nothing to resolve.
    address: Option<IpAddr>,
    /// How many addresses its last lookup gave (1 for an address).
    known: Cell<usize>,
}

/// A lookup that has not answered yet, kept for the next attempt.
struct Pending {
    server: usize,
    future: LookupFuture,
}

/// What one attempt connects to.
pub struct Target {
    /// The address's endpoint, with the URL's authority as its origin.
    pub endpoint: Endpoint,
    /// The name the server's certificate must carry: the URL's host.
    pub tls_name: String,
}

/// Why an attempt has nowhere to connect (retried after the backoff).
#[derive(Debug)]
pub struct ResolveError {
    pub url: String,
    pub why: String,
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot resolve {}: {}", self.url, self.why)
    }
}

impl std::error::Error for ResolveError {}

pub struct Targets {
    servers: Vec<Server>,
    /// The agent's hostname hash.
    spread: u64,
    /// Attempts counted from the first server: the next one goes to
    /// server `attempt % n`, at that server's turn `attempt / n`.
    attempt: Cell<usize>,
    resolver: Resolver,
    /// [`RESOLVE_TIMEOUT`] (tests: shorter).
    resolve_timeout: Duration,
    pending: RefCell<Option<Pending>>,
    /// What the last attempt connected to, for the log.
    last: RefCell<String>,
}

impl Targets {
    /// The servers `urls` (at least one, each as `config.rs` checked it)
    /// for the agent named `hostname`.
    pub fn new(urls: &[String], hostname: &str) -> Result<Targets, tonic::transport::Error> {
        Targets::with_resolver(urls, hostname, system_resolver())
    }

    fn with_resolver(
        urls: &[String],
        hostname: &str,
        resolver: Resolver,
    ) -> Result<Targets, tonic::transport::Error> {
        let servers = urls
            .iter()
            .map(|url| {
                // Checked as a whole here; the URL is rebuilt per address.
                let uri = endpoint(url)?.uri().clone();
                let host = uri
                    .host()
                    .unwrap_or_default()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let https = uri.scheme_str() == Some("https");
                let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
                Ok(Server {
                    address: host.parse().ok(),
                    host,
                    port,
                    uri,
                    known: Cell::new(1),
                })
            })
            .collect::<Result<Vec<_>, tonic::transport::Error>>()?;
        let spread = spread_of(hostname);
        Ok(Targets {
            attempt: Cell::new(first_server(hostname, servers.len())),
            servers,
            spread,
            resolver,
            resolve_timeout: RESOLVE_TIMEOUT,
            pending: RefCell::new(None),
            last: RefCell::new(String::new()),
        })
    }

    fn current(&self) -> (usize, &Server) {
        let i = self.attempt.get() % self.servers.len().max(1);
        (i, &self.servers[i])
    }

    /// The URL of the server the next attempt goes to.
    pub fn next_url(&self) -> String {
        self.current().1.uri.to_string()
    }

    /// What the last attempt connected to: the URL, and the address when
    /// the URL names a host.
    pub fn last(&self) -> String {
        let last = self.last.borrow();
        if last.is_empty() {
            self.next_url()
        } else {
            last.clone()
        }
    }

    /// After a session failed or ended: move on (next server, or the
    /// name's next address). `false` when there is nowhere else to go.
    pub fn advance(&self) -> bool {
        let (_, server) = self.current();
        let elsewhere = self.servers.len() > 1 || server.known.get() > 1;
        self.attempt.set(self.attempt.get().wrapping_add(1));
        elsewhere
    }

    /// What the next session connects to; for a name, resolved now.
    pub async fn next(&self) -> Result<Target, ResolveError> {
        let (i, server) = self.current();
        let addresses = match server.address {
            Some(ip) => vec![SocketAddr::new(ip, server.port)],
            None => self.resolve(i, server).await?,
        };
        server.known.set(addresses.len());
        let turn = self.attempt.get() / self.servers.len().max(1);
        let address =
            addresses[address_index(self.spread, self.servers.len(), turn, addresses.len())];
        let scheme = server.uri.scheme_str().unwrap_or("https");
        let endpoint = endpoint(&format!("{scheme}://{address}"))
            .map_err(|e| self.error(server, e.to_string()))?
            .origin(server.uri.clone());
        *self.last.borrow_mut() = match server.address {
            Some(_) => server.uri.to_string(),
            None => format!("{} ({address})", server.uri),
        };
        Ok(Target {
            endpoint,
            tls_name: server.host.clone(),
        })
    }

    fn error(&self, server: &Server, why: String) -> ResolveError {
        ResolveError {
            url: server.uri.to_string(),
            why,
        }
    }

    /// `server`'s addresses, sorted, at most [`MAX_ADDRESSES`]: from the
    /// lookup still running since an earlier attempt, or a new one.
    async fn resolve(&self, i: usize, server: &Server) -> Result<Vec<SocketAddr>, ResolveError> {
        let earlier = self.pending.borrow_mut().take();
        let mut lookup = match earlier {
            Some(p) if p.server == i => p,
            Some(mut other) => {
                // Another server's lookup: if it has not answered yet, it
                // is left to finish rather than a second one started.
                if tokio::time::timeout(Duration::ZERO, &mut other.future)
                    .await
                    .is_err()
                {
                    let why = format!(
                        "the lookup of {} started earlier has not answered yet",
                        self.servers[other.server].host
                    );
                    *self.pending.borrow_mut() = Some(other);
                    return Err(self.error(server, why));
                }
                self.start(i, server)
            }
            None => self.start(i, server),
        };
        let answer = match tokio::time::timeout(self.resolve_timeout, &mut lookup.future).await {
            Ok(answer) => answer,
            Err(_) => {
                *self.pending.borrow_mut() = Some(lookup);
                return Err(self.error(
                    server,
                    format!(
                        "no answer within {}",
                        monitor::time::format_duration_short(self.resolve_timeout)
                    ),
                ));
            }
        };
        let mut addresses = answer.map_err(|e| self.error(server, e.to_string()))?;
        addresses.sort_unstable();
        addresses.dedup();
        addresses.truncate(MAX_ADDRESSES);
        if addresses.is_empty() {
            return Err(self.error(server, "the name has no address".into()));
        }
        Ok(addresses)
    }

    fn start(&self, i: usize, server: &Server) -> Pending {
        Pending {
            server: i,
            future: (self.resolver)(server.host.clone(), server.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_fleet_spreads_over_the_servers_and_each_agent_keeps_its_first() {
        assert_eq!(first_server("pi-1", 1), 0);
        assert_eq!(first_server("pi-1", 0), 0);
        // The same name, the same server, every time (a restart comes back).
        assert_eq!(first_server("pi-1", 3), first_server("pi-1", 3));
        let mut per_server = [0usize; 3];
        for i in 0..300 {
            per_server[first_server(&format!("pi-{i}"), 3)] += 1;
        }
        for n in per_server {
            assert!((70..=130).contains(&n), "uneven spread: {per_server:?}");
        }
    }

    #[test]
    fn a_fleet_spreads_over_a_names_addresses_too() {
        // One name with three addresses: as even as a list of three.
        let mut per_address = [0usize; 3];
        for i in 0..300 {
            per_address[address_index(spread_of(&format!("pi-{i}")), 1, 0, 3)] += 1;
        }
        for n in per_address {
            assert!((70..=130).contains(&n), "uneven spread: {per_address:?}");
        }
        // Two names of two addresses each: the four places evenly, the
        // address not tied to the server the hash chose.
        let mut per_place = [[0usize; 2]; 2];
        for i in 0..400 {
            let spread = spread_of(&format!("pi-{i}"));
            let server = first_server(&format!("pi-{i}"), 2);
            per_place[server][address_index(spread, 2, 0, 2)] += 1;
        }
        for n in per_place.iter().flatten() {
            assert!((70..=130).contains(n), "uneven spread: {per_place:?}");
        }
    }

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| (*u).to_owned()).collect()
    }

    /// A resolver answering `addresses` for every name, counting lookups.
    fn fixed(addresses: Vec<SocketAddr>, lookups: Rc<Cell<usize>>) -> Resolver {
        Box::new(move |_, _| {
            lookups.set(lookups.get() + 1);
            let a = addresses.clone();
            Box::pin(async move { Ok(a) })
        })
    }

    fn check_walk(targets: &Targets, expected: &[&str]) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let seen: Vec<String> = expected
            .iter()
            .map(|_| {
                let t = rt.block_on(targets.next()).unwrap();
                let seen = format!("{} {}", t.endpoint.uri(), t.tls_name);
                targets.advance();
                seen
            })
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_list_of_addresses_is_walked_in_turn_from_the_hashs_choice() {
        let hostname = "pi-7";
        let list = urls(&[
            "http://127.0.0.1:1",
            "http://127.0.0.2:2",
            "http://127.0.0.3:3",
        ]);
        let t = Targets::new(&list, hostname).unwrap();
        let first = first_server(hostname, 3);
        let expected: Vec<String> = (0..4)
            .map(|k| {
                let n = (first + k) % 3 + 1;
                format!("http://127.0.0.{n}:{n}/ 127.0.0.{n}")
            })
            .collect();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        check_walk(&t, &expected);
    }

    #[test]
    fn a_name_with_several_addresses_is_walked_like_a_list_and_verified_by_its_name() {
        let lookups = Rc::new(Cell::new(0));
        // Given out of order and twice: sorted and de-duplicated.
        let answer: Vec<SocketAddr> = ["[::1]:50051", "127.0.0.1:50051", "[::1]:50051"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let hostname = "pi-7";
        let t = Targets::with_resolver(
            &urls(&["https://replicas.test:50051"]),
            hostname,
            fixed(answer, Rc::clone(&lookups)),
        )
        .unwrap();
        let v4 = "https://127.0.0.1:50051/ replicas.test";
        let v6 = "https://[::1]:50051/ replicas.test";
        let walk = if address_index(spread_of(hostname), 1, 0, 2) == 0 {
            [v4, v6, v4]
        } else {
            [v6, v4, v6]
        };
        check_walk(&t, &walk);
        // Resolved at every attempt, and the log names the URL and the
        // address.
        assert_eq!(lookups.get(), 3);
        assert!(
            t.last().starts_with("https://replicas.test:50051/ ("),
            "{}",
            t.last()
        );
        assert!(t.advance(), "two addresses: somewhere else to go");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lookup_that_hangs_is_awaited_again_never_started_twice() {
        let lookups = Rc::new(Cell::new(0));
        let counted = Rc::clone(&lookups);
        let hanging: Resolver = Box::new(move |_, _| {
            counted.set(counted.get() + 1);
            Box::pin(std::future::pending())
        });
        let mut t =
            Targets::with_resolver(&urls(&["https://slow.test:1"]), "pi-1", hanging).unwrap();
        t.resolve_timeout = Duration::from_millis(20);
        for _ in 0..3 {
            let e = t.next().await.err().expect("no answer");
            assert_eq!(
                e.to_string(),
                "cannot resolve https://slow.test:1/: no answer within 20ms"
            );
            assert!(!t.advance());
        }
        assert_eq!(lookups.get(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_lookup_names_the_url_and_the_cause() {
        let failing: Resolver = Box::new(|host, _| {
            Box::pin(async move { Err(io::Error::other(format!("no such host {host}"))) })
        });
        let t = Targets::with_resolver(&urls(&["https://gone.test:1"]), "pi-1", failing).unwrap();
        let e = t.next().await.err().expect("an error");
        assert_eq!(
            e.to_string(),
            "cannot resolve https://gone.test:1/: no such host gone.test"
        );
        let empty: Resolver = Box::new(|_, _| Box::pin(async { Ok(Vec::new()) }));
        let t = Targets::with_resolver(&urls(&["https://empty.test:1"]), "pi-1", empty).unwrap();
        let e = t.next().await.err().expect("an error");
        assert_eq!(
            e.to_string(),
            "cannot resolve https://empty.test:1/: the name has no address"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn localhost_resolves_through_the_system_to_loopback() {
        let t = Targets::new(&urls(&["http://localhost:50051"]), "pi-1").unwrap();
        let target = t.next().await.unwrap();
        let host = target.endpoint.uri().host().unwrap().to_owned();
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .unwrap();
        assert!(ip.is_loopback(), "{ip}");
        assert_eq!(target.tls_name, "localhost");
        assert_eq!(target.endpoint.uri().port_u16(), Some(50051));
    }
}
