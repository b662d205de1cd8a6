//! This node's etcd lease, kept alive in the background, and what its state means for serving.
//!
//! The lease is the fence: the leader key lives under it, and every store write compares that
//! key's revision. Locally, the lease counts as valid until `sent + 0.9 × TTL` after the last
//! answered keep-alive — strictly before etcd can expire it (etcd counts from when it
//! received the request) — so a node that was paused or cut off stops changing state before
//! another node can become active.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::store::{Fence, Health};

pub struct LeaseState {
    id: AtomicI64,
    ttl: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` until which the lease is certainly still held.
    valid_until: AtomicU64,
    /// Milliseconds since `epoch` of the last answer from etcd.
    last_contact: AtomicU64,
    /// The leader key's create revision while this node leads (0: not leader).
    leader_rev: AtomicI64,
    fenced: AtomicBool,
    fenced_why: Mutex<String>,
    /// A clean stop began: no state changes from now on (the lease is about to be revoked).
    stopping: AtomicBool,
}

impl LeaseState {
    /// A lease granted with `ttl` by a request sent at `asked` (etcd counts the TTL from
    /// when it received the request, which is later).
    pub(super) fn new(id: i64, ttl: Duration, asked: Instant) -> Self {
        let s = Self {
            id: AtomicI64::new(id),
            ttl,
            epoch: asked,
            valid_until: AtomicU64::new(0),
            last_contact: AtomicU64::new(0),
            leader_rev: AtomicI64::new(0),
            fenced: AtomicBool::new(false),
            fenced_why: Mutex::new(String::new()),
            stopping: AtomicBool::new(false),
        };
        // The grant itself was an answer: valid for 0.9 × TTL from (about) now.
        s.confirmed(0, ttl);
        s
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn id(&self) -> i64 {
        self.id.load(Ordering::SeqCst)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often the lease is renewed; also how stale etcd's last answer may be before this
    /// node stops trusting it.
    pub fn interval(&self) -> Duration {
        (self.ttl / 4).min(Duration::from_millis(500))
    }

    pub fn leader_revision(&self) -> Option<i64> {
        match self.leader_rev.load(Ordering::SeqCst) {
            0 => None,
            r => Some(r),
        }
    }

    pub(super) fn became_leader(&self, revision: i64) {
        self.leader_rev.store(revision.max(1), Ordering::SeqCst);
    }

    /// etcd answered a keep-alive sent at `sent_ms` with `ttl` left.
    fn confirmed(&self, sent_ms: u64, ttl: Duration) {
        let ttl = ttl.min(self.ttl).as_millis() as u64;
        self.valid_until
            .fetch_max(sent_ms + ttl * 9 / 10, Ordering::SeqCst);
        self.last_contact.fetch_max(self.now_ms(), Ordering::SeqCst);
    }

    /// etcd (or a fenced write) says this node no longer holds what it held.
    pub fn fence(&self, why: impl Into<String>) {
        let why = why.into();
        if let Ok(mut w) = self.fenced_why.lock() {
            if w.is_empty() {
                *w = why;
            }
        }
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// A clean stop: refuse every state change from now on, before the lease is revoked
    /// and another node takes over.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn health(&self) -> Health {
        if self.stopping.load(Ordering::SeqCst) {
            return Health::Suspended("this server is stopping; another node takes over".into());
        }
        if self.fenced.load(Ordering::SeqCst) {
            let why = self
                .fenced_why
                .lock()
                .map(|w| w.clone())
                .unwrap_or_default();
            return Health::Fenced(why);
        }
        if self.leader_revision().is_none() {
            return Health::Passive;
        }
        let now = self.now_ms();
        if now >= self.valid_until.load(Ordering::SeqCst) {
            return Health::Suspended(format!(
                "this server's etcd lease could not be renewed for {} ms (etcd unreachable?); \
                 it changes no state until etcd answers again",
                now.saturating_sub(self.last_contact.load(Ordering::SeqCst))
            ));
        }
        let stale = now.saturating_sub(self.last_contact.load(Ordering::SeqCst));
        if stale > 3 * self.interval().as_millis() as u64 {
            return Health::Suspended(format!(
                "etcd has not answered for {stale} ms; this server changes no state until it does"
            ));
        }
        Health::Active
    }
}

/// Renews the lease every [`LeaseState::interval`] for as long as the runtime lives,
/// reconnecting after errors (an etcd restart). A passive node whose lease expired (it was
/// paused) gets a new one; an active node whose lease expired is fenced.
pub(super) async fn keep_alive(mut client: etcd_client::Client, state: Arc<LeaseState>) {
    let interval = state.interval();
    // Logged once per outage, not every interval.
    let mut failing = false;
    loop {
        let id = state.id();
        match client.lease_keep_alive(id).await {
            Ok((mut keeper, mut stream)) => loop {
                let sent = state.now_ms();
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(interval * 2, stream.message()).await {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                        state.confirmed(sent, Duration::from_secs(resp.ttl() as u64));
                        if std::mem::take(&mut failing) {
                            tracing::info!(lease = id, "etcd renews the lease again");
                        }
                    }
                    Ok(Ok(Some(_))) => {
                        if state.leader_revision().is_some() {
                            tracing::error!(lease = id, "etcd says this node's lease expired");
                            state.fence(
                                "etcd says this node's lease expired (was the process paused or \
                                 cut off from etcd?); another node may be active now",
                            );
                            return;
                        }
                        match client.lease_grant(state.ttl.as_secs() as i64, None).await {
                            Ok(l) => {
                                tracing::info!(
                                    old = id,
                                    new = l.id(),
                                    "passive: lease expired; granted a new one"
                                );
                                state.id.store(l.id(), Ordering::SeqCst);
                                state.confirmed(sent, state.ttl);
                            }
                            Err(e) => tracing::warn!("cannot grant a new etcd lease: {e}"),
                        }
                        break;
                    }
                    Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(
                                lease = id,
                                "etcd lease keep-alive got no answer; reconnecting"
                            );
                        }
                        break;
                    }
                }
                tokio::time::sleep(interval).await;
            },
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(lease = id, "cannot reach etcd to renew the lease: {e}");
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

impl Fence for LeaseState {
    fn health(&self) -> Health {
        LeaseState::health(self)
    }
}
