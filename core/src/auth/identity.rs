//! Client identities: a name and a 32-byte pre-shared secret, written as `NAME:<64 hex>`.

use std::collections::HashMap;
use std::fmt;

use rand::{CryptoRng, RngCore};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("line {line}: expected NAME:<64 hex characters>")]
    Format { line: usize },
    #[error("line {line}: client name {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ - @")]
    Name { line: usize, name: String },
    #[error("line {line}: client {name:?} is listed twice")]
    Duplicate { line: usize, name: String },
    #[error("no identity line found")]
    Empty,
}

pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub secret: [u8; 32],
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new identity with a secret drawn from `rng` (`handoff keygen` passes the OS's).
    pub fn generate(
        name: &str,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, IdentityError> {
        if !valid_name(name) {
            return Err(IdentityError::Name {
                line: 1,
                name: name.to_owned(),
            });
        }
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Ok(Self {
            name: name.to_owned(),
            secret,
        })
    }

    /// The `NAME:hex` line.
    pub fn to_line(&self) -> String {
        format!("{}:{}", self.name, hex::encode(self.secret))
    }

    fn parse_line(line: &str, lineno: usize) -> Result<Self, IdentityError> {
        let (name, hexsecret) = line
            .split_once(':')
            .ok_or(IdentityError::Format { line: lineno })?;
        let name = name.trim();
        if !valid_name(name) {
            return Err(IdentityError::Name {
                line: lineno,
                name: name.to_owned(),
            });
        }
        let mut secret = [0u8; 32];
        hex::decode_to_slice(hexsecret.trim(), &mut secret)
            .map_err(|_| IdentityError::Format { line: lineno })?;
        Ok(Self {
            name: name.to_owned(),
            secret,
        })
    }

    /// The first identity line of a file (blank and `#` lines ignored).
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let (n, line) = content_lines(text).next().ok_or(IdentityError::Empty)?;
        Self::parse_line(line, n)
    }
}

fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// The server's list of clients it will talk to.
#[derive(Clone, Default)]
pub struct ClientDirectory {
    secrets: HashMap<String, [u8; 32]>,
}

impl ClientDirectory {
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let mut secrets = HashMap::new();
        for (n, line) in content_lines(text) {
            let id = Identity::parse_line(line, n)?;
            if secrets.insert(id.name.clone(), id.secret).is_some() {
                return Err(IdentityError::Duplicate {
                    line: n,
                    name: id.name,
                });
            }
        }
        Ok(Self { secrets })
    }

    pub fn secret(&self, name: &str) -> Option<&[u8; 32]> {
        self.secrets.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.secrets.contains_key(name)
    }

    /// The listed clients' names, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keygen_lines_and_rejects_bad_ones() {
        let id = Identity::generate("c1", &mut rand::rngs::OsRng).unwrap();
        assert_eq!(
            Identity::parse(&format!("# me\n\n{}\n", id.to_line())).unwrap(),
            id
        );
        let dir = ClientDirectory::parse(&format!(
            "{}\n# x\n{}\n",
            id.to_line(),
            Identity::generate("c2", &mut rand::rngs::OsRng)
                .unwrap()
                .to_line()
        ))
        .unwrap();
        assert_eq!(dir.len(), 2);
        assert_eq!(dir.secret("c1"), Some(&id.secret));
        assert_eq!(
            Identity::parse("c1:abc"),
            Err(IdentityError::Format { line: 1 })
        );
        assert!(matches!(
            Identity::parse("bad name:00"),
            Err(IdentityError::Name { .. })
        ));
        assert!(matches!(
            ClientDirectory::parse(&format!("{0}\n{0}", id.to_line())),
            Err(IdentityError::Duplicate { line: 2, .. })
        ));
        assert_eq!(
            Identity::parse("\n# only comments\n"),
            Err(IdentityError::Empty)
        );
    }
}
