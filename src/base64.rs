//! Base64 (RFC 4648), the standard alphabet with padding for PEM files and
//! the URL-safe one without padding for join tokens.
//!
//! Forty lines instead of a dependency: the agent needs it for its key and
//! certificate files and its join token, and every byte of the agent's
//! binary is paid for on a Pi. Decoding is strict: a character outside the
//! alphabet, a wrong length or non-zero padding bits are errors, so one
//! token or file has exactly one spelling.

use std::fmt;

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Which alphabet, and whether `=` padding is written and required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alphabet {
    /// `+` `/`, padded: PEM.
    Standard,
    /// `-` `_`, unpadded: tokens that travel on command lines.
    UrlSafe,
}

impl Alphabet {
    fn table(self) -> &'static [u8; 64] {
        match self {
            Alphabet::Standard => STANDARD,
            Alphabet::UrlSafe => URL_SAFE,
        }
    }

    fn padded(self) -> bool {
        self == Alphabet::Standard
    }
}

/// Encodes `data`.
pub fn encode(data: &[u8], alphabet: Alphabet) -> String {
    let table = alphabet.table();
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(char::from(table[(n >> (18 - 6 * i)) as usize & 63]));
            } else if alphabet.padded() {
                out.push('=');
            }
        }
    }
    out
}

/// Why a base64 text could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A character outside the alphabet, at this byte offset.
    BadCharacter(usize),
    /// A length no encoding produces.
    BadLength,
    /// Bits after the last byte that are not zero (another spelling).
    TrailingBits,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadCharacter(at) => write!(f, "invalid base64 character at offset {at}"),
            DecodeError::BadLength => f.write_str("invalid base64 length"),
            DecodeError::TrailingBits => f.write_str("invalid base64 padding bits"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes `text` (no white space inside).
pub fn decode(text: &str, alphabet: Alphabet) -> Result<Vec<u8>, DecodeError> {
    let bytes = text.as_bytes();
    let body = if alphabet.padded() {
        if !bytes.len().is_multiple_of(4) {
            return Err(DecodeError::BadLength);
        }
        let pad = bytes.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 {
            return Err(DecodeError::BadLength);
        }
        &bytes[..bytes.len() - pad]
    } else {
        bytes
    };
    if body.len() % 4 == 1 {
        return Err(DecodeError::BadLength);
    }
    let table = alphabet.table();
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for (c, chunk) in body.chunks(4).enumerate() {
        let mut n = 0u32;
        for (i, &ch) in chunk.iter().enumerate() {
            let v = table
                .iter()
                .position(|&t| t == ch)
                .ok_or(DecodeError::BadCharacter(c * 4 + i))?;
            n |= (v as u32) << (18 - 6 * i);
        }
        let produced = chunk.len() - 1;
        // The bits below the last byte must be zero (a whole chunk has none).
        let used_bits = 8 * produced;
        if n & ((1 << (24 - used_bits)) - 1) != 0 {
            return Err(DecodeError::TrailingBits);
        }
        for i in 0..produced {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_test_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, coded) in vectors {
            assert_eq!(encode(plain.as_bytes(), Alphabet::Standard), coded);
            assert_eq!(decode(coded, Alphabet::Standard).unwrap(), plain.as_bytes());
            let url = coded.trim_end_matches('=');
            assert_eq!(encode(plain.as_bytes(), Alphabet::UrlSafe), url);
            assert_eq!(decode(url, Alphabet::UrlSafe).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        for alphabet in [Alphabet::Standard, Alphabet::UrlSafe] {
            for len in 0..all.len() {
                let text = encode(&all[..len], alphabet);
                assert_eq!(decode(&text, alphabet).unwrap(), &all[..len]);
            }
        }
        assert!(encode(&[0xfb, 0xff], Alphabet::Standard).contains('+'));
        assert!(encode(&[0xfb, 0xff], Alphabet::UrlSafe).contains('-'));
    }

    #[test]
    fn broken_input_is_refused() {
        use DecodeError::*;
        assert_eq!(decode("Zm9", Alphabet::Standard), Err(BadLength));
        assert_eq!(decode("Z===", Alphabet::Standard), Err(BadLength));
        assert_eq!(decode("Z", Alphabet::UrlSafe), Err(BadLength));
        assert_eq!(decode("Zm9v!A", Alphabet::UrlSafe), Err(BadCharacter(4)));
        assert_eq!(decode("Zm+v", Alphabet::UrlSafe), Err(BadCharacter(2)));
        assert_eq!(decode("Zm-v", Alphabet::Standard), Err(BadCharacter(2)));
        // "Zh==" decodes to "f" with non-zero leftover bits: refused.
        assert_eq!(decode("Zh==", Alphabet::Standard), Err(TrailingBits));
        assert_eq!(decode("Zm9=", Alphabet::Standard), Err(TrailingBits));
        assert_eq!(decode("Zm8=", Alphabet::Standard).unwrap(), b"fo");
    }
}
