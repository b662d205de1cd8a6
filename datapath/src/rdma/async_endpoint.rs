//! An [`Endpoint`] that waits without holding a thread: the completion channel's descriptor
//! is watched by the tokio reactor, so a small fixed pool of threads serves any number of
//! connections. Each wait is the blocking one's logic with the one blocking call (waiting
//! for the channel) made an `.await`: poll, arm, poll again, then wait for the event. What
//! needs no wait is the endpoint's own method; `&Endpoint` is reached through `Deref` (and
//! no `&mut`, which could swap the endpoint, and its channel, from under the reactor).

use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use handoff_core::auth::{ClientDirectory, Handshake};
use handoff_core::wire::Message;
use tokio::io::unix::AsyncFd;

use super::endpoint::{no_completion, probe_unanswered, Endpoint, Need, ReadTarget};
use super::verbs::MemoryRegion;
use crate::DataError;

/// The completion channel's descriptor, borrowed: the CQ owns (and closes) it.
struct ChannelFd(RawFd);

impl AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

pub struct AsyncEndpoint {
    // Field order is drop order: the descriptor leaves the reactor before the endpoint's CQ
    // closes it.
    events: AsyncFd<ChannelFd>,
    ep: Endpoint,
    /// Bytes posted since this connection last let the others of its thread go.
    posted: usize,
}

/// Bytes a connection posts before it lets the other connections of its thread go (under
/// soft-RoCE the poster moves them, inside the post).
const TURN_BYTES: usize = 16 << 20;

impl Deref for AsyncEndpoint {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.ep
    }
}

