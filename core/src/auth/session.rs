//! Per-direction session keys and the MAC + sequence check every post-handshake frame passes.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AuthError;
use crate::wire::{Frame, MAC_LEN};

#[derive(Clone)]
pub struct SessionKeys {
    c2s: [u8; 32],
    s2c: [u8; 32],
    wrap: [u8; 32],
}

impl SessionKeys {
    /// HKDF over the shared secret with both nonces as salt.
    pub fn derive(secret: &[u8; 32], server_nonce: &[u8; 32], client_nonce: &[u8; 32]) -> Self {
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(server_nonce);
        salt[32..].copy_from_slice(client_nonce);
        let hk = Hkdf::<Sha256>::new(Some(&salt), secret);
        let mut c2s = [0u8; 32];
        let mut s2c = [0u8; 32];
        hk.expand(b"handoff session v1 client-to-server", &mut c2s)
            .expect("32 bytes is a valid length");
        hk.expand(b"handoff session v1 server-to-client", &mut s2c)
            .expect("32 bytes is a valid length");
        let mut wrap = [0u8; 32];
        hk.expand(b"handoff session v1 key-wrap", &mut wrap)
            .expect("32 bytes is a valid length");
        Self { c2s, s2c, wrap }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Signs outgoing frames and checks incoming ones: a frame with a wrong MAC, or a sequence
/// number other than the next expected one (replay, drop, reorder), is rejected.
pub struct Session {
    send_key: [u8; 32],
    recv_key: [u8; 32],
    wrap_key: [u8; 32],
    send_seq: u64,
    recv_seq: u64,
}

fn frame_mac(key: &[u8; 32], kind: u8, seq: u64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(&Frame::mac_input(kind, seq));
    mac.update(payload);
    mac
}

impl Session {
    pub fn new(keys: SessionKeys, side: Side) -> Self {
        let (send_key, recv_key) = match side {
            Side::Client => (keys.c2s, keys.s2c),
            Side::Server => (keys.s2c, keys.c2s),
        };
        Self {
            send_key,
            recv_key,
            wrap_key: keys.wrap,
            send_seq: 0,
            recv_seq: 0,
        }
    }

    /// Wraps (or unwraps: the same operation) a 32-byte secret for this session only: XOR
    /// with a key both ends derived from the handshake and nobody else can. A secret sent this
    /// way (a drained server's resume-key MAC key) is unreadable on the wire; the frame's MAC
    /// protects it from alteration.
    pub fn wrap_secret(&self, secret: &[u8; 32]) -> [u8; 32] {
        let mut out = *secret;
        for (o, k) in out.iter_mut().zip(self.wrap_key.iter()) {
            *o ^= k;
        }
        out
    }

    /// The sequence number and MAC for the next outgoing frame.
    pub fn seal(&mut self, kind: u8, payload: &[u8]) -> (u64, [u8; MAC_LEN]) {
        let seq = self.send_seq;
        self.send_seq += 1;
        let full = frame_mac(&self.send_key, kind, seq, payload)
            .finalize()
            .into_bytes();
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&full[..MAC_LEN]);
        (seq, mac)
    }

    pub fn open(&mut self, frame: &Frame) -> Result<(), AuthError> {
        frame_mac(&self.recv_key, frame.kind, frame.seq, frame.payload)
            .verify_truncated_left(&frame.mac)
            .map_err(|_| AuthError::BadMac)?;
        if frame.seq != self.recv_seq {
            return Err(AuthError::Sequence {
                expected: self.recv_seq,
                got: frame.seq,
            });
        }
        self.recv_seq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tamper_replay_and_reorder_are_detected() {
        let keys = SessionKeys::derive(&[1; 32], &[2; 32], &[3; 32]);
        let mut c = Session::new(keys.clone(), Side::Client);
        let mut s = Session::new(keys, Side::Server);
        let (seq0, mac0) = c.seal(0x10, b"first");
        let (seq1, mac1) = c.seal(0x10, b"second");
        let f0 = Frame {
            kind: 0x10,
            seq: seq0,
            payload: b"first",
            mac: mac0,
        };
        let f1 = Frame {
            kind: 0x10,
            seq: seq1,
            payload: b"second",
            mac: mac1,
        };
        // Reordered: the second frame first.
        assert_eq!(
            s.open(&f1),
            Err(AuthError::Sequence {
                expected: 0,
                got: 1
            })
        );
        s.open(&f0).unwrap();
        // Replayed.
        assert!(s.open(&f0).is_err());
        // Tampered payload or kind.
        assert_eq!(
            s.open(&Frame {
                payload: b"secoNd",
                ..f1
            }),
            Err(AuthError::BadMac)
        );
        assert_eq!(s.open(&Frame { kind: 0x11, ..f1 }), Err(AuthError::BadMac));
        s.open(&f1).unwrap();
        // A frame the server itself would send does not verify as coming from the client.
        let (seq, mac) = s.seal(0x10, b"x");
        let mut s2 = Session::new(
            SessionKeys::derive(&[1; 32], &[2; 32], &[3; 32]),
            Side::Server,
        );
        assert_eq!(
            s2.open(&Frame {
                kind: 0x10,
                seq,
                payload: b"x",
                mac
            }),
            Err(AuthError::BadMac)
        );
    }
}
