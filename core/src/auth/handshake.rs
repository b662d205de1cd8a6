//! The mutual challenge-response, one struct per state; each consumes itself and returns the
//! next (rustls style), so a step cannot be repeated or skipped.
//!
//! ```text
//! client                                    server
//!   Hello{version, name, client nonce}  ──▶
//!                                       ◀──  Challenge{server nonce, HMAC(secret, "server" | name | cn | sn)}
//!   (client checks the server's proof; on mismatch it stops and sends nothing else)
//!   Proof{HMAC(secret, "client" | name | sn | cn)} ──▶
//!                                       ◀──  Welcome  (or AuthFailed)
//! ```
//! The server proves itself first, so a client talking to an impostor (or to a server that
//! holds a different secret for it) learns so before it reveals anything. Both sides then
//! derive the session keys from the secret and both nonces.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{AuthError, ClientDirectory, Identity, SessionKeys};
use crate::wire::{Message, PROTOCOL_VERSION};

fn proof(
    secret: &[u8; 32],
    label: &[u8],
    name: &str,
    first: &[u8; 32],
    second: &[u8; 32],
) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(label);
    mac.update(&[name.len() as u8]);
    mac.update(name.as_bytes());
    mac.update(first);
    mac.update(second);
    mac
}

const CLIENT_LABEL: &[u8] = b"handoff client proof v1";
const SERVER_LABEL: &[u8] = b"handoff server proof v1";

/// Client: sends Hello.
pub fn client_start(identity: &Identity, client_nonce: [u8; 32]) -> (AwaitChallenge, Message) {
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        client: identity.name.clone(),
        client_nonce,
    };
    (
        AwaitChallenge {
            identity: identity.clone(),
            client_nonce,
        },
        hello,
    )
}

pub struct AwaitChallenge {
    identity: Identity,
    client_nonce: [u8; 32],
}

impl AwaitChallenge {
    /// Checks the server's proof; only if it holds is the client's own proof returned.
    pub fn on_message(self, msg: Message) -> Result<(AwaitWelcome, Message), AuthError> {
        let (server_nonce, got) = match msg {
            Message::Challenge {
                server_nonce,
                proof,
            } => (server_nonce, proof),
            Message::AuthFailed { message } => return Err(AuthError::Rejected(message)),
            _ => return Err(AuthError::Unexpected("message instead of a challenge")),
        };
        let id = &self.identity;
        proof(
            &id.secret,
            SERVER_LABEL,
            &id.name,
            &self.client_nonce,
            &server_nonce,
        )
        .verify_slice(&got)
        .map_err(|_| AuthError::ServerImpostor)?;
        let p = proof(
            &id.secret,
            CLIENT_LABEL,
            &id.name,
            &server_nonce,
            &self.client_nonce,
        )
        .finalize()
        .into_bytes();
        let keys = SessionKeys::derive(&id.secret, &server_nonce, &self.client_nonce);
        Ok((AwaitWelcome { keys }, Message::Proof { proof: p.into() }))
    }
}

pub struct AwaitWelcome {
    keys: SessionKeys,
}

impl AwaitWelcome {
    pub fn on_message(self, msg: Message) -> Result<SessionKeys, AuthError> {
        match msg {
            Message::Welcome => Ok(self.keys),
            Message::AuthFailed { .. } => Err(AuthError::ClientRejected),
            _ => Err(AuthError::Unexpected("message instead of Welcome")),
        }
    }
}

/// Server: answers Hello with a challenge carrying its own proof. An unknown client name is
/// refused at once (a clear error matters more here than hiding which names exist).
pub fn server_on_hello(
    directory: &ClientDirectory,
    msg: Message,
    server_nonce: [u8; 32],
) -> Result<(AwaitProof, Message), AuthError> {
    let (version, client, client_nonce) = match msg {
        Message::Hello {
            version,
            client,
            client_nonce,
        } => (version, client, client_nonce),
        _ => return Err(AuthError::Unexpected("message instead of Hello")),
    };
    if version != PROTOCOL_VERSION {
        return Err(AuthError::Version(version));
    }
    let secret = *directory
        .secret(&client)
        .ok_or_else(|| AuthError::UnknownClient(client.clone()))?;
    let p = proof(&secret, SERVER_LABEL, &client, &client_nonce, &server_nonce)
        .finalize()
        .into_bytes();
    let challenge = Message::Challenge {
        server_nonce,
        proof: p.into(),
    };
    Ok((
        AwaitProof {
            client,
            secret,
            server_nonce,
            client_nonce,
        },
        challenge,
    ))
}

