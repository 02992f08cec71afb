//! A tiny client for systemd's notification protocol (`sd_notify(3)`), so
//! both daemons can run as `Type=notify` units with a watchdog.
//!
//! The protocol is one datagram of `KEY=VALUE` lines sent to the socket named
//! by `$NOTIFY_SOCKET`: a path (`/run/systemd/notify`) or, when it starts with
//! `@`, a name in Linux's abstract namespace. That is a few lines of std, so
//! this module adds no dependency and no `unsafe`.
//!
//! This module must never make a daemon fail or stall: when `$NOTIFY_SOCKET`
//! is unset (the daemon was started by hand) every call is a no-op, a failed
//! send is logged at debug level and dropped, and the socket is non-blocking
//! so a busy or hung manager cannot block the caller's runtime.
//!
//! It does not remove `NOTIFY_SOCKET` from the environment (that needs
//! `unsafe` in edition 2024): code that spawns children should drop it from
//! their environment itself. systemd only listens to the main process by
//! default (`NotifyAccess=main`), so a child that inherits it can do no harm.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends state changes to the service manager, or does nothing when the
/// process was not started by one.
#[derive(Debug)]
pub struct Notifier {
    /// Where datagrams go; `None` makes every call a no-op.
    target: Option<Target>,
    /// The manager's watchdog timeout (`WATCHDOG_USEC`), when it is meant
    /// for this process.
    watchdog_timeout: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    /// Unbound, non-blocking datagram socket the messages leave from.
    socket: UnixDatagram,
    /// The manager's socket, from `$NOTIFY_SOCKET`.
    addr: SocketAddr,
}

impl Notifier {
    /// A notifier configured from `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and
    /// `$WATCHDOG_PID`; a no-op notifier when `$NOTIFY_SOCKET` is unset or
    /// unusable (the reason is logged at debug level).
    pub fn from_env() -> Notifier {
        Notifier::from_lookup(|key| std::env::var_os(key), std::process::id())
    }

    /// A notifier that does nothing: for daemons started by hand and tests.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog_timeout: None,
        }
    }

    /// A notifier that sends to `path` (a filesystem path, or `@name` for an
    /// abstract socket) with the manager's watchdog timeout `watchdog`
    /// (the value of `WATCHDOG_USEC`, not the ping interval).
    pub fn with_socket(path: &str, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let addr = parse_socket_addr(path)?;
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some(Target { socket, addr }),
            watchdog_timeout: watchdog.filter(|d| !d.is_zero()),
        })
    }

    /// Builds a notifier from an environment lookup, for a process whose id
    /// is `own_pid`; split from [`Notifier::from_env`] so tests need not
    /// change the real environment.
    fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>, own_pid: u32) -> Notifier {
        let Some(raw_socket) = lookup("NOTIFY_SOCKET") else {
            return Notifier::disabled();
        };
        let Some(socket_path) = raw_socket.to_str() else {
            log::debug!("NOTIFY_SOCKET: not valid UTF-8, systemd notifications disabled");
            return Notifier::disabled();
        };
        let usec = lookup("WATCHDOG_USEC");
        let pid = lookup("WATCHDOG_PID");
        let watchdog = watchdog_timeout(
            usec.as_deref().and_then(|v| v.to_str()),
            pid.as_deref().and_then(|v| v.to_str()),
            own_pid,
        );
        match Notifier::with_socket(socket_path, watchdog) {
            Ok(notifier) => notifier,
            Err(err) => {
                log::debug!(
                    "NOTIFY_SOCKET: cannot use '{socket_path}', systemd notifications disabled: {err}"
                );
                Notifier::disabled()
            }
        }
    }

    /// Whether messages go anywhere (the process runs under a manager).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Start-up is finished: the daemon is listening or running.
    pub fn ready(&self) {
        self.send_or_log("READY=1");
    }

    /// The daemon has begun to shut down.
    pub fn stopping(&self) {
        self.send_or_log("STOPPING=1");
    }

    /// Keep-alive for `WatchdogSec=`; call every [`Notifier::watchdog_interval`]
    /// from the loop whose health it vouches for.
    pub fn watchdog(&self) {
        self.send_or_log("WATCHDOG=1");
    }

    /// A one-line status shown by `systemctl status`; line breaks are
    /// replaced by spaces so the text cannot inject other assignments.
    pub fn status(&self, text: &str) {
        if self.target.is_none() {
            return;
        }
        let line: String = text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.send_or_log(&format!("STATUS={line}"));
    }

    /// How often to call [`Notifier::watchdog`]: half of `WATCHDOG_USEC`,
    /// as sd_watchdog_enabled(3) advises; `None` when no watchdog is set for
    /// this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref()?;
        self.watchdog_timeout.map(|timeout| timeout / 2)
    }

    /// Sends `state` (one or more `KEY=VALUE` lines) as one datagram.
    /// `Ok` without sending when the notifier is disabled.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let sent_bytes = target.socket.send_to_addr(state.as_bytes(), &target.addr)?;
        if sent_bytes != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("NOTIFY_SOCKET: sent {sent_bytes} of {} bytes", state.len()),
            ));
        }
        Ok(())
    }

    /// Sends and logs a failure at debug level: a lost notification is for
    /// the manager to notice (a start timeout, a watchdog kill), never a
    /// reason for the daemon to stop.
    fn send_or_log(&self, state: &str) {
        if let Err(err) = self.notify(state) {
            log::debug!("systemd notification '{state}' not sent: {err}");
        }
    }
}

