//! The trust tables in the database (join tokens, certificates, operators'
//! signing keys): their writes, inside a flush's transaction like every
//! other write (so a token is spent and the certificate it bought is
//! recorded together or not at all, on whichever replica), and their reads.
//!
//! Nothing here may spend a token that is unknown, used, expired or for
//! another hostname: those come back as a refusal and nothing is written.
//! The token's row is locked while it is judged, so two replicas redeeming
//! one token give one certificate between them.

use tokio_postgres::{GenericClient, Row, Transaction};

use super::error::PostgresError;
use super::text::pg_text;
use crate::store::records::{
    AuthorityRecord, CertificateRecord, JoinTokenRecord, SigningKeyRecord, TokenRefusal,
    TrustAnswer, TrustWrite,
};

/// Applies one trust write.
pub(crate) async fn write(
    tx: &Transaction<'_>,
    w: &TrustWrite,
    now_unix_ms: i64,
) -> Result<TrustAnswer, tokio_postgres::Error> {
    match w {
        TrustWrite::CreateJoinToken(t) => {
            tx.execute(
                "INSERT INTO join_tokens (secret_sha256, hostname, created_unix_ms,
                     expires_unix_ms, created_by)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &&t.secret_sha256[..],
                    &pg_text(&t.hostname),
                    &t.created_unix_ms,
                    &t.expires_unix_ms,
                    &pg_text(&t.created_by),
                ],
            )
            .await?;
            Ok(TrustAnswer::Done)
        }
        TrustWrite::Redeem {
            secret_sha256,
            hostname,
            peer,
            cert,
        } => {
            let found = tx
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM join_tokens WHERE secret_sha256 = $1 FOR UPDATE"),
                    &[&&secret_sha256[..]],
                )
                .await?;
            let Some(token) = found.map(|r| token_of(*secret_sha256, &r)).transpose()? else {
                return Ok(TrustAnswer::Refused(TokenRefusal::Unknown));
            };
            if let Some(refusal) = token.refusal(hostname, now_unix_ms) {
                return Ok(TrustAnswer::Refused(refusal));
            }
            tx.execute(
                "UPDATE join_tokens SET used_unix_ms = $2, used_by = $3
                 WHERE secret_sha256 = $1 AND used_unix_ms IS NULL",
                &[&&secret_sha256[..], &now_unix_ms, &pg_text(peer)],
            )
            .await?;
            insert_certificate(tx, cert).await?;
            Ok(TrustAnswer::Done)
        }
        TrustWrite::RecordCertificate(c) => {
            insert_certificate(tx, c).await?;
            Ok(TrustAnswer::Done)
        }
        TrustWrite::RegisterSigningKey(k) => {
            tx.execute(
                "INSERT INTO operator_keys (public_key, operator, registered_unix_ms)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (public_key) DO NOTHING",
                &[
                    &&k.public_key[..],
                    &pg_text(&k.operator),
                    &k.registered_unix_ms,
                ],
            )
            .await?;
            Ok(TrustAnswer::Done)
        }
        TrustWrite::Revoke {
            role,
            name,
            now_unix_ms,
        } => {
            let n = tx
                .execute(
                    "UPDATE certificates SET revoked_unix_ms = $3
                     WHERE role = $1 AND name = $2 AND revoked_unix_ms IS NULL",
                    &[&pg_text(role), &pg_text(name), now_unix_ms],
                )
                .await?;
            if role == "operator" {
                tx.execute(
                    "UPDATE operator_keys SET revoked_unix_ms = $2
                     WHERE operator = $1 AND revoked_unix_ms IS NULL",
                    &[&pg_text(name), now_unix_ms],
                )
                .await?;
            }
            Ok(TrustAnswer::Revoked(u32::try_from(n).unwrap_or(u32::MAX)))
        }
    }
}

async fn insert_certificate(
    tx: &Transaction<'_>,
    c: &CertificateRecord,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO certificates (fingerprint, role, name, issued_unix_ms, not_after_unix_ms,
             revoked_unix_ms)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (fingerprint) DO NOTHING",
        &[
            &&c.fingerprint[..],
            &pg_text(&c.role),
            &pg_text(&c.name),
            &c.issued_unix_ms,
            &c.not_after_unix_ms,
            &c.revoked_unix_ms,
        ],
    )
    .await?;
    Ok(())
}

const TOKEN_COLUMNS: &str =
    "hostname, created_unix_ms, expires_unix_ms, created_by, used_unix_ms, used_by";

