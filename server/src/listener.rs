//! The server's own accept loop, in front of tonic and the HTTP listener:
//! connection caps, the TLS handshake and the first bytes (the HTTP/2
//! preface on the gRPC listeners, any request on the HTTP one) within a
//! deadline, and who the peer is.
//!
//! Every listener goes through here. A connection costs a descriptor from
//! accept to close, so a stranger who opens sockets and sends nothing must
//! not be able to take them all: connections that have not yet completed
//! the handshake *and* sent their first bytes ([`Preface`]) are "pending", capped in
//! total and per source address, and dropped after
//! [`Limits::handshake_timeout`]; established connections are capped too.
//! Each listener has its own caps, so a flood on the agents' port leaves
//! the operator API (and the descriptors the store needs) alone. When a cap
//! is hit the connection is closed at once and one log line per minute
//! says so (with how many were refused).
//!
//! Established connections are capped per peer too, so no single peer can
//! hold the connection slots everyone shares: per identity (a client
//! certificate's name: an agent uses one connection, an enrolled agent
//! gone bad cannot open thirty thousand), and, with TLS, for connections
//! without a certificate (they can only enrol), in total and per source
//! address. Without TLS (`--insecure`) there is no identity to count by.
//!
//! A connection handed to tonic carries a [`PeerInfo`] (its address and,
//! with TLS, the identity its client certificate proved), which every RPC
//! finds in its request's extensions.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::throttle::LogThrottle;
use crate::tls::{Identity, Role, Trust, fingerprint};

/// What every HTTP/2 connection starts with (RFC 9113, 3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a listener expects a new connection to send first, before it
/// counts as established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preface {
    /// The HTTP/2 client preface (the gRPC listeners: gRPC is HTTP/2 only,
    /// so anything else is refused before tonic sees it).
    Http2,
    /// At least one byte of anything (the HTTP listener: Prometheus and
    /// browsers speak HTTP/1.1, some HTTP/2; hyper tells them apart).
    AnyHttp,
}

/// How many connections a listener takes, and how long a new one has to
/// prove itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, pending ones included.
    pub max_connections: usize,
    /// Connections still in their TLS handshake or before the preface.
    pub max_pending: usize,
    /// Pending connections from one source address.
    pub max_pending_per_ip: usize,
    /// Time from accept to a complete handshake and preface.
    pub handshake_timeout: Duration,
    /// Established connections of one identity (a certificate's name).
    pub max_per_identity: usize,
    /// With TLS, established connections without a client certificate.
    pub max_anonymous: usize,
    /// ... of them from one source address.
    pub max_anonymous_per_ip: usize,
}

impl Limits {
    /// The agents' listener: sized past the capacity figure (19,000 agents
    /// held on 2 cores), under the unit's `LimitNOFILE=65536`.
    /// An agent holds one connection (a few for up to a minute when it
    /// reconnects over a flapping link before keepalives reap the old,
    /// half-open ones); a connection without a
    /// certificate only enrols, one request, so 16 at once from one address
    /// is a fleet booting behind one NAT.
    pub const AGENTS: Limits = Limits {
        max_connections: 30_000,
        max_pending: 512,
        max_pending_per_ip: 64,
        handshake_timeout: Duration::from_secs(10),
        max_per_identity: 16,
        max_anonymous: 256,
        max_anonymous_per_ip: 16,
    };

    /// The operator API: a few people and scripts (who may share one
    /// credential across scripts and terminals).
    pub const OPERATORS: Limits = Limits {
        max_connections: 256,
        max_pending: 64,
        max_pending_per_ip: 16,
        handshake_timeout: Duration::from_secs(10),
        max_per_identity: 64,
        max_anonymous: 16,
        max_anonymous_per_ip: 16,
    };

    /// The HTTP listener: a few scrapers (Prometheus keeps one connection
    /// per target) and browsers (a handful of connections each).
    pub const HTTP: Limits = Limits {
        max_connections: 128,
        max_pending: 32,
        max_pending_per_ip: 16,
        handshake_timeout: Duration::from_secs(10),
        max_per_identity: 64,
        max_anonymous: 128,
        max_anonymous_per_ip: 16,
    };
}