/// Turns a `$NOTIFY_SOCKET` value into a socket address: `@name` is abstract,
/// anything else must be an absolute path.
fn parse_socket_addr(path: &str) -> io::Result<SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if !path.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET: expected an absolute path or '@name', got '{path}'"),
        ));
    }
    SocketAddr::from_pathname(path)
}

/// The watchdog timeout from `WATCHDOG_USEC`, when it applies to this
/// process: `WATCHDOG_PID` unset or equal to `own_pid`, and the value a
/// positive whole number of microseconds.
fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;
    /// A fresh directory for sockets, removed on drop.
    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("monitor-sd-notify-")
            .tempdir()
            .unwrap()
    }

    /// A bound "manager" socket plus a notifier pointed at it.
    fn manager() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = temp_dir();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        // A deadline for recv, so a missing datagram fails the test instead
        // of hanging it.
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::with_socket(path.to_str().unwrap(), None).unwrap();
        (dir, listener, notifier)
    }

    fn recv(listener: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = listener.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn each_call_sends_its_exact_datagram() {
        let (_dir, listener, notifier) = manager();
        notifier.ready();
        assert_eq!(recv(&listener), "READY=1");
        notifier.watchdog();
        assert_eq!(recv(&listener), "WATCHDOG=1");
        notifier.status("3 agents online");
        assert_eq!(recv(&listener), "STATUS=3 agents online");
        notifier.stopping();
        assert_eq!(recv(&listener), "STOPPING=1");
    }

    #[test]
    fn status_cannot_inject_another_assignment() {
        let (_dir, listener, notifier) = manager();
        notifier.status("bad\nREADY=1\r\n");
        assert_eq!(recv(&listener), "STATUS=bad READY=1  ");
    }

    #[test]
    fn abstract_socket_receives_datagrams() {
        let name = format!("monitor-sd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::with_socket(&format!("@{name}"), None).unwrap();
        notifier.ready();
        assert_eq!(recv(&listener), "READY=1");
    }

    #[test]
    fn from_lookup_uses_notify_socket_and_watchdog_variables() {
        let (dir, listener, _) = manager();
        let path = dir.path().join("notify");
        let notifier = Notifier::from_lookup(
            |key| match key {
                "NOTIFY_SOCKET" => Some(path.clone().into_os_string()),
                "WATCHDOG_USEC" => Some("30000000".into()),
                "WATCHDOG_PID" => Some("4242".into()),
                _ => None,
            },
            4242,
        );
        assert!(notifier.is_enabled());
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));
        notifier.ready();
        assert_eq!(recv(&listener), "READY=1");
    }

    #[test]
    fn unset_or_unusable_notify_socket_gives_a_no_op_notifier() {
        for socket in [None, Some("relative/notify"), Some("")] {
            let notifier = Notifier::from_lookup(
                |key| match key {
                    "NOTIFY_SOCKET" => socket.map(OsString::from),
                    "WATCHDOG_USEC" => Some("1000000".into()),
                    _ => None,
                },
                1,
            );
            assert!(!notifier.is_enabled(), "NOTIFY_SOCKET={socket:?}");
            assert_eq!(
                notifier.watchdog_interval(),
                None,
                "NOTIFY_SOCKET={socket:?}"
            );
            // Every call is a silent no-op.
            notifier.ready();
            notifier.status("x");
            assert!(notifier.notify("READY=1").is_ok());
        }
    }

    #[test]
    fn relative_socket_path_is_rejected_with_its_name() {
        let err = Notifier::with_socket("run/notify", None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("'run/notify'"), "{err}");
    }

    #[test]
    fn send_to_a_vanished_manager_is_an_error_but_never_fatal() {
        let dir = temp_dir();
        let path = dir.path().join("gone");
        let notifier = Notifier::with_socket(path.to_str().unwrap(), None).unwrap();
        assert!(notifier.notify("READY=1").is_err());
        // The convenience calls swallow the same error.
        notifier.ready();
        notifier.watchdog();
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout() {
        let dir = temp_dir();
        let path = dir.path().join("notify");
        let path = path.to_str().unwrap();
        let notifier = Notifier::with_socket(path, Some(Duration::from_secs(20))).unwrap();
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(10)));
        let zero = Notifier::with_socket(path, Some(Duration::ZERO)).unwrap();
        assert_eq!(zero.watchdog_interval(), None);
        let none = Notifier::with_socket(path, None).unwrap();
        assert_eq!(none.watchdog_interval(), None);
    }

    /// `(WATCHDOG_USEC, WATCHDOG_PID)` for a process whose id is 100.
    fn check(usec: Option<&str>, pid: Option<&str>, expected: Option<Duration>) {
        assert_eq!(
            watchdog_timeout(usec, pid, 100),
            expected,
            "WATCHDOG_USEC={usec:?} WATCHDOG_PID={pid:?}"
        );
    }

    #[test]
    fn watchdog_timeout_applies_only_to_this_process() {
        let ten_s = Some(Duration::from_secs(10));
        check(Some("10000000"), None, ten_s);
        check(Some("10000000"), Some("100"), ten_s);
        check(Some("10000000"), Some("101"), None);
        check(Some("10000000"), Some("not-a-pid"), None);
        check(Some("1500"), None, Some(Duration::from_micros(1500)));
        check(Some("0"), None, None);
        check(Some("-5"), None, None);
        check(Some("ten"), None, None);
        check(Some(""), None, None);
        check(None, Some("100"), None);
        check(None, None, None);
    }
}