pub struct AwaitProof {
    client: String,
    secret: [u8; 32],
    server_nonce: [u8; 32],
    client_nonce: [u8; 32],
}

impl AwaitProof {
    /// The client's name and the session keys, and the Welcome to send.
    pub fn on_message(self, msg: Message) -> Result<(String, SessionKeys, Message), AuthError> {
        let got = match msg {
            Message::Proof { proof } => proof,
            _ => {
                return Err(AuthError::Unexpected(
                    "message instead of the client's proof",
                ))
            }
        };
        proof(
            &self.secret,
            CLIENT_LABEL,
            &self.client,
            &self.server_nonce,
            &self.client_nonce,
        )
        .verify_slice(&got)
        .map_err(|_| AuthError::ClientRejected)?;
        let keys = SessionKeys::derive(&self.secret, &self.server_nonce, &self.client_nonce);
        Ok((self.client, keys, Message::Welcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Session, Side};

    fn dir(id: &Identity) -> ClientDirectory {
        ClientDirectory::parse(&id.to_line()).unwrap()
    }

    #[test]
    fn both_sides_prove_themselves() {
        let id = Identity::generate("c1", &mut rand::rngs::OsRng).unwrap();
        let (c, hello) = client_start(&id, [8; 32]);
        let (s, challenge) = server_on_hello(&dir(&id), hello, [7; 32]).unwrap();
        let (c, proof_msg) = c.on_message(challenge).unwrap();
        let (name, skeys, welcome) = s.on_message(proof_msg).unwrap();
        assert_eq!(name, "c1");
        let mut c = Session::new(c.on_message(welcome).unwrap(), Side::Client);
        let mut s = Session::new(skeys, Side::Server);
        let (seq, mac) = c.seal(1, b"p");
        s.open(&crate::wire::Frame {
            kind: 1,
            seq,
            payload: b"p",
            mac,
        })
        .unwrap();
    }

    #[test]
    fn wrong_client_secret_is_detected_by_both_sides() {
        let id = Identity::generate("c1", &mut rand::rngs::OsRng).unwrap();
        let server_view = Identity {
            secret: [9; 32],
            ..id.clone()
        };
        let (c, hello) = client_start(&id, [8; 32]);
        let (s, challenge) = server_on_hello(&dir(&server_view), hello, [7; 32]).unwrap();
        // The client sees the server cannot prove knowledge of the client's secret...
        assert!(matches!(
            c.on_message(challenge.clone()),
            Err(AuthError::ServerImpostor)
        ));
        // ... and a client that went on regardless (an attacker guessing) is refused.
        let (_, guess) = client_start(&server_view, [8; 32]);
        let _ = guess;
        assert_eq!(
            s.on_message(Message::Proof { proof: [0; 32] }).err(),
            Some(AuthError::ClientRejected)
        );
    }

    #[test]
    fn unknown_client_is_refused_and_impostor_server_detected() {
        let id = Identity::generate("c1", &mut rand::rngs::OsRng).unwrap();
        let stranger = Identity::generate("nobody", &mut rand::rngs::OsRng).unwrap();
        let (_, hello) = client_start(&stranger, [1; 32]);
        assert!(matches!(
            server_on_hello(&dir(&id), hello, [2; 32]),
            Err(AuthError::UnknownClient(_))
        ));
        let (c, _hello) = client_start(&id, [2; 32]);
        let forged = Message::Challenge {
            server_nonce: [1; 32],
            proof: [0; 32],
        };
        assert!(matches!(
            c.on_message(forged),
            Err(AuthError::ServerImpostor)
        ));
    }
}
