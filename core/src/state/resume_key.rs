//! Resume keys (claims 39–40): `file id | open timestamp | client pid | slot | nonce`, sealed
//! with a server-held MAC key. The sealed form is 50 bytes (version, length, body, MAC), so it
//! fits the 56 bytes of `rdma_connect` private data; users see it as base64url.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const KEY_VERSION: u8 = 1;
const BODY_LEN: usize = 8 + 8 + 4 + 4 + 8;
const TAG_LEN: usize = 16;
/// Bytes in a sealed key.
pub const SEALED_LEN: usize = 2 + BODY_LEN + TAG_LEN;
/// Characters in a printed key.
pub const TOKEN_LEN: usize = (SEALED_LEN * 4).div_ceil(3);

/// What a key names: one open of one file, and which grant of that open it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResumeKey {
    pub file_id: u64,
    /// When the open was made, unix milliseconds.
    pub opened_at: u64,
    /// Process id of the client program that opened the file.
    pub pid: u32,
    /// Index of the open's state record (claim 40).
    pub slot: u32,
    /// Random per grant: the original holder and each pass get their own.
    pub nonce: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("resume key is not valid base64url of the right length")]
    Malformed,
    #[error("resume key has unknown version {0}")]
    Version(u8),
    #[error("resume key failed authentication (forged or altered)")]
    BadMac,
}

/// Seals and opens keys with the server's MAC key (kept in the store, so a restarted or
/// failed-over server verifies old keys).
#[derive(Clone)]
pub struct KeySealer {
    mac_key: [u8; 32],
}

impl KeySealer {
    pub fn new(mac_key: [u8; 32]) -> Self {
        Self { mac_key }
    }

    /// The key itself, for a planned drain (it travels wrapped, to a peer only).
    pub fn mac_key(&self) -> [u8; 32] {
        self.mac_key
    }

    fn tag(&self, head_and_body: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.mac_key).expect("any key length");
        mac.update(b"handoff resume key v1");
        mac.update(head_and_body);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&full[..TAG_LEN]);
        out
    }

    pub fn seal(&self, key: &ResumeKey) -> [u8; SEALED_LEN] {
        let mut out = [0u8; SEALED_LEN];
        out[0] = KEY_VERSION;
        out[1] = (BODY_LEN + TAG_LEN) as u8;
        out[2..10].copy_from_slice(&key.file_id.to_be_bytes());
        out[10..18].copy_from_slice(&key.opened_at.to_be_bytes());
        out[18..22].copy_from_slice(&key.pid.to_be_bytes());
        out[22..26].copy_from_slice(&key.slot.to_be_bytes());
        out[26..34].copy_from_slice(&key.nonce.to_be_bytes());
        let tag = self.tag(&out[..2 + BODY_LEN]);
        out[2 + BODY_LEN..].copy_from_slice(&tag);
        out
    }

    /// Authenticates a sealed key before anything is looked up with it. Trailing zero
    /// padding (as rdma_cm adds to private data) is accepted; anything else is not.
    pub fn open(&self, sealed: &[u8]) -> Result<ResumeKey, KeyError> {
        let mut r = crate::codec::Reader::new(sealed);
        let version = r.u8().map_err(|_| KeyError::Malformed)?;
        if version != KEY_VERSION {
            return Err(KeyError::Version(version));
        }
        let len = r.u8().map_err(|_| KeyError::Malformed)?;
        if usize::from(len) != BODY_LEN + TAG_LEN {
            return Err(KeyError::Malformed);
        }
        let body = r.take(BODY_LEN).map_err(|_| KeyError::Malformed)?;
        let tag = r.array::<TAG_LEN>().map_err(|_| KeyError::Malformed)?;
        let padding = r.take(r.remaining()).map_err(|_| KeyError::Malformed)?;
        if padding.iter().any(|b| *b != 0) {
            return Err(KeyError::Malformed);
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.mac_key).expect("any key length");
        mac.update(b"handoff resume key v1");
        mac.update(&[version, len]);
        mac.update(body);
        mac.verify_truncated_left(&tag)
            .map_err(|_| KeyError::BadMac)?;
        let mut b = crate::codec::Reader::new(body);
        let parse = |b: &mut crate::codec::Reader| -> Result<ResumeKey, crate::codec::WireError> {
            Ok(ResumeKey {
                file_id: b.u64()?,
                opened_at: b.u64()?,
                pid: b.u32()?,
                slot: b.u32()?,
                nonce: b.u64()?,
            })
        };
        parse(&mut b).map_err(|_| KeyError::Malformed)
    }

    pub fn to_token(&self, key: &ResumeKey) -> String {
        URL_SAFE_NO_PAD.encode(self.seal(key))
    }
}

/// Decodes a printed key to its sealed bytes (no authentication yet: see [`KeySealer::open`]).
pub fn token_to_sealed(token: &str) -> Result<Vec<u8>, KeyError> {
    let token = token.trim();
    if token.len() != TOKEN_LEN {
        return Err(KeyError::Malformed);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| KeyError::Malformed)
}

pub fn sealed_to_token(sealed: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ResumeKey {
        ResumeKey {
            file_id: 11,
            opened_at: 1_700_000_000_000,
            pid: 4242,
            slot: 7,
            nonce: 99,
        }
    }

    #[test]
    fn seal_fits_rdma_private_data_and_round_trips() {
        const { assert!(SEALED_LEN <= 56) };
        let s = KeySealer::new([3; 32]);
        let token = s.to_token(&key());
        assert_eq!(token.len(), TOKEN_LEN);
        let sealed = token_to_sealed(&token).unwrap();
        assert_eq!(s.open(&sealed).unwrap(), key());
        // Zero padding to 56 bytes, as rdma_cm delivers it, still opens.
        let mut padded = sealed.clone();
        padded.resize(56, 0);
        assert_eq!(s.open(&padded).unwrap(), key());
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let s = KeySealer::new([3; 32]);
        let sealed = s.seal(&key());
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed;
            bad[i / 8] ^= 1 << (i % 8);
            assert!(s.open(&bad).is_err(), "bit {i}");
        }
        assert_eq!(KeySealer::new([4; 32]).open(&sealed), Err(KeyError::BadMac));
        assert_eq!(token_to_sealed("short"), Err(KeyError::Malformed));
    }
}