impl AsyncEndpoint {
    /// Registers the endpoint's completion channel with the current tokio runtime's reactor
    /// (so this must be called inside one).
    pub fn new(ep: Endpoint) -> io::Result<Self> {
        let fd = ChannelFd(ep.events_fd());
        // SAFETY: the descriptor is the endpoint's completion channel's, open until its CQ
        // is destroyed; the endpoint, which holds the CQ, is dropped after `events` (field
        // order) and is never handed out by value or `&mut` (so it cannot be swapped), and
        // `ChannelFd` always gives the same number.
        let events = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self {
            events,
            ep,
            posted: 0,
        })
    }

    /// How long any one wait may go without a completion (None: for ever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.ep.timeout = timeout;
    }

    /// Whether a message is waiting (never waits).
    pub fn has_message(&mut self) -> Result<bool, DataError> {
        self.ep.has_message()
    }

    /// Waits until `need` is met. Each wait for a completion is bounded by the endpoint's
    /// `timeout` (as a blocking wait is): past it the path or the peer is taken for gone.
    pub async fn until(&mut self, need: Need) -> Result<(), DataError> {
        if self.ep.met(need) {
            return Ok(());
        }
        let quiet = self.ep.timeout;
        if self.wait(need, None, quiet).await? {
            return Ok(());
        }
        Err(no_completion(quiet))
    }

    /// Waits until `need` is met (true), until `by` passes (false), or for at most `quiet`
    /// between completions (false).
    async fn wait(
        &mut self,
        need: Need,
        by: Option<Instant>,
        quiet: Option<Duration>,
    ) -> Result<bool, DataError> {
        loop {
            if self.ep.met(need) {
                return Ok(true);
            }
            // Completions already there are taken before arming (an armed CQ announces only
            // the next one), and once more after it (one may have come in between).
            if self.ep.poll_now()? > 0 {
                continue;
            }
            self.ep.arm()?;
            if self.ep.poll_now()? > 0 {
                continue;
            }
            let left = by.map(|by| by.saturating_duration_since(Instant::now()));
            let limit = match (left, quiet) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let readable = self.events.readable();
            let mut guard = match limit {
                None => readable.await?,
                Some(limit) => match tokio::time::timeout(limit, readable).await {
                    Ok(guard) => guard?,
                    Err(_) => return Ok(false),
                },
            };
            self.ep.take_events();
            // (Readiness stays set if another event came since the guard was taken.)
            guard.clear_ready();
        }
    }

    pub async fn send(&mut self, msg: &Message) -> Result<(), DataError> {
        self.until(Need::SendSlot).await?;
        self.ep.send(msg)
    }

    pub async fn recv(&mut self) -> Result<Message, DataError> {
        Self::take_turn().await;
        self.until(Need::Message).await?;
        self.ep.recv()
    }

    /// A connection whose peer keeps it busy (every wait met at once) lets the other
    /// connections of its thread go now and then: each message taken counts against the
    /// task's budget (tokio's), and one that used it up yields.
    async fn take_turn() {
        tokio::task::consume_budget().await;
    }

    /// Counts `len` bytes about to be posted; past [`TURN_BYTES`] since the last time, lets
    /// the thread's other connections go first.
    async fn posting(&mut self, len: usize) {
        self.posted += len;
        if self.posted >= TURN_BYTES {
            self.posted = 0;
            tokio::task::yield_now().await;
        }
    }

    /// The next message if one arrives within `idle` (None: the peer sent nothing).
    pub async fn recv_within(&mut self, idle: Duration) -> Result<Option<Message>, DataError> {
        Self::take_turn().await;
        let by = Instant::now() + idle;
        if self.wait(Need::Message, Some(by), None).await? {
            return self.ep.recv().map(Some);
        }
        Ok(None)
    }

    /// [`Endpoint::probe`].
    pub async fn probe(&mut self, within: Duration) -> Result<(), DataError> {
        self.until(Need::Room).await?;
        self.ep.start_probe()?;
        let by = Instant::now() + within;
        if self.wait(Need::ProbeAnswer, Some(by), None).await? && self.ep.probe_answered() {
            return Ok(());
        }
        Err(probe_unanswered(within))
    }

    pub async fn wait_for(&mut self, wr_id: u64) -> Result<(), DataError> {
        self.until(Need::Finished(wr_id)).await?;
        self.ep.wait_for(wr_id)
    }

    pub async fn finish_read(&mut self, wr_id: u64) -> Result<ReadTarget, DataError> {
        self.until(Need::Finished(wr_id)).await?;
        self.ep.finish_read(wr_id)
    }

    pub async fn drain_sends(&mut self) -> Result<(), DataError> {
        self.until(Need::SendsDrained).await?;
        self.ep.drain_sends()
    }

    /// [`Endpoint::post_write_from`], once the send queue has room.
    pub async fn post_write_from(
        &mut self,
        wr_id: u64,
        local: (&std::sync::Arc<MemoryRegion>, usize, usize),
        remote: (u64, u32),
        signaled: bool,
    ) -> Result<(), DataError> {
        self.posting(local.2).await;
        self.until(Need::Room).await?;
        self.ep.post_write_from(wr_id, local, remote, signaled)
    }

    /// [`Endpoint::post_read_into`], once the send queue has room.
    pub async fn post_read_into(
        &mut self,
        wr_id: u64,
        target: ReadTarget,
        len: usize,
        remote: (u64, u32),
    ) -> Result<(), DataError> {
        self.posting(len).await;
        self.until(Need::Room).await?;
        self.ep.post_read_into(wr_id, target, len, remote)
    }

    /// [`Endpoint::server_handshake`].
    pub async fn server_handshake(
        &mut self,
        directory: &ClientDirectory,
        expected: &str,
    ) -> Result<String, DataError> {
        let mut handshake = Handshake::server(directory, Some(expected), crate::nonce());
        loop {
            let msg = self.recv().await?;
            self.until(Need::SendSlot).await?;
            match self.ep.handshake_step(&mut handshake, msg) {
                Ok(Some(peer)) => return Ok(peer),
                Ok(None) => {}
                Err(e) => {
                    let _ = self.drain_sends().await;
                    return Err(e);
                }
            }
        }
    }
}
