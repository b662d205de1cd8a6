//! The cluster store: every record under `/handoff/<cluster>/` in etcd, each batch one etcd
//! transaction that succeeds only while this node's leader key still exists with the revision
//! it was created at. A node that lost its lease (paused, cut off) therefore changes nothing:
//! its write is refused by etcd itself, and the node is fenced.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::{Mutation, Snapshot, Store, StoreError};
use crate::cluster::Cluster;
use crate::state::records::{decode_inbox, FileRecord, OpenRecord};

/// etcd's default `--max-txn-ops`: a larger batch is written in several transactions, each
/// fenced (only a drain's import is that large).
const MAX_TXN_OPS: usize = 128;

pub struct EtcdStore {
    cluster: Arc<Cluster>,
}

impl EtcdStore {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

fn corrupt(table: &'static str) -> impl Fn(crate::wire::WireError) -> StoreError {
    move |source| StoreError::Corrupt { table, source }
}

/// A key under the cluster prefix and its new value (None: delete).
type Entry = (String, Option<Vec<u8>>);

/// The key and value a mutation writes.
fn entry(m: &Mutation) -> Result<Entry, StoreError> {
    Ok(match m {
        Mutation::PutMacKey(k) => ("meta/mac_key".into(), Some(k.to_vec())),
        Mutation::PutNextSlot(n) => ("meta/next_slot".into(), Some(n.to_be_bytes().to_vec())),
        Mutation::PutOpen(r) => (
            format!("open/{:08x}", r.slot),
            Some(r.encode().map_err(corrupt("batch"))?),
        ),
        Mutation::DeleteOpen(s) => (format!("open/{s:08x}"), None),
        Mutation::PutFile(id, f) => (format!("file/{id:016x}"), Some(f.encode())),
        Mutation::DeleteFile(id) => (format!("file/{id:016x}"), None),
        Mutation::PutInboxKey(k) => (
            format!("inbox/{}/{:016x}", k.client, k.seq),
            Some(k.token.as_bytes().to_vec()),
        ),
        Mutation::DeleteInboxKey { client, seq } => (format!("inbox/{client}/{seq:016x}"), None),
        Mutation::DeleteLegacyInbox(c) => (format!("inbox/{c}"), None),
        Mutation::PutForeignKey(i, k) => (format!("foreign/{i:08x}"), Some(k.to_vec())),
        Mutation::PutAlias(a) => (
            format!("alias/{:08x}{:08x}", a.origin, a.old_slot),
            Some(a.encode().to_vec()),
        ),
        Mutation::DeleteAlias { origin, old_slot } => {
            (format!("alias/{origin:08x}{old_slot:08x}"), None)
        }
        Mutation::PutReferral(r) => (
            "meta/referral".into(),
            Some(r.as_deref().unwrap_or("").as_bytes().to_vec()),
        ),
        Mutation::PutDraining(r) => (
            "meta/draining".into(),
            Some(r.as_deref().unwrap_or("").as_bytes().to_vec()),
        ),
    })
}

/// A batch as the final value of each key it touches (etcd refuses a transaction that names
/// one key twice), in first-touched order except that the files' records that stay come
/// first. A batch too big for one transaction is written in several, and a crash between
/// them must not leave an open's record (what it has seen of its file) stored ahead of the
/// file's record and change mark written before it (see `ServerCore::persist_file_marked`).
fn collapse(batch: &[Mutation]) -> Result<Vec<Entry>, StoreError> {
    let mut order = first_touched(batch)?;
    order.sort_by_key(|(k, v)| !(v.is_some() && k.starts_with("file/")));
    Ok(order)
}

/// A batch as the final value of each key it touches, in first-touched order.
fn first_touched(batch: &[Mutation]) -> Result<Vec<Entry>, StoreError> {
    let mut order: Vec<Entry> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for m in batch {
        let (k, v) = entry(m)?;
        match at.get(&k) {
            Some(i) => order[*i].1 = v,
            None => {
                at.insert(k.clone(), order.len());
                order.push((k, v));
            }
        }
    }
    Ok(order)
}

/// An etcd failure as a store error: the ones a retry can cure (etcd unreachable, restarting,
/// electing) are `Unavailable`; the rest (a request too large, permission) are not.
fn classify(what: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    let transient = match &e {
        E::TransportError(_) | E::IoError(_) => true,
        // gRPC codes DEADLINE_EXCEEDED (4), ABORTED (10), UNAVAILABLE (14).
        E::GRpcStatus(s) => matches!(i32::from(s.code()), 4 | 10 | 14),
        _ => false,
    };
    if transient {
        StoreError::Unavailable(format!("etcd: {what}: {e}"))
    } else {
        StoreError::Backend(format!("etcd: {what}: {e}"))
    }
}

fn hex_u64(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

impl Store for EtcdStore {
    fn fence(&self) -> Option<Arc<dyn super::Fence>> {
        Some(self.cluster.lease().clone())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut client = self.cluster.client();
        let prefix = self.cluster.prefix().to_owned();
        let p = prefix.clone();
        let resp = self
            .cluster
            .block(async move { client.get(p, Some(GetOptions::new().with_prefix())).await })?
            .map_err(|e| StoreError::Unavailable(format!("etcd: reading the state: {e}")))?;
        let mut snap = Snapshot::default();
        for kv in resp.kvs() {
            let Some(name) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else {
                continue;
            };
            let v = kv.value();
            let (table, rest) = name.split_once('/').unwrap_or((name, ""));
            match (table, rest) {
                ("meta", "mac_key") => {
                    snap.mac_key = Some(v.try_into().map_err(|_| {
                        corrupt("meta")(crate::wire::WireError::Invalid("mac key length"))
                    })?)
                }
                ("meta", "next_slot") => {
                    let raw: [u8; 4] = v.try_into().map_err(|_| {
                        corrupt("meta")(crate::wire::WireError::Invalid("next slot"))
                    })?;
                    snap.next_slot = u32::from_be_bytes(raw);
                }
                ("open", _) => snap
                    .opens
                    .push(OpenRecord::decode(v).map_err(corrupt("opens"))?),
                ("file", id) => {
                    let id = hex_u64(id).ok_or_else(|| {
                        corrupt("files")(crate::wire::WireError::Invalid("file key"))
                    })?;
                    snap.files
                        .push((id, FileRecord::decode(v).map_err(corrupt("files"))?));
                }
                ("meta", "referral") => {
                    let peer = String::from_utf8_lossy(v).into_owned();
                    snap.referral = (!peer.is_empty()).then_some(peer);
                }
                ("meta", "draining") => {
                    let peer = String::from_utf8_lossy(v).into_owned();
                    snap.draining = (!peer.is_empty()).then_some(peer);
                }
                ("foreign", i) => {
                    let i = hex_u64(i).and_then(|i| u32::try_from(i).ok());
                    let key: Option<[u8; 32]> = v.try_into().ok();
                    match (i, key) {
                        (Some(i), Some(k)) => snap.foreign_keys.push((i, k)),
                        _ => {
                            return Err(corrupt("foreign")(crate::wire::WireError::Invalid(
                                "foreign key",
                            )))
                        }
                    }
                }
                ("alias", _) => snap
                    .aliases
                    .push(super::Alias::decode(v).map_err(corrupt("aliases"))?),
                ("inbox", rest) => match rest.split_once('/') {
                    Some((client, seq)) => snap.inbox.push(super::InboxKey {
                        client: client.to_owned(),
                        seq: hex_u64(seq).ok_or_else(|| {
                            corrupt("inbox")(crate::wire::WireError::Invalid("inbox key"))
                        })?,
                        token: String::from_utf8(v.to_vec()).map_err(|_| {
                            corrupt("inbox")(crate::wire::WireError::Invalid("inbox token"))
                        })?,
                    }),
                    None => snap.legacy_inboxes.push((
                        rest.to_owned(),
                        decode_inbox(v).map_err(corrupt("inboxes"))?,
                    )),
                },
                _ => {}
            }
        }
        Ok(snap)
    }

    fn apply(&mut self, batch: &[Mutation]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let lease = self.cluster.lease().clone();
        let Some(rev) = lease.leader_revision() else {
            return Err(StoreError::Fenced(
                "this node is not the active one; it may not write".into(),
            ));
        };
        let leader = self.cluster.key("leader");
        for chunk in collapse(batch)?.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| {
                    let key = self.cluster.key(k);
                    match v {
                        Some(v) => TxnOp::put(key, v.clone(), None),
                        None => TxnOp::delete(key, None),
                    }
                })
                .collect();
            let txn = Txn::new()
                .when([Compare::create_revision(
                    leader.clone(),
                    CompareOp::Equal,
                    rev,
                )])
                .and_then(ops);
            let mut client = self.cluster.client();
            let resp = self
                .cluster
                .block(async move { client.txn(txn).await })?
                .map_err(|e| classify("writing the state", e))?;
            if !resp.succeeded() {
                let why = "etcd refused a write: this node's leader key is gone (its lease \
                           expired), so another node may be active";
                lease.fence(why);
                return Err(StoreError::Fenced(why.into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_writes_files_first_and_each_key_once_at_its_last_value() {
        let file = |id, version| {
            Mutation::PutFile(
                id,
                FileRecord {
                    version,
                    ..FileRecord::default()
                },
            )
        };
        let batch = [
            Mutation::PutNextSlot(1),
            Mutation::DeleteOpen(3),
            file(9, 1),
            Mutation::DeleteFile(8),
            Mutation::PutNextSlot(2),
            file(9, 2),
            file(7, 1),
        ];
        let keys: Vec<(String, Option<Vec<u8>>)> = collapse(&batch).unwrap();
        let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "file/0000000000000009",
                "file/0000000000000007",
                "meta/next_slot",
                "open/00000003",
                "file/0000000000000008",
            ]
        );
        let nine = FileRecord::decode(keys[0].1.as_deref().unwrap()).unwrap();
        assert_eq!(nine.version, 2);
        assert_eq!(keys[2].1.as_deref(), Some(&2u32.to_be_bytes()[..]));
    }
}