/// TLS for a listener: the rustls configuration, and the table that maps a
/// client certificate to an identity in `role`.
#[derive(Clone)]
pub struct TlsSetup {
    pub config: Arc<rustls::ServerConfig>,
    pub trust: Arc<Trust>,
    pub role: Role,
}

/// Who is on the other end of a connection; in every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The identity a valid client certificate proved; `None` without TLS
    /// (`--insecure`) or without a client certificate.
    pub identity: Option<Identity>,
}

impl PeerInfo {
    /// The peer of a request (an unknown address if the listener did not
    /// set one, which only an in-process test does).
    pub fn of<T>(request: &tonic::Request<T>) -> PeerInfo {
        request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .unwrap_or(PeerInfo {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                identity: None,
            })
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection: its first bytes (read to check them) are
/// replayed to tonic or hyper before the rest of the stream.
pub struct Conn {
    io: Io,
    replay: Vec<u8>,
    replayed: usize,
    info: PeerInfo,
    /// Released when the connection closes.
    _slot: OwnedSemaphorePermit,
    /// Its place among its peer's connections, released when it closes.
    _held: Option<HeldGuard>,
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.replay.len() {
            let rest = &this.replay[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Refusals of one kind, logged at most once a minute with a count.
struct Throttled {
    what: &'static str,
    log: LogThrottle,
}

impl Throttled {
    fn new(what: &'static str) -> Throttled {
        Throttled {
            what,
            log: LogThrottle::default(),
        }
    }

    fn hit(&mut self, listener: &str, detail: impl std::fmt::Display) {
        if let Some(n) = self.log.hit(Instant::now()) {
            log::warn!(
                "{listener}: {} ({detail}); {n} refused since the last such line",
                self.what
            );
        }
    }
}

/// Pending connections per source address (bounded by `max_pending`).
#[derive(Default)]
struct Pending {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Releases a pending slot when the handshake ends, however it ends.
struct PendingGuard {
    pending: Arc<Mutex<Pending>>,
    ip: IpAddr,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.total = p.total.saturating_sub(1);
        if let Some(n) = p.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                p.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Established connections per peer (bounded by `max_connections`).
#[derive(Default)]
struct Held {
    by_identity: HashMap<String, usize>,
    anonymous: usize,
    anonymous_by_ip: HashMap<IpAddr, usize>,
}

/// Whom an established connection counts against.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holder {
    Identity(String),
    Anonymous(IpAddr),
}

/// Releases a connection's place among its peer's when it closes.
struct HeldGuard {
    held: Arc<Mutex<Held>>,
    holder: Holder,
}

impl Held {
    /// Takes a place for `holder` within `limits`; false when its peer
    /// holds all it may.
    fn take(&mut self, holder: &Holder, limits: &Limits) -> bool {
        fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, cap: usize) -> bool {
            let n = map.get(&key).copied().unwrap_or(0);
            if n >= cap {
                return false;
            }
            map.insert(key, n + 1);
            true
        }
        match holder {
            Holder::Identity(name) => {
                bump(&mut self.by_identity, name.clone(), limits.max_per_identity)
            }
            Holder::Anonymous(ip) => {
                if self.anonymous >= limits.max_anonymous {
                    return false;
                }
                let taken = bump(&mut self.anonymous_by_ip, *ip, limits.max_anonymous_per_ip);
                self.anonymous += usize::from(taken);
                taken
            }
        }
    }

    fn release(&mut self, holder: &Holder) {
        fn drop_one<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        match holder {
            Holder::Identity(name) => drop_one(&mut self.by_identity, name),
            Holder::Anonymous(ip) => {
                self.anonymous = self.anonymous.saturating_sub(1);
                drop_one(&mut self.anonymous_by_ip, ip);
            }
        }
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(&self.holder);
    }
}

impl Conn {
    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

/// Accepts on `listener` until `stop` turns true, and hands each connection
/// that completed its handshake and sent its `preface` to the returned
/// stream (give it to tonic's `serve_with_incoming_shutdown`, or serve it
/// with hyper).
pub fn incoming(
    listener: TcpListener,
    name: &'static str,
    tls: Option<TlsSetup>,
    (limits, preface): (Limits, Preface),
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<Result<Conn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let held = Arc::new(Mutex::new(Held::default()));
        let per_peer = Arc::new(Mutex::new(Throttled::new(
            "per-peer connection limit reached: this certificate (or, without one, this \
             address) holds all the connections it may",
        )));
        let acceptor = tls
            .as_ref()
            .map(|t| TlsAcceptor::from(Arc::clone(&t.config)));
        let mut full = Throttled::new("connection limit reached");
        let mut busy = Throttled::new(
            "handshake limit reached: too many connections still in their TLS handshake or \
             before their first bytes",
        );
        let mut errors = Throttled::new("accept failed");
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                a = listener.accept() => a,
            };
            let (tcp, addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or buffers: wait
                    // a little instead of spinning on a listener that will
                    // fail again at once.
                    errors.hit(name, &e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                full.hit(name, format_args!("{} open", limits.max_connections));
                continue;
            };
            let guard = {
                let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                let from_ip = p.by_ip.get(&addr.ip()).copied().unwrap_or(0);
                if p.total >= limits.max_pending || from_ip >= limits.max_pending_per_ip {
                    drop(p);
                    busy.hit(name, format_args!("last from {}", addr.ip()));
                    continue;
                }
                p.total += 1;
                *p.by_ip.entry(addr.ip()).or_insert(0) += 1;
                PendingGuard {
                    pending: Arc::clone(&pending),
                    ip: addr.ip(),
                }
            };
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            let tls = tls.clone();
            let held = Arc::clone(&held);
            let per_peer = Arc::clone(&per_peer);
            tokio::spawn(async move {
                let handshake = establish(tcp, addr, acceptor, tls.as_ref(), preface);
                let conn = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                    Ok(Ok((io, info, replay))) => {
                        // Without TLS there is nothing to count a peer by.
                        let holder = tls.as_ref().map(|_| match &info.identity {
                            Some(id) => Holder::Identity(id.name.clone()),
                            None => Holder::Anonymous(addr.ip()),
                        });
                        let guard = match holder {
                            None => None,
                            Some(holder) => {
                                let taken = held
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .take(&holder, &limits);
                                if !taken {
                                    let who = match &holder {
                                        Holder::Identity(name) => format!("last: {name}"),
                                        Holder::Anonymous(ip) => format!("last from {ip}"),
                                    };
                                    per_peer
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .hit(name, who);
                                    return;
                                }
                                Some(HeldGuard {
                                    held: Arc::clone(&held),
                                    holder,
                                })
                            }
                        };
                        Conn {
                            io,
                            replay,
                            replayed: 0,
                            info,
                            _slot: slot,
                            _held: guard,
                        }
                    }
                    Ok(Err(e)) => {
                        log::debug!("{name}: {addr}: {e}");
                        return;
                    }
                    Err(_) => {
                        log::debug!(
                            "{name}: {addr}: no handshake and first bytes within the deadline"
                        );
                        return;
                    }
                };
                drop(guard);
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The TLS handshake (if any), then the first bytes the listener expects
/// (returned, to be replayed).
async fn establish(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    tls: Option<&TlsSetup>,
    preface: Preface,
) -> io::Result<(Io, PeerInfo, Vec<u8>)> {
    match (acceptor, tls) {
        (Some(acceptor), Some(tls)) => {
            let mut stream = acceptor.accept(tcp).await?;
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| tls.trust.identify(&fingerprint(c), tls.role).ok());
            let first = read_preface(&mut stream, preface).await?;
            Ok((
                Io::Tls(Box::new(stream)),
                PeerInfo { addr, identity },
                first,
            ))
        }
        _ => {
            let mut tcp = tcp;
            let first = read_preface(&mut tcp, preface).await?;
            let info = PeerInfo {
                addr,
                identity: None,
            };
            Ok((Io::Plain(tcp), info, first))
        }
    }
}

/// Reads what a connection must send first: the whole HTTP/2 preface, or
/// at least one byte.
async fn read_preface(
    stream: &mut (impl AsyncRead + Unpin),
    preface: Preface,
) -> io::Result<Vec<u8>> {
    match preface {
        Preface::Http2 => {
            let mut got = [0u8; 24];
            stream.read_exact(&mut got).await?;
            check_preface(&got)?;
            Ok(got.to_vec())
        }
        Preface::AnyHttp => {
            let mut first = vec![0u8; 1024];
            let n = stream.read(&mut first).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before sending anything",
                ));
            }
            first.truncate(n);
            Ok(first)
        }
    }
}

fn check_preface(got: &[u8; 24]) -> io::Result<()> {
    if got == H2_PREFACE {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not HTTP/2 (no client preface)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio_stream::StreamExt;

    const SMALL: Limits = Limits {
        max_connections: 100,
        max_pending: 4,
        max_pending_per_ip: 3,
        handshake_timeout: Duration::from_millis(1500),
        max_per_identity: 2,
        max_anonymous: 3,
        max_anonymous_per_ip: 2,
    };

    async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(source.parse().unwrap(), 0))
            .unwrap();
        socket.connect(to).await.unwrap()
    }

    /// Whether the listener closed `s` within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(within, s.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn pending_connections_are_capped_in_total_and_per_address_until_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let mut conns = incoming(listener, "test", None, (SMALL, Preface::Http2), stop);
        // Four from one address (one over its cap), two from another (one
        // over the total cap): three and one wait, two are closed at once.
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(connect_from("127.0.0.2", addr).await);
        }
        for _ in 0..2 {
            idle.push(connect_from("127.0.0.3", addr).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut refused = 0;
        for s in &mut idle {
            if closed_within(s, Duration::from_millis(10)).await {
                refused += 1;
            }
        }
        assert_eq!(
            refused, 2,
            "the connections over the caps are closed at once"
        );
        // A real client meanwhile finds the pending slots full...
        let mut real = connect_from("127.0.0.1", addr).await;
        real.write_all(H2_PREFACE).await.unwrap();
        assert!(closed_within(&mut real, Duration::from_millis(200)).await);
        // ...until the deadline frees them, and then gets through.
        let mut waited = 0;
        for s in &mut idle {
            if closed_within(s, Duration::from_secs(3)).await {
                waited += 1;
            }
        }
        assert_eq!(waited, 6, "every idle connection is closed by the deadline");
        let mut real = connect_from("127.0.0.1", addr).await;
        real.write_all(H2_PREFACE).await.unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(2), conns.next())
            .await
            .expect("the connection is handed on")
            .expect("the stream is open")
            .expect("a connection");
        assert_eq!(conn.info.addr.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn established_connections_are_capped_per_identity_and_without_one() {
        let mut held = Held::default();
        let pi = Holder::Identity("pi".into());
        let other = Holder::Identity("other".into());
        assert!(held.take(&pi, &SMALL));
        assert!(held.take(&pi, &SMALL));
        assert!(!held.take(&pi, &SMALL), "an identity holds at most two");
        assert!(
            held.take(&other, &SMALL),
            "another identity is not affected"
        );
        held.release(&pi);
        assert!(held.take(&pi, &SMALL), "a closed one frees its place");
        // Without a certificate: two per address, three in all.
        let a = Holder::Anonymous("192.0.2.1".parse().unwrap());
        let b = Holder::Anonymous("192.0.2.2".parse().unwrap());
        assert!(held.take(&a, &SMALL));
        assert!(held.take(&a, &SMALL));
        assert!(!held.take(&a, &SMALL));
        assert!(held.take(&b, &SMALL));
        assert!(!held.take(&b, &SMALL), "three without a certificate in all");
        assert_eq!(held.anonymous, 3);
        held.release(&a);
        assert!(held.take(&b, &SMALL));
        for h in [&a, &b, &b, &pi, &pi, &other] {
            held.release(h);
        }
        assert!(held.by_identity.is_empty() && held.anonymous_by_ip.is_empty());
        assert_eq!(held.anonymous, 0);
    }
}
