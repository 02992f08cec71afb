//! The dashboard's sessions: how a browser gets in without a client
//! certificate. `monitorctl dashboard` asks the server (an admin RPC, so
//! the operator's certificate vouches for it) for a one-time login token;
//! `/login?token=…` spends it for a session cookie naming that operator.
//!
//! - A login token is 256 random bits, single-use, valid
//!   [`LOGIN_TOKEN_LIFETIME`]; a session [`SESSION_LIFETIME`].
//! - Both tables live in memory only (a restart logs everyone out) and are
//!   bounded: expired entries go first, then the oldest.
//! - Only SHA-256 digests of secrets are kept, and lookups compare digests
//!   (a hash table keyed by a digest of a 256-bit secret leaks nothing
//!   usable through timing).
//!
//! This module must never log a token or a cookie.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How long a login URL works.
pub const LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// How long a session lasts after its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Login tokens waiting to be spent, at most.
pub const MAX_LOGIN_TOKENS: usize = 64;
/// Sessions held, at most (the oldest is dropped for a new one).
pub const MAX_SESSIONS: usize = 256;
/// The cookie's name.
pub const COOKIE_NAME: &str = "monitor_session";

/// A login token or session: who, until when.
#[derive(Clone, Debug)]
struct Entry {
    operator: String,
    expires_unix_ms: i64,
}

/// The login tokens and sessions of one server.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    logins: HashMap<[u8; 32], Entry>,
    sessions: HashMap<[u8; 32], Entry>,
}

/// A session just made by a login: the cookie's value and whose it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    pub cookie_value: String,
    pub operator: String,
    pub max_age: Duration,
}

impl Sessions {
    /// Makes a one-time login token for `operator` (hex; valid
    /// [`LOGIN_TOKEN_LIFETIME`] from `now_unix_ms`), and when it expires.
    pub fn issue_login(&self, operator: &str, now_unix_ms: i64) -> (String, i64) {
        let token = monitor::digest::hex(&monitor::random::random_bytes::<32>());
        let expires_unix_ms = now_unix_ms + ms(LOGIN_TOKEN_LIFETIME);
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        insert_bounded(
            &mut t.logins,
            MAX_LOGIN_TOKENS,
            now_unix_ms,
            monitor::digest::sha256(token.as_bytes()),
            Entry {
                operator: operator.to_owned(),
                expires_unix_ms,
            },
        );
        (token, expires_unix_ms)
    }

    /// Spends a login token: a new session for its operator, or `None` if
    /// the token is unknown, spent or expired.
    pub fn redeem(&self, token: &str, now_unix_ms: i64) -> Option<NewSession> {
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = t
            .logins
            .remove(&monitor::digest::sha256(token.as_bytes()))?;
        if entry.expires_unix_ms <= now_unix_ms {
            return None;
        }
        let cookie_value = monitor::digest::hex(&monitor::random::random_bytes::<32>());
        insert_bounded(
            &mut t.sessions,
            MAX_SESSIONS,
            now_unix_ms,
            monitor::digest::sha256(cookie_value.as_bytes()),
            Entry {
                operator: entry.operator.clone(),
                expires_unix_ms: now_unix_ms + ms(SESSION_LIFETIME),
            },
        );
        Some(NewSession {
            cookie_value,
            operator: entry.operator,
            max_age: SESSION_LIFETIME,
        })
    }

    /// The operator of a live session with this cookie value.
    pub fn check(&self, cookie_value: &str, now_unix_ms: i64) -> Option<String> {
        let t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let e = t
            .sessions
            .get(&monitor::digest::sha256(cookie_value.as_bytes()))?;
        (e.expires_unix_ms > now_unix_ms).then(|| e.operator.clone())
    }

