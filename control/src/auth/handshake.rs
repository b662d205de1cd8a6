//! The mutual challenge-response, one struct per state; each consumes itself and returns the
//! next (rustls style), so a step cannot be repeated or skipped.
//!
//! ```text
//! client                                server
//!   Hello{version, name}        ──▶
//!                               ◀──    Challenge{server nonce}
//!   Proof{client nonce, HMAC(secret, "client" | name | sn | cn)} ──▶
//!                               ◀──    ServerProof{HMAC(secret, "server" | name | cn | sn)}
//! ```
//! Both sides then derive the session keys from the secret and both nonces.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{AuthError, ClientDirectory, Identity, SessionKeys};
use crate::wire::{Message, PROTOCOL_VERSION};

fn proof(secret: &[u8; 32], label: &[u8], name: &str, first: &[u8; 32], second: &[u8; 32]) -> Hmac<Sha256> {
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
pub fn client_start(identity: &Identity) -> (AwaitChallenge, Message) {
    let hello = Message::Hello { version: PROTOCOL_VERSION, client: identity.name.clone() };
    (AwaitChallenge { identity: identity.clone() }, hello)
}

pub struct AwaitChallenge {
    identity: Identity,
}

impl AwaitChallenge {
    pub fn on_message(self, msg: Message, client_nonce: [u8; 32]) -> Result<(AwaitServerProof, Message), AuthError> {
        let server_nonce = match msg {
            Message::Challenge { server_nonce } => server_nonce,
            Message::AuthFailed { message } => return Err(AuthError::Rejected(message)),
            _ => return Err(AuthError::Unexpected("message instead of a challenge")),
        };
        let id = &self.identity;
        let p = proof(&id.secret, CLIENT_LABEL, &id.name, &server_nonce, &client_nonce).finalize().into_bytes();
        let reply = Message::Proof { client_nonce, proof: p.into() };
        Ok((AwaitServerProof { identity: self.identity, server_nonce, client_nonce }, reply))
    }
}

pub struct AwaitServerProof {
    identity: Identity,
    server_nonce: [u8; 32],
    client_nonce: [u8; 32],
}

impl AwaitServerProof {
    /// The server proved it knows this client's secret: the session keys.
    pub fn on_message(self, msg: Message) -> Result<SessionKeys, AuthError> {
        let got = match msg {
            Message::ServerProof { proof } => proof,
            Message::AuthFailed { .. } => return Err(AuthError::ClientRejected),
            _ => return Err(AuthError::Unexpected("message instead of the server's proof")),
        };
        let id = &self.identity;
        proof(&id.secret, SERVER_LABEL, &id.name, &self.client_nonce, &self.server_nonce)
            .verify_slice(&got)
            .map_err(|_| AuthError::ServerImpostor)?;
        Ok(SessionKeys::derive(&id.secret, &self.server_nonce, &self.client_nonce))
    }
}

/// Server: answers Hello with a challenge. An unknown client still gets a challenge, so the
/// reply does not reveal which names exist; its proof then fails.
pub fn server_on_hello(
    directory: &ClientDirectory,
    msg: Message,
    server_nonce: [u8; 32],
) -> Result<(AwaitProof, Message), AuthError> {
    let (version, client) = match msg {
        Message::Hello { version, client } => (version, client),
        _ => return Err(AuthError::Unexpected("message instead of Hello")),
    };
    if version != PROTOCOL_VERSION {
        return Err(AuthError::Version(version));
    }
    let secret = directory.secret(&client).copied();
    Ok((AwaitProof { client, secret, server_nonce }, Message::Challenge { server_nonce }))
}

pub struct AwaitProof {
    client: String,
    secret: Option<[u8; 32]>,
    server_nonce: [u8; 32],
}

impl AwaitProof {
    /// The client's name, the session keys and the server's proof to send back.
    pub fn on_message(self, msg: Message) -> Result<(String, SessionKeys, Message), AuthError> {
        let (client_nonce, got) = match msg {
            Message::Proof { client_nonce, proof } => (client_nonce, proof),
            _ => return Err(AuthError::Unexpected("message instead of the client's proof")),
        };
        let secret = self.secret.ok_or(AuthError::ClientRejected)?;
        proof(&secret, CLIENT_LABEL, &self.client, &self.server_nonce, &client_nonce)
            .verify_slice(&got)
            .map_err(|_| AuthError::ClientRejected)?;
        let p = proof(&secret, SERVER_LABEL, &self.client, &client_nonce, &self.server_nonce).finalize().into_bytes();
        let keys = SessionKeys::derive(&secret, &self.server_nonce, &client_nonce);
        Ok((self.client, keys, Message::ServerProof { proof: p.into() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Session, Side};

    fn run(client: &Identity, server_dir: &ClientDirectory) -> (Result<SessionKeys, AuthError>, Option<SessionKeys>) {
        let (c, hello) = client_start(client);
        let (s, challenge) = server_on_hello(server_dir, hello, [7; 32]).unwrap();
        let (c, proof_msg) = c.on_message(challenge, [8; 32]).unwrap();
        match s.on_message(proof_msg) {
            Ok((_, skeys, sproof)) => (c.on_message(sproof), Some(skeys)),
            Err(e) => (c.on_message(Message::AuthFailed { message: e.to_string() }), None),
        }
    }

    #[test]
    fn both_sides_prove_themselves() {
        let id = Identity::generate("c1").unwrap();
        let dir = ClientDirectory::parse(&id.to_line()).unwrap();
        let (ckeys, skeys) = run(&id, &dir);
        let mut c = Session::new(ckeys.unwrap(), Side::Client);
        let mut s = Session::new(skeys.unwrap(), Side::Server);
        let (seq, mac) = c.seal(1, b"p");
        s.open(&crate::wire::Frame { kind: 1, seq, payload: b"p", mac }).unwrap();
    }

    #[test]
    fn wrong_client_secret_is_rejected_by_the_server() {
        let id = Identity::generate("c1").unwrap();
        let other = Identity { secret: [9; 32], ..id.clone() };
        let dir = ClientDirectory::parse(&other.to_line()).unwrap();
        assert_eq!(run(&id, &dir).0.err(), Some(AuthError::ClientRejected));
        let stranger = Identity::generate("nobody").unwrap();
        assert_eq!(run(&stranger, &dir).0.err(), Some(AuthError::ClientRejected));
    }

    #[test]
    fn impostor_server_is_detected_by_the_client() {
        let id = Identity::generate("c1").unwrap();
        let (c, _hello) = client_start(&id);
        let (c, _proof) = c.on_message(Message::Challenge { server_nonce: [1; 32] }, [2; 32]).unwrap();
        // A server without the secret can only guess its proof.
        assert_eq!(c.on_message(Message::ServerProof { proof: [0; 32] }).err(), Some(AuthError::ServerImpostor));
    }
}
