//! The trust tables' writes: join tokens, certificates, revocation. They
//! run inside a flush's transaction like every other write, so a token is
//! spent and the certificate it bought is recorded together or not at all.
//!
//! Nothing here may spend a token that is unknown, used, expired or for
//! another hostname: those come back as a refusal and nothing is written.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::records::{
    CertificateRecord, JoinTokenRecord, SigningKeyRecord, TrustAnswer, TrustWrite,
};

/// Applies one trust write.
pub(super) fn write(
    tx: &Connection,
    w: &TrustWrite,
    now_unix_ms: i64,
) -> rusqlite::Result<TrustAnswer> {
    match w {
        TrustWrite::CreateJoinToken(t) => {
            tx.prepare_cached(
                "INSERT INTO join_tokens (secret_sha256, hostname, created_unix_ms,
                     expires_unix_ms, created_by, used_unix_ms, used_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL)",
            )?
            .execute(params![
                &t.secret_sha256[..],
                t.hostname,
                t.created_unix_ms,
                t.expires_unix_ms,
                t.created_by
            ])?;
            Ok(TrustAnswer::Done)
        }
        TrustWrite::Redeem {
            secret_sha256,
            hostname,
            peer,
            cert,
        } => {
            let Some(token) = join_token(tx, secret_sha256)? else {
                return Ok(TrustAnswer::Refused(
                    crate::store::records::TokenRefusal::Unknown,
                ));
            };
            if let Some(refusal) = token.refusal(hostname, now_unix_ms) {
                return Ok(TrustAnswer::Refused(refusal));
            }
            tx.prepare_cached(
                "UPDATE join_tokens SET used_unix_ms = ?2, used_by = ?3
                 WHERE secret_sha256 = ?1 AND used_unix_ms IS NULL",
            )?
            .execute(params![&secret_sha256[..], now_unix_ms, peer])?;
            insert_certificate(tx, cert)?;
            Ok(TrustAnswer::Done)
        }
        TrustWrite::RecordCertificate(c) => {
            insert_certificate(tx, c)?;
            Ok(TrustAnswer::Done)
        }
        TrustWrite::RegisterSigningKey(k) => {
            tx.prepare_cached(
                "INSERT INTO operator_keys (public_key, operator, registered_unix_ms,
                     revoked_unix_ms)
                 VALUES (?1, ?2, ?3, NULL)
                 ON CONFLICT (public_key) DO NOTHING",
            )?
            .execute(params![&k.public_key[..], k.operator, k.registered_unix_ms])?;
            Ok(TrustAnswer::Done)
        }
        TrustWrite::Revoke {
            role,
            name,
            now_unix_ms,
        } => {
            let n = tx
                .prepare_cached(
                    "UPDATE certificates SET revoked_unix_ms = ?3
                     WHERE role = ?1 AND name = ?2 AND revoked_unix_ms IS NULL",
                )?
                .execute(params![role, name, now_unix_ms])?;
            if role == "operator" {
                tx.prepare_cached(
                    "UPDATE operator_keys SET revoked_unix_ms = ?2
                     WHERE operator = ?1 AND revoked_unix_ms IS NULL",
                )?
                .execute(params![name, now_unix_ms])?;
            }
            Ok(TrustAnswer::Revoked(u32::try_from(n).unwrap_or(u32::MAX)))
        }
    }
}

fn insert_certificate(tx: &Connection, c: &CertificateRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO certificates (fingerprint, role, name, issued_unix_ms, not_after_unix_ms,
             revoked_unix_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (fingerprint) DO NOTHING",
    )?
    .execute(params![
        &c.fingerprint[..],
        c.role,
        c.name,
        c.issued_unix_ms,
        c.not_after_unix_ms,
        c.revoked_unix_ms
    ])?;
    Ok(())
}

/// The token with this secret hash, read in `conn`'s transaction.
pub(crate) fn join_token(
    conn: &Connection,
    secret_sha256: &[u8; 32],
) -> rusqlite::Result<Option<JoinTokenRecord>> {
    conn.prepare_cached(
        "SELECT hostname, created_unix_ms, expires_unix_ms, created_by, used_unix_ms, used_by
         FROM join_tokens WHERE secret_sha256 = ?1",
    )?
    .query_row([&secret_sha256[..]], |r| {
        Ok(JoinTokenRecord {
            secret_sha256: *secret_sha256,
            hostname: r.get(0)?,
            created_unix_ms: r.get(1)?,
            expires_unix_ms: r.get(2)?,
            created_by: r.get(3)?,
            used_unix_ms: r.get(4)?,
            used_by: r.get(5)?,
        })
    })
    .optional()
}

/// Every certificate the table holds.
pub(crate) fn certificates(conn: &Connection) -> rusqlite::Result<Vec<CertificateRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT fingerprint, role, name, issued_unix_ms, not_after_unix_ms, revoked_unix_ms
         FROM certificates",
    )?;
    let rows = stmt.query_map([], |r| {
        let fp: Vec<u8> = r.get(0)?;
        let fingerprint = <[u8; 32]>::try_from(fp.as_slice()).map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Blob,
                "a certificate fingerprint is not 32 bytes".into(),
            )
        })?;
        Ok(CertificateRecord {
            fingerprint,
            role: r.get(1)?,
            name: r.get(2)?,
            issued_unix_ms: r.get(3)?,
            not_after_unix_ms: r.get(4)?,
            revoked_unix_ms: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Every registered signing key.
pub(crate) fn signing_keys(conn: &Connection) -> rusqlite::Result<Vec<SigningKeyRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT public_key, operator, registered_unix_ms, revoked_unix_ms FROM operator_keys
         ORDER BY registered_unix_ms",
    )?;
    let rows = stmt.query_map([], |r| {
        let key: Vec<u8> = r.get(0)?;
        let public_key = <[u8; 32]>::try_from(key.as_slice()).map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Blob,
                "a signing key is not 32 bytes".into(),
            )
        })?;
        Ok(SigningKeyRecord {
            public_key,
            operator: r.get(1)?,
            registered_unix_ms: r.get(2)?,
            revoked_unix_ms: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Deletes tokens and certificates that expired before `cutoff_unix_ms`
/// (they open nothing any more); returns how many rows went.
pub(super) fn prune(tx: &Connection, cutoff_unix_ms: i64) -> rusqlite::Result<usize> {
    let tokens = tx
        .prepare_cached("DELETE FROM join_tokens WHERE expires_unix_ms < ?1")?
        .execute([cutoff_unix_ms])?;
    let certs = tx
        .prepare_cached("DELETE FROM certificates WHERE not_after_unix_ms < ?1")?
        .execute([cutoff_unix_ms])?;
    Ok(tokens + certs)
}