    /// Ends every session of `operator` (when they are removed).
    pub fn end_all_of(&self, operator: &str) {
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        t.sessions.retain(|_, e| e.operator != operator);
        t.logins.retain(|_, e| e.operator != operator);
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Inserts, first dropping expired entries and then, while full, the one
/// that expires first.
fn insert_bounded(
    table: &mut HashMap<[u8; 32], Entry>,
    max: usize,
    now_unix_ms: i64,
    key: [u8; 32],
    entry: Entry,
) {
    if table.len() >= max {
        table.retain(|_, e| e.expires_unix_ms > now_unix_ms);
    }
    while table.len() >= max {
        let oldest = table
            .iter()
            .min_by_key(|(_, e)| e.expires_unix_ms)
            .map(|(k, _)| *k);
        match oldest {
            Some(k) => table.remove(&k),
            None => break,
        };
    }
    table.insert(key, entry);
}

/// The session cookie's value in a `Cookie` header, if any.
pub fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE_NAME && !value.is_empty()).then_some(value)
    })
}

/// The `Set-Cookie` value for a new session: HttpOnly, Secure,
/// SameSite=Strict, the whole site, expiring with the session.
pub fn set_cookie(s: &NewSession) -> String {
    format!(
        "{COOKIE_NAME}={}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        s.cookie_value,
        s.max_age.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_token_works_once_and_only_before_it_expires() {
        let s = Sessions::default();
        let (token, expires) = s.issue_login("alice", 1_000);
        assert_eq!(expires, 1_000 + 60_000);
        assert_eq!(token.len(), 64);
        assert_eq!(s.redeem("not-a-token", 1_001), None);
        let session = s.redeem(&token, 1_001).unwrap();
        assert_eq!(session.operator, "alice");
        assert_eq!(s.redeem(&token, 1_002), None, "single use");
        assert_eq!(
            s.check(&session.cookie_value, 2_000).as_deref(),
            Some("alice")
        );
        assert_eq!(s.check("nope", 2_000), None);
        // The session ends with its lifetime.
        let end = 1_001 + ms(SESSION_LIFETIME);
        assert_eq!(s.check(&session.cookie_value, end), None);

        let (late, _) = s.issue_login("bob", 10_000);
        assert_eq!(s.redeem(&late, 10_000 + 60_000), None, "expired");

        let (token, _) = s.issue_login("carol", 0);
        let c = s.redeem(&token, 1).unwrap();
        s.end_all_of("carol");
        assert_eq!(s.check(&c.cookie_value, 2), None);
    }

    #[test]
    fn the_tables_are_bounded_and_drop_the_oldest() {
        let s = Sessions::default();
        let first = s.issue_login("op", 0).0;
        for i in 1..(MAX_LOGIN_TOKENS as i64 + 10) {
            s.issue_login("op", i);
        }
        let t = s.inner.lock().unwrap();
        assert_eq!(t.logins.len(), MAX_LOGIN_TOKENS);
        drop(t);
        assert_eq!(s.redeem(&first, 100), None, "the oldest was dropped");
        let mut cookies = Vec::new();
        for i in 0..(MAX_SESSIONS + 5) {
            let (tok, _) = s.issue_login("op", 200 + i as i64);
            cookies.push(s.redeem(&tok, 200 + i as i64).unwrap().cookie_value);
        }
        assert_eq!(s.inner.lock().unwrap().sessions.len(), MAX_SESSIONS);
        assert_eq!(s.check(&cookies[0], 10_000), None);
        assert_eq!(
            s.check(cookies.last().unwrap(), 10_000).as_deref(),
            Some("op")
        );
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_with_every_guard() {
        assert_eq!(cookie_value("a=1; monitor_session=abc; b=2"), Some("abc"));
        assert_eq!(cookie_value("monitor_session="), None);
        assert_eq!(cookie_value("other=x"), None);
        let c = set_cookie(&NewSession {
            cookie_value: "v".into(),
            operator: "o".into(),
            max_age: Duration::from_secs(60),
        });
        assert_eq!(
            c,
            "monitor_session=v; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Strict"
        );
    }
}
