//! A private key made where it will be used, and a PKCS#10 certificate
//! signing request (RFC 2986) for it.
//!
//! The agent makes its key on the box at enrolment (it never leaves, mode
//! 0600) and sends only this request; monitorctl does the same for an
//! operator. The key is ECDSA P-256, which rustls, OpenSSL and Python's
//! grpcio all accept; it comes from ring, which rustls links anyway, and
//! the request is a few DER structures written by hand rather than a
//! certificate library on the Pi.
//!
//! The request names a subject (CN), but the server never trusts it: it
//! signs a certificate for the public key only, with the name the join
//! token (or the operator's command) gave.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

/// A P-256 private key in PKCS#8 DER (what PEM calls `PRIVATE KEY`).
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey {
    pub pkcs8_der: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    // Key material never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// The key could not be made or used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError(pub &'static str);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for KeyError {}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> Result<PrivateKey, KeyError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| KeyError("cannot generate a P-256 key (no system randomness?)"))?;
        Ok(PrivateKey {
            pkcs8_der: doc.as_ref().to_vec(),
        })
    }

    fn pair(&self) -> Result<EcdsaKeyPair, KeyError> {
        EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &self.pkcs8_der,
            &SystemRandom::new(),
        )
        .map_err(|_| KeyError("not a P-256 private key in PKCS#8 form"))
    }

    /// The uncompressed public point (65 bytes).
    pub fn public_point(&self) -> Result<Vec<u8>, KeyError> {
        Ok(self.pair()?.public_key().as_ref().to_vec())
    }

    /// A certificate signing request for this key, subject CN=`common_name`.
    pub fn csr_der(&self, common_name: &str) -> Result<Vec<u8>, KeyError> {
        let pair = self.pair()?;
        let info = der::seq(&[
            der::integer_zero(),
            subject(common_name),
            spki(pair.public_key().as_ref()),
            // attributes [0] IMPLICIT SET OF Attribute: none.
            vec![0xA0, 0x00],
        ]);
        let signature = pair
            .sign(&SystemRandom::new(), &info)
            .map_err(|_| KeyError("cannot sign the certificate request"))?;
        Ok(der::seq(&[
            info,
            der::seq(&[der::oid(OID_ECDSA_WITH_SHA256)]),
            der::bit_string(signature.as_ref()),
        ]))
    }
}

/// 1.2.840.10045.2.1 id-ecPublicKey
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// 1.2.840.10045.3.1.7 prime256v1
const OID_P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// 1.2.840.10045.4.3.2 ecdsa-with-SHA256
const OID_ECDSA_WITH_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
/// 2.5.4.3 commonName
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

fn subject(common_name: &str) -> Vec<u8> {
    let attr = der::seq(&[der::oid(OID_COMMON_NAME), der::utf8(common_name)]);
    der::seq(&[der::tlv(0x31, &attr)])
}

fn spki(point: &[u8]) -> Vec<u8> {
    der::seq(&[
        der::seq(&[der::oid(OID_EC_PUBLIC_KEY), der::oid(OID_P256)]),
        der::bit_string(point),
    ])
}

/// Just enough DER to write a certificate request.
mod der {
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 6);
        out.push(tag);
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    pub fn seq(items: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &items.concat())
    }

    pub fn oid(encoded: &[u8]) -> Vec<u8> {
        tlv(0x06, encoded)
    }

    pub fn utf8(s: &str) -> Vec<u8> {
        tlv(0x0C, s.as_bytes())
    }

    pub fn integer_zero() -> Vec<u8> {
        vec![0x02, 0x01, 0x00]
    }

    /// A BIT STRING with no unused bits.
    pub fn bit_string(bytes: &[u8]) -> Vec<u8> {
        let mut content = Vec::with_capacity(bytes.len() + 1);
        content.push(0);
        content.extend_from_slice(bytes);
        tlv(0x03, &content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_use_the_short_and_long_forms() {
        assert_eq!(der::tlv(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        let long = der::tlv(0x04, &[0; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        assert_eq!(long.len(), 203);
        let longer = der::tlv(0x04, &[0; 300]);
        assert_eq!(&longer[..4], &[0x04, 0x82, 0x01, 0x2C]);
    }

    #[test]
    fn a_request_carries_the_key_and_a_valid_signature() {
        let key = PrivateKey::generate().unwrap();
        let csr = key.csr_der("pi-1").unwrap();
        let point = key.public_point().unwrap();
        assert_eq!(point.len(), 65);
        // The public point and the name are in the request.
        assert!(csr.windows(point.len()).any(|w| w == point.as_slice()));
        assert!(csr.windows(4).any(|w| w == b"pi-1"));
        // The signature verifies over the request info with the public key:
        // find the info (the first element of the outer SEQUENCE).
        let (info, rest) = split_first_element(&csr[header_len(&csr)..]);
        let (_alg, sig) = split_first_element(rest);
        let sig = &sig[header_len(sig) + 1..]; // BIT STRING: skip unused-bits byte
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point)
            .verify(info, sig)
            .unwrap();
        // Two keys are different keys.
        assert_ne!(PrivateKey::generate().unwrap(), key);
        assert_eq!(format!("{key:?}"), "PrivateKey(..)");
        assert!(
            PrivateKey {
                pkcs8_der: vec![1, 2, 3]
            }
            .csr_der("x")
            .is_err()
        );
    }

    fn header_len(der: &[u8]) -> usize {
        if der[1] < 0x80 {
            2
        } else {
            2 + usize::from(der[1] & 0x7F)
        }
    }

    fn split_first_element(der: &[u8]) -> (&[u8], &[u8]) {
        let h = header_len(der);
        let len = if der[1] < 0x80 {
            usize::from(der[1])
        } else {
            der[2..h]
                .iter()
                .fold(0usize, |n, &b| (n << 8) | usize::from(b))
        };
        der.split_at(h + len)
    }
}