/// The token of `secret_sha256` from a row of [`TOKEN_COLUMNS`].
fn token_of(secret_sha256: [u8; 32], r: &Row) -> Result<JoinTokenRecord, tokio_postgres::Error> {
    Ok(JoinTokenRecord {
        secret_sha256,
        hostname: r.try_get(0)?,
        created_unix_ms: r.try_get(1)?,
        expires_unix_ms: r.try_get(2)?,
        created_by: r.try_get(3)?,
        used_unix_ms: r.try_get(4)?,
        used_by: r.try_get(5)?,
    })
}

/// A 32-byte column, or an error naming it.
fn bytes32(r: &Row, i: usize, what: &str) -> Result<[u8; 32], PostgresError> {
    let v: &[u8] = r.get(i);
    <[u8; 32]>::try_from(v).map_err(|_| PostgresError::BadValue(format!("{what} is not 32 bytes")))
}

/// The token with this secret hash.
pub(crate) async fn join_token(
    c: &impl GenericClient,
    target: &str,
    secret_sha256: &[u8; 32],
) -> Result<Option<JoinTokenRecord>, PostgresError> {
    let sql = |e| PostgresError::of("reading a join token", target, e);
    let row = c
        .query_opt(
            &format!("SELECT {TOKEN_COLUMNS} FROM join_tokens WHERE secret_sha256 = $1"),
            &[&&secret_sha256[..]],
        )
        .await
        .map_err(sql)?;
    row.map(|r| token_of(*secret_sha256, &r))
        .transpose()
        .map_err(sql)
}

/// Every certificate the table holds.
pub(crate) async fn certificates(
    c: &impl GenericClient,
    target: &str,
) -> Result<Vec<CertificateRecord>, PostgresError> {
    let rows = c
        .query(
            "SELECT fingerprint, role, name, issued_unix_ms, not_after_unix_ms, revoked_unix_ms
             FROM certificates",
            &[],
        )
        .await
        .map_err(|e| PostgresError::of("reading certificates", target, e))?;
    rows.iter()
        .map(|r| {
            Ok(CertificateRecord {
                fingerprint: bytes32(r, 0, "certificates.fingerprint")?,
                role: r.get(1),
                name: r.get(2),
                issued_unix_ms: r.get(3),
                not_after_unix_ms: r.get(4),
                revoked_unix_ms: r.get(5),
            })
        })
        .collect()
}

/// Keeps `candidate` as the fleet's certificate authority unless one is
/// kept already; returns the one kept. Two statements on purpose: the
/// insert waits for a replica inserting at the same moment, and the
/// select that follows (a new snapshot) sees whichever row won.
pub(crate) async fn share_authority(
    c: &impl GenericClient,
    target: &str,
    candidate: &AuthorityRecord,
) -> Result<AuthorityRecord, PostgresError> {
    let sql = |e| PostgresError::of("sharing the certificate authority", target, e);
    c.execute(
        "INSERT INTO authority (id, key_der, cert_der) VALUES (1, $1, $2)
         ON CONFLICT (id) DO NOTHING",
        &[&candidate.key_der, &candidate.cert_der],
    )
    .await
    .map_err(sql)?;
    let row = c
        .query_one("SELECT key_der, cert_der FROM authority WHERE id = 1", &[])
        .await
        .map_err(sql)?;
    Ok(AuthorityRecord {
        key_der: row.get(0),
        cert_der: row.get(1),
    })
}

/// Every registered signing key, oldest first.
pub(crate) async fn signing_keys(
    c: &impl GenericClient,
    target: &str,
) -> Result<Vec<SigningKeyRecord>, PostgresError> {
    let rows = c
        .query(
            "SELECT public_key, operator, registered_unix_ms, revoked_unix_ms FROM operator_keys
             ORDER BY registered_unix_ms",
            &[],
        )
        .await
        .map_err(|e| PostgresError::of("reading signing keys", target, e))?;
    rows.iter()
        .map(|r| {
            Ok(SigningKeyRecord {
                public_key: bytes32(r, 0, "operator_keys.public_key")?,
                operator: r.get(1),
                registered_unix_ms: r.get(2),
                revoked_unix_ms: r.get(3),
            })
        })
        .collect()
}

/// Deletes tokens and certificates that expired before `cutoff_unix_ms`;
/// returns how many rows went.
pub(crate) async fn prune(
    c: &impl GenericClient,
    cutoff_unix_ms: i64,
) -> Result<u64, tokio_postgres::Error> {
    let tokens = c
        .execute(
            "DELETE FROM join_tokens WHERE expires_unix_ms < $1",
            &[&cutoff_unix_ms],
        )
        .await?;
    let certs = c
        .execute(
            "DELETE FROM certificates WHERE not_after_unix_ms < $1",
            &[&cutoff_unix_ms],
        )
        .await?;
    Ok(tokens + certs)
}
