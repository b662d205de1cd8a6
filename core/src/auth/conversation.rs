//! One side of an authenticated conversation, sans IO. [`Conversation`] turns messages into
//! frames and frames into messages: before the handshake only handshake messages pass, after
//! it every frame is MAC'd and sequence-checked. [`Handshake`] runs the mutual challenge as a
//! series of messages to send. The TCP/TLS channel and the RDMA endpoint each drive one; they
//! only move bytes.

use bytes::BytesMut;

use super::{
    client_start, server_on_hello, AuthError, AwaitChallenge, AwaitProof, AwaitWelcome,
    ClientDirectory, Identity, Session, SessionKeys, Side,
};
use crate::wire::{encode_frame, Frame, Message, FRAME_OVERHEAD, MAC_LEN, MAX_PAYLOAD};
use crate::Error;

/// Framing and, once established, the session's MACs and sequence numbers.
#[derive(Default)]
pub struct Conversation {
    session: Option<Session>,
}

impl Conversation {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on every frame is MAC'd with keys from the handshake.
    pub fn establish(&mut self, keys: SessionKeys, side: Side) {
        self.session = Some(Session::new(keys, side));
    }

    pub fn is_established(&self) -> bool {
        self.session.is_some()
    }

    /// Appends `msg` as one frame of at most `max_frame` bytes to `out` (MAC'd once
    /// established). A message too large is refused before it takes a sequence number, so the
    /// conversation can go on.
    pub fn seal(
        &mut self,
        msg: &Message,
        out: &mut BytesMut,
        max_frame: usize,
    ) -> Result<(), Error> {
        let mut payload = BytesMut::new();
        msg.encode(&mut payload)?;
        let kind = msg.kind();
        if payload.len() > MAX_PAYLOAD || payload.len() + FRAME_OVERHEAD > max_frame {
            return Err(Error::Protocol(format!(
                "a {kind:#04x} message of {} bytes does not fit in a frame",
                payload.len()
            )));
        }
        let (seq, mac) = match &mut self.session {
            Some(s) => s.seal(kind, &payload),
            None => (0, [0u8; MAC_LEN]),
        };
        encode_frame(out, kind, seq, &payload, &mac)?;
        Ok(())
    }

    /// The message in one whole frame: a handshake message only before the session, any
    /// other only after it, with a good MAC and the next sequence number.
    pub fn open(&mut self, frame: &[u8]) -> Result<Message, Error> {
        let frame = Frame::parse(frame)?;
        let handshake = Message::is_handshake(frame.kind);
        match &mut self.session {
            Some(s) if !handshake => s.open(&frame)?,
            None if handshake => {}
            _ => {
                return Err(Error::Protocol(format!(
                    "frame type {:#04x} out of place",
                    frame.kind
                )))
            }
        }
        Ok(Message::decode(frame.kind, frame.payload)?)
    }

    /// Wraps or unwraps a secret with this session's key-wrap key (see
    /// [`Session::wrap_secret`]); only after the handshake.
    pub fn wrap_secret(&self, secret: &[u8; 32]) -> Result<[u8; 32], Error> {
        self.session
            .as_ref()
            .map(|s| s.wrap_secret(secret))
            .ok_or_else(|| Error::Protocol("no session to wrap a secret with".into()))
    }
}

/// What a handshake asks of its driver after a message.
pub enum Step {
    /// Send this and feed the next message received.
    Send(Message),
    /// Authenticated: send `reply` if any, then [`Conversation::establish`] with `keys`
    /// and [`Handshake::side`].
    Done {
        reply: Option<Message>,
        keys: SessionKeys,
        /// Who the peer proved to be (the client's name; on the client, its own).
        peer: String,
    },
}

enum State<'a> {
    AwaitChallenge(AwaitChallenge, String),
    AwaitWelcome(AwaitWelcome, String),
    AwaitHello {
        directory: &'a ClientDirectory,
        expected: Option<&'a str>,
        nonce: [u8; 32],
    },
    AwaitProof(AwaitProof),
    Over,
}

/// The mutual handshake, one message at a time (see [`super::handshake`] for the exchange).
pub struct Handshake<'a> {
    state: State<'a>,
    side: Side,
}

impl<'a> Handshake<'a> {
    /// The client's side and its first message (`Hello`), to be sent at once.
    pub fn client(identity: &Identity, nonce: [u8; 32]) -> (Self, Message) {
        let (state, hello) = client_start(identity, nonce);
        (
            Self {
                state: State::AwaitChallenge(state, identity.name.clone()),
                side: Side::Client,
            },
            hello,
        )
    }

    /// The server's side, checking clients against `directory`; `expected` pins the client
    /// (the holder of the resume key an RDMA connect presented).
    pub fn server(
        directory: &'a ClientDirectory,
        expected: Option<&'a str>,
        nonce: [u8; 32],
    ) -> Self {
        Self {
            state: State::AwaitHello {
                directory,
                expected,
                nonce,
            },
            side: Side::Server,
        }
    }

    /// Feeds the next message received. After an error, send [`Handshake::refusal`] (if any)
    /// and close.
    pub fn on_message(&mut self, msg: Message) -> Result<Step, AuthError> {
        match std::mem::replace(&mut self.state, State::Over) {
            State::AwaitChallenge(s, name) => {
                // An impostor's challenge fails here, before the client sends anything more.
                let (next, proof) = s.on_message(msg)?;
                self.state = State::AwaitWelcome(next, name);
                Ok(Step::Send(proof))
            }
            State::AwaitWelcome(s, name) => Ok(Step::Done {
                reply: None,
                keys: s.on_message(msg)?,
                peer: name,
            }),
            State::AwaitHello {
                directory,
                expected,
                nonce,
            } => {
                if let (Some(want), Message::Hello { client, .. }) = (expected, &msg) {
                    if client != want {
                        return Err(AuthError::Rejected(format!(
                            "the resume key is not bound to client {client:?}"
                        )));
                    }
                }
                let (next, challenge) = server_on_hello(directory, msg, nonce)?;
                self.state = State::AwaitProof(next);
                Ok(Step::Send(challenge))
            }
            State::AwaitProof(s) => {
                let (client, keys, welcome) = s.on_message(msg)?;
                Ok(Step::Done {
                    reply: Some(welcome),
                    keys,
                    peer: client,
                })
            }
            State::Over => Err(AuthError::Unexpected("message after the handshake")),
        }
    }

    /// Which end of the conversation this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// What to send after `on_message` refused the peer: a server tells the client why; a
    /// client says nothing more to a server that failed to prove itself.
    pub fn refusal(&self, e: &AuthError) -> Option<Message> {
        (self.side == Side::Server).then(|| Message::AuthFailed {
            message: e.to_string(),
        })
    }
}
