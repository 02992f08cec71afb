//! Whose signatures this agent obeys: the operators' public keys.
//!
//! Two sources, neither under the server's control once the agent runs:
//! the operators file (`--operator-keys`, default `/etc/monitor/operators`,
//! installed by the administrator) and the keys the join token carried at
//! enrolment (trust on enrolment: the server made the token, so a server
//! that was already compromised when the agent enrolled could have added a
//! key; after that, it cannot). The enrolment's keys are kept in the state
//! directory as `operators.enrolled`, in the same format.
//!
//! This module reads files only at start and after an enrolment, never on
//! a command's path.

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};

use monitor::files::{self, PUBLIC_MODE};
use monitor::signing::{KeysError, OperatorKey, PUBLIC_KEY_BYTES, parse_keys};

/// The default operators file.
pub const DEFAULT_OPERATOR_KEYS: &str = "/etc/monitor/operators";
/// The keys a join token carried, in the state directory.
pub const ENROLLED_KEYS_FILE: &str = "operators.enrolled";
/// Most keys kept (a fleet has a handful of operators).
pub const MAX_KEYS: usize = 256;

/// An operators file that cannot be used.
#[derive(Debug)]
pub enum OperatorsError {
    Read(files::FileError),
    Parse { path: PathBuf, error: KeysError },
    TooMany { path: PathBuf },
}

impl fmt::Display for OperatorsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperatorsError::Read(e) => write!(f, "{e}"),
            OperatorsError::Parse { path, error } => write!(f, "{}: {error}", path.display()),
            OperatorsError::TooMany { path } => {
                write!(f, "{}: more than {MAX_KEYS} keys", path.display())
            }
        }
    }
}

impl std::error::Error for OperatorsError {}

/// Reads the keys of `path`; a missing file is no keys.
fn read_keys(path: &Path) -> Result<Vec<OperatorKey>, OperatorsError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = files::read_text(path).map_err(OperatorsError::Read)?;
    let keys = parse_keys(&text).map_err(|error| OperatorsError::Parse {
        path: path.to_owned(),
        error,
    })?;
    if keys.len() > MAX_KEYS {
        return Err(OperatorsError::TooMany {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

/// The keys this agent trusts.
#[derive(Debug, Default)]
pub struct Operators {
    keys: RefCell<Vec<OperatorKey>>,
}

impl Operators {
    /// The keys of `file` (`None`: the default file, optional) and of the
    /// state directory's enrolment.
    pub fn load(file: &Path, state_dir: &Path) -> Result<Operators, OperatorsError> {
        let mut keys = read_keys(file)?;
        keys.extend(read_keys(&state_dir.join(ENROLLED_KEYS_FILE))?);
        keys.truncate(MAX_KEYS);
        Ok(Operators {
            keys: RefCell::new(keys),
        })
    }

    /// Trusts `keys` from now on (a join token's), and keeps them in the
    /// state directory for the next starts.
    pub fn add_enrolled(
        &self,
        state_dir: &Path,
        keys: &[[u8; PUBLIC_KEY_BYTES]],
    ) -> Result<(), files::FileError> {
        let enrolled: Vec<OperatorKey> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| OperatorKey {
                name: format!("enrolled-{}", i + 1),
                key: *key,
            })
            .collect();
        let mut text = String::from(
            "# Operator keys the join token carried at enrolment (trust on enrolment).\n",
        );
        for k in &enrolled {
            text.push_str(&k.line());
            text.push('\n');
        }
        files::create_private_dir(state_dir)?;
        files::write_atomic(
            &state_dir.join(ENROLLED_KEYS_FILE),
            text.as_bytes(),
            PUBLIC_MODE,
        )?;
        let mut mine = self.keys.borrow_mut();
        for k in enrolled {
            if !mine.iter().any(|m| m.key == k.key) && mine.len() < MAX_KEYS {
                mine.push(k);
            }
        }
        Ok(())
    }

    /// The name this agent knows `key` by, if it trusts it.
    pub fn trusts(&self, key: &[u8]) -> Option<String> {
        self.keys
            .borrow()
            .iter()
            .find(|k| k.key[..] == *key)
            .map(|k| k.name.clone())
    }

    pub fn len(&self) -> usize {
        self.keys.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_file_and_the_enrolment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("operators");
        let state = dir.path().join("state");
        let alice = monitor::signing::SigningKey::generate()
            .unwrap()
            .public_key();
        let bob = monitor::signing::SigningKey::generate()
            .unwrap()
            .public_key();
        let none = Operators::load(&file, &state).unwrap();
        assert!(none.is_empty());
        std::fs::write(
            &file,
            format!(
                "{}\n",
                OperatorKey {
                    name: "alice".into(),
                    key: alice
                }
                .line()
            ),
        )
        .unwrap();
        let ops = Operators::load(&file, &state).unwrap();
        assert_eq!(ops.trusts(&alice).as_deref(), Some("alice"));
        assert_eq!(ops.trusts(&bob), None);
        ops.add_enrolled(&state, &[bob, alice]).unwrap();
        assert_eq!(ops.trusts(&bob).as_deref(), Some("enrolled-1"));
        assert_eq!(ops.len(), 2, "a key known twice is kept once");
        // And after a restart.
        let again = Operators::load(&file, &state).unwrap();
        assert_eq!(again.trusts(&bob).as_deref(), Some("enrolled-1"));
        assert_eq!(again.trusts(&alice).as_deref(), Some("alice"));
        std::fs::write(&file, "alice rsa:x\n").unwrap();
        let err = Operators::load(&file, &state).unwrap_err().to_string();
        assert!(
            err.ends_with("line 1: the key must start with 'ed25519:'"),
            "{err}"
        );
    }
}
