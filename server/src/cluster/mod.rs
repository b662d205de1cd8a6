//! Active/passive clustering over etcd (claim 41): one lease per node, an election on one key,
//! and the lease's health, which decides whether this node may change state.
//!
//! The etcd client is async; it runs on a small runtime owned here, so the [`Store`] calls
//! made under the server's lock stay synchronous.
//!
//! [`Store`]: crate::store::Store

mod lease;
mod url;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

pub use lease::{Health, LeaseState};
pub use url::EtcdUrl;

use crate::store::StoreError;

/// How long one etcd request may take before it counts as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a starting node waits for etcd to answer before giving up with an error.
const CONNECT_PATIENCE: Duration = Duration::from_secs(15);
/// How often a passive node tries for leadership.
const CAMPAIGN_INTERVAL: Duration = Duration::from_millis(300);

/// A node's connection to the cluster's etcd: its lease, and (once it won) its leadership.
pub struct Cluster {
    rt: Option<tokio::runtime::Runtime>,
    client: etcd_client::Client,
    prefix: String,
    node: String,
    lease: Arc<LeaseState>,
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd {what}: {e}"))
}

impl Cluster {
    /// Connects to etcd, grants this node's lease (`ttl`) and starts keeping it alive.
    pub fn connect(
        url: &EtcdUrl,
        cluster: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| backend("runtime", e))?;
        let endpoints = url.endpoints();
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let ttl_secs = ttl.as_secs().max(2) as i64;
        // etcd may be starting with us (a member still electing): keep asking for a while.
        let give_up = std::time::Instant::now() + CONNECT_PATIENCE;
        let (client, id, asked) = loop {
            let asked = std::time::Instant::now();
            let attempt = rt.block_on(async {
                let mut client = etcd_client::Client::connect(&endpoints, Some(options.clone()))
                    .await
                    .map_err(|e| backend(&format!("at {url}"), e))?;
                let lease = client
                    .lease_grant(ttl_secs, None)
                    .await
                    .map_err(|e| backend(&format!("at {url}: granting a lease"), e))?;
                Ok::<_, StoreError>((client, lease.id()))
            });
            match attempt {
                Ok((client, id)) => break (client, id, asked),
                Err(e) if std::time::Instant::now() < give_up => {
                    tracing::warn!("{e}; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        };
        let lease = Arc::new(LeaseState::new(
            id,
            Duration::from_secs(ttl_secs as u64),
            asked,
        ));
        rt.spawn(lease::keep_alive(client.clone(), lease.clone()));
        Ok(Arc::new(Self {
            rt: Some(rt),
            client,
            prefix: format!("/handoff/{cluster}/"),
            node: node.to_owned(),
            lease,
        }))
    }

    /// Runs `fut` on the cluster's runtime and waits for it; callable from any thread,
    /// including a runtime's worker (it blocks that thread, as a disk write would).
    pub(crate) fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| backend("runtime", "stopped"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| backend("runtime", "request abandoned"))
    }

    pub(crate) fn client(&self) -> etcd_client::Client {
        self.client.clone()
    }

    /// The key under which this cluster keeps `name`.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn lease(&self) -> &Arc<LeaseState> {
        &self.lease
    }

    /// The active node's record (`NODE CONTROL-ADDR`), if any node is active.
    pub fn leader(&self) -> Result<Option<String>, StoreError> {
        let mut client = self.client();
        let key = self.key("leader");
        self.block(async move { client.get(key, None).await })?
            .map_err(|e| backend("reading the leader", e))
            .map(|r| {
                r.kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            })
    }

    /// Waits until this node is the active one: the leader key is created under this node's
    /// lease, so it vanishes when the lease does. `advertise` is what the key says (the
    /// control address clients should use). Passive nodes log who is active, once per change.
    pub fn campaign(&self, advertise: &str) -> Result<(), StoreError> {
        let value = format!("{} {advertise}", self.node);
        let mut last_seen: Option<String> = None;
        let mut unreachable_logged = false;
        loop {
            let id = self.lease.id();
            let key = self.key("leader");
            let mut client = self.client();
            let v = value.clone();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    v,
                    Some(PutOptions::new().with_lease(id)),
                )])
                .or_else([TxnOp::get(key, None)]);
            match self.block(async move { client.txn(txn).await })? {
                Ok(resp) if resp.succeeded() => {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    self.lease.became_leader(rev);
                    tracing::info!(node = %self.node, revision = rev, "this node is now active");
                    return Ok(());
                }
                Ok(resp) => {
                    unreachable_logged = false;
                    let holder = resp.op_responses().into_iter().find_map(|op| match op {
                        TxnOpResponse::Get(g) => g
                            .kvs()
                            .first()
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                        _ => None,
                    });
                    if holder != last_seen {
                        tracing::info!(
                            active = holder.as_deref().unwrap_or("none"),
                            "passive: waiting for the active node's lease to end"
                        );
                        last_seen = holder;
                    }
                }
                Err(e) => {
                    if !unreachable_logged {
                        tracing::warn!("passive: cannot reach etcd ({e}); retrying");
                        unreachable_logged = true;
                    }
                }
            }
            std::thread::sleep(CAMPAIGN_INTERVAL);
        }
    }

    /// Gives up leadership at once (a clean stop), so a passive node need not wait for the
    /// lease to time out.
    pub fn resign(&self) {
        self.lease.stop();
        let mut client = self.client();
        let id = self.lease.id();
        let _ = self.block(async move { client.lease_revoke(id).await });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
