//! PEM (RFC 7468): the text form of keys and certificates in the agent's
//! state directory, the server's TLS directory and operator credentials.
//!
//! Only what those files need: write a block, and read every block of a
//! file in order (text outside blocks, such as a credential's comment lines,
//! is skipped). A block that starts and does not end, or whose body is not
//! base64, is an error naming its label and line.

use std::fmt;

use crate::base64::{self, Alphabet};

/// One `-----BEGIN LABEL-----` … `-----END LABEL-----` block.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    pub label: String,
    pub der: Vec<u8>,
}

impl fmt::Debug for Block {
    // Never print key material, even in a test failure.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block({}, {} bytes)", self.label, self.der.len())
    }
}

/// Writes one block, the body in lines of 64 characters.
pub fn encode(label: &str, der: &[u8]) -> String {
    let body = base64::encode(der, Alphabet::Standard);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Why a PEM text could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PemError {
    /// A BEGIN line without its END line.
    Unterminated { label: String, line: usize },
    /// An END line that does not match the BEGIN line.
    Mismatched { label: String, line: usize },
    /// The body of a block is not base64.
    BadBody {
        label: String,
        line: usize,
        source: base64::DecodeError,
    },
}

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemError::Unterminated { label, line } => {
                write!(f, "line {line}: {label} block has no END line")
            }
            PemError::Mismatched { label, line } => {
                write!(f, "line {line}: END line does not match BEGIN {label}")
            }
            PemError::BadBody {
                label,
                line,
                source,
            } => write!(f, "line {line}: {label} block: {source}"),
        }
    }
}

impl std::error::Error for PemError {}

/// Every block of `text`, in order.
pub fn decode_all(text: &str) -> Result<Vec<Block>, PemError> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let begin_line = i + 1;
        let mut body = String::new();
        let mut ended = false;
        for (j, line) in lines.by_ref() {
            let line = line.trim();
            if let Some(end) = line
                .strip_prefix("-----END ")
                .and_then(|l| l.strip_suffix("-----"))
            {
                if end != label {
                    return Err(PemError::Mismatched {
                        label: label.to_owned(),
                        line: j + 1,
                    });
                }
                ended = true;
                break;
            }
            body.push_str(line);
        }
        if !ended {
            return Err(PemError::Unterminated {
                label: label.to_owned(),
                line: begin_line,
            });
        }
        let der =
            base64::decode(&body, Alphabet::Standard).map_err(|source| PemError::BadBody {
                label: label.to_owned(),
                line: begin_line,
                source,
            })?;
        blocks.push(Block {
            label: label.to_owned(),
            der,
        });
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_with_text_around_them() {
        let der: Vec<u8> = (0..200u8).collect();
        let mut text = String::from("# a comment\nserver = https://x:1\n");
        text.push_str(&encode("CERTIFICATE", &der));
        text.push_str(&encode("PRIVATE KEY", &[1, 2, 3]));
        let blocks = decode_all(&text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "CERTIFICATE");
        assert_eq!(blocks[0].der, der);
        assert_eq!(blocks[1].label, "PRIVATE KEY");
        assert_eq!(blocks[1].der, [1, 2, 3]);
        // Lines are 64 characters at most.
        assert!(encode("X", &der).lines().all(|l| l.len() <= 64));
        // Debug never shows the bytes.
        assert_eq!(format!("{:?}", blocks[1]), "Block(PRIVATE KEY, 3 bytes)");
    }

    #[test]
    fn broken_blocks_are_named() {
        let good = encode("CERTIFICATE", &[9; 10]);
        let cut = good.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(
            decode_all(&cut),
            Err(PemError::Unterminated {
                label: "CERTIFICATE".into(),
                line: 1
            })
        );
        let wrong_end = good.replace("END CERTIFICATE", "END KEY");
        assert_eq!(
            decode_all(&wrong_end).unwrap_err().to_string(),
            "line 3: END line does not match BEGIN CERTIFICATE"
        );
        let bad = "-----BEGIN X-----\n!!!!\n-----END X-----\n";
        assert_eq!(
            decode_all(bad).unwrap_err().to_string(),
            "line 1: X block: invalid base64 character at offset 0"
        );
        assert_eq!(decode_all("no blocks here").unwrap(), vec![]);
    }
}
