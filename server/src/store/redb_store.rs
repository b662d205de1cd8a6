//! The embedded default store: one redb database file under `--state`. Each batch is one
//! write transaction committed with immediate durability (fsync) before the reply is sent, so
//! `kill -9` loses nothing that a client was told (but for reads' access counts, which are
//! written lazily, not before their replies).

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use super::{Mutation, Snapshot, Store, StoreError};
use crate::state::records::{decode_inbox, FileRecord, OpenRecord};
use crate::wire::WireError;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const OPENS: TableDefinition<u32, &[u8]> = TableDefinition::new("opens");
const FILES: TableDefinition<u64, &[u8]> = TableDefinition::new("files");
/// Whole inboxes, as stores written before paged inboxes kept them (read, then emptied).
const INBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("inboxes");
/// Keys waiting in inboxes: (client, cursor) → token.
const INBOX_KEYS: TableDefinition<(&str, u64), &str> = TableDefinition::new("inbox_keys");
const FOREIGN: TableDefinition<u32, &[u8]> = TableDefinition::new("foreign_keys");
/// Keyed by `origin << 32 | old_slot`.
const ALIASES: TableDefinition<u64, &[u8]> = TableDefinition::new("aliases");

pub struct RedbStore {
    db: Database,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Every row of `table`, decoded; a row that does not decode names its table.
fn rows<K: redb::Key + 'static, V: redb::Value + 'static, T>(
    tx: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
    name: &'static str,
    mut decode: impl for<'a> FnMut(K::SelfType<'a>, V::SelfType<'a>) -> Result<T, WireError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in tx
        .open_table(table)
        .map_err(backend)?
        .iter()
        .map_err(backend)?
    {
        let (k, v) = row.map_err(backend)?;
        let decoded = decode(k.value(), v.value()).map_err(|source| StoreError::Corrupt {
            table: name,
            source,
        })?;
        out.push(decoded);
    }
    Ok(out)
}

impl RedbStore {
    /// Opens `path` (a file), or creates it on a first start. A store that cannot be read
    /// (damaged, truncated, emptied) or that vanished from a `--state` directory used before
    /// is never replaced by a new, empty one unless `reset` says so: it holds every durable
    /// open and the resume-key MAC key. With `reset`, such a file is kept beside as
    /// `<path>.damaged-<unix seconds>` and a new store begins. Fails clearly if another
    /// process holds it.
    pub fn open(path: &Path, reset: bool) -> Result<Self, StoreError> {
        let damaged = |why: String| {
            StoreError::Damaged(format!(
                "state store {p} {why}. It holds every durable open and the resume-key MAC key, \
                 so handoffd will not start a new one in its place: restore it from a backup, or \
                 start once with --reset-state to keep it aside and begin empty (every durable \
                 open and key is then forgotten)",
                p = path.display()
            ))
        };
        let problem = match std::fs::metadata(path) {
            Ok(m) if m.len() == 0 => Some("is empty (0 bytes)".to_owned()),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let used_before = path
                    .parent()
                    .is_some_and(|dir| dir.join("tls-key.der").exists());
                used_before
                    .then(|| "is missing, though this --state directory was used before".to_owned())
            }
            Err(e) => return Err(backend(format!("{}: {e}", path.display()))),
        };
        let problem = match problem {
            Some(why) => Some(why),
            None if !path.exists() => None,
            // Reading every record is what a start does anyway: do it here, where a damaged
            // file can still be set aside; a store that reads is the one kept.
            None => match quietly(|| Self::open_tables(path).and_then(|s| s.load().map(|_| s))) {
                Ok(store) => {
                    make_private(path);
                    return Ok(store);
                }
                Err(e @ StoreError::Backend(_))
                    if e.to_string().contains("already open")
                        || e.to_string().contains("locked") =>
                {
                    return Err(e)
                }
                Err(e) => Some(format!("cannot be read ({e})")),
            },
        };
        if let Some(why) = problem {
            if !reset {
                return Err(damaged(why));
            }
            if path.exists() {
                let aside = path.with_extension(format!(
                    "redb.damaged-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                ));
                std::fs::rename(path, &aside)
                    .map_err(|e| backend(format!("{}: {e}", path.display())))?;
                tracing::warn!(
                    "--reset-state: the state store {} ({why}) was kept aside as {}; starting empty",
                    path.display(),
                    aside.display()
                );
            }
        }
        let store = quietly(|| Self::open_tables(path))?;
        make_private(path);
        Ok(store)
    }

    fn open_tables(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(backend)?;
        {
            tx.open_table(META).map_err(backend)?;
            tx.open_table(OPENS).map_err(backend)?;
            tx.open_table(FILES).map_err(backend)?;
            tx.open_table(INBOXES).map_err(backend)?;
            tx.open_table(INBOX_KEYS).map_err(backend)?;
            tx.open_table(FOREIGN).map_err(backend)?;
            tx.open_table(ALIASES).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(Self { db })
    }

    fn load_tables(&self) -> Result<Snapshot, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let meta = tx.open_table(META).map_err(backend)?;
        let mut snap = Snapshot::default();
        if let Some(v) = meta.get("mac_key").map_err(backend)? {
            let key: [u8; 32] = v.value().try_into().map_err(|_| StoreError::Corrupt {
                table: "meta",
                source: crate::wire::WireError::Invalid("mac key length"),
            })?;
            snap.mac_key = Some(key);
        }
        if let Some(v) = meta.get("next_slot").map_err(backend)? {
            let raw: [u8; 4] = v.value().try_into().map_err(|_| StoreError::Corrupt {
                table: "meta",
                source: crate::wire::WireError::Invalid("next slot"),
            })?;
            snap.next_slot = u32::from_be_bytes(raw);
        }
        if let Some(v) = meta.get("referral").map_err(backend)? {
            let peer = String::from_utf8_lossy(v.value()).into_owned();
            snap.referral = (!peer.is_empty()).then_some(peer);
        }
        if let Some(v) = meta.get("draining").map_err(backend)? {
            let peer = String::from_utf8_lossy(v.value()).into_owned();
            snap.draining = (!peer.is_empty()).then_some(peer);
        }
        snap.foreign_keys = rows(&tx, FOREIGN, "foreign_keys", |k, v| {
            let key = v
                .try_into()
                .map_err(|_| WireError::Invalid("foreign key length"))?;
            Ok((k, key))
        })?;
        snap.aliases = rows(&tx, ALIASES, "aliases", |_, v| super::Alias::decode(v))?;
        snap.opens = rows(&tx, OPENS, "opens", |_, v| OpenRecord::decode(v))?;
        snap.files = rows(&tx, FILES, "files", |k, v| Ok((k, FileRecord::decode(v)?)))?;
        snap.legacy_inboxes = rows(&tx, INBOXES, "inboxes", |k, v| {
            Ok((k.to_owned(), decode_inbox(v)?))
        })?;
        snap.inbox = rows(&tx, INBOX_KEYS, "inbox_keys", |(client, seq), token| {
            Ok(super::InboxKey {
                client: client.to_owned(),
                seq,
                token: token.to_owned(),
            })
        })?;
        Ok(snap)
    }

    fn apply_batch(&mut self, batch: &[Mutation]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut meta = tx.open_table(META).map_err(backend)?;
            let mut opens = tx.open_table(OPENS).map_err(backend)?;
            let mut files = tx.open_table(FILES).map_err(backend)?;
            let mut inboxes = tx.open_table(INBOXES).map_err(backend)?;
            let mut inbox_keys = tx.open_table(INBOX_KEYS).map_err(backend)?;
            let mut foreign = tx.open_table(FOREIGN).map_err(backend)?;
            let mut aliases = tx.open_table(ALIASES).map_err(backend)?;
            let invalid = |source| StoreError::Corrupt {
                table: "batch",
                source,
            };
            for m in last_writes(batch) {
                match m {
                    Mutation::PutMacKey(k) => {
                        meta.insert("mac_key", &k[..]).map_err(backend)?;
                    }
                    Mutation::PutNextSlot(n) => {
                        meta.insert("next_slot", &n.to_be_bytes()[..])
                            .map_err(backend)?;
                    }
                    Mutation::PutOpen(r) => {
                        opens
                            .insert(r.slot, r.encode().map_err(invalid)?.as_slice())
                            .map_err(backend)?;
                    }
                    Mutation::DeleteOpen(s) => {
                        opens.remove(s).map_err(backend)?;
                    }
                    Mutation::PutFile(id, f) => {
                        files.insert(id, f.encode().as_slice()).map_err(backend)?;
                    }
                    Mutation::DeleteFile(id) => {
                        files.remove(id).map_err(backend)?;
                    }
                    Mutation::PutInboxKey(k) => {
                        inbox_keys
                            .insert((k.client.as_str(), k.seq), k.token.as_str())
                            .map_err(backend)?;
                    }
                    Mutation::DeleteInboxKey { client, seq } => {
                        inbox_keys
                            .remove((client.as_str(), *seq))
                            .map_err(backend)?;
                    }
                    Mutation::DeleteLegacyInbox(c) => {
                        inboxes.remove(c.as_str()).map_err(backend)?;
                    }
                    Mutation::PutForeignKey(i, k) => {
                        foreign.insert(i, &k[..]).map_err(backend)?;
                    }
                    Mutation::PutAlias(a) => {
                        let key = u64::from(a.origin) << 32 | u64::from(a.old_slot);
                        aliases.insert(key, &a.encode()[..]).map_err(backend)?;
                    }
                    Mutation::DeleteAlias { origin, old_slot } => {
                        let key = u64::from(*origin) << 32 | u64::from(*old_slot);
                        aliases.remove(key).map_err(backend)?;
                    }
                    Mutation::PutReferral(r) => {
                        meta.insert("referral", r.as_deref().unwrap_or("").as_bytes())
                            .map_err(backend)?;
                    }
                    Mutation::PutDraining(r) => {
                        meta.insert("draining", r.as_deref().unwrap_or("").as_bytes())
                            .map_err(backend)?;
                    }
                }
            }
        }
        tx.commit().map_err(backend)?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        guarded(|| self.load_tables())
    }

    fn apply(&mut self, batch: &[Mutation]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        guarded(|| self.apply_batch(batch))
    }
}

/// `batch` less every open or file record that a later write in it replaces or deletes: the
/// batch is one transaction, so only each record's last value is ever seen. (Reads of a
/// file that several opens take turns on rewrite the same few records again and again.)
fn last_writes(batch: &[Mutation]) -> Vec<&Mutation> {
    use std::collections::HashSet;
    let (mut opens, mut files) = (HashSet::new(), HashSet::new());
    let mut kept: Vec<&Mutation> = batch
        .iter()
        .rev()
        .filter(|m| match m {
            Mutation::PutOpen(r) => opens.insert(r.slot),
            Mutation::DeleteOpen(slot) => {
                opens.insert(*slot);
                true
            }
            Mutation::PutFile(id, _) => files.insert(*id),
            Mutation::DeleteFile(id) => {
                files.insert(*id);
                true
            }
            _ => true,
        })
        .collect();
    kept.reverse();
    kept
}

/// Runs `f`, turning a panic inside the database (which redb can raise on a damaged file)
/// into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(backend(format!("the database failed: {what}")))
    })
}

/// [`guarded`], with the panic message kept off stderr (at start, where one line explains
/// the problem instead).
fn quietly<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = guarded(f);
    std::panic::set_hook(hook);
    r
}

/// The store holds the resume-key MAC key: only its owner may read it.
fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!("cannot make {} private: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::records::OpenStatus;
    use crate::state::{Mode, ShareMode};

    #[test]
    fn an_inbox_stored_whole_is_read_as_legacy_and_deleted_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = RedbStore::open(&path, false).unwrap();
            let tx = s.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(INBOXES).unwrap();
                let whole = crate::state::records::encode_inbox(&["k".into()]).unwrap();
                t.insert("bob", whole.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let mut s = RedbStore::open(&path, false).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.legacy_inboxes, vec![("bob".into(), vec!["k".into()])]);
        s.apply(&[Mutation::DeleteLegacyInbox("bob".into())])
            .unwrap();
        assert!(s.load().unwrap().legacy_inboxes.is_empty());
    }

    /// A live read open of file 9 in `slot` that has seen `seen_access`.
    fn record(slot: u32, seen_access: u64) -> OpenRecord {
        OpenRecord {
            slot,
            file_id: 9,
            path: "f".into(),
            owner: "c1".into(),
            pid: 1,
            opened_at: 2,
            mode: Mode::Read,
            share: ShareMode::ALL,
            locks: vec![],
            seen_access,
            seen_version: 0,
            status: OpenStatus::Live,
            deadline: None,
            grants: vec![],
        }
    }

    fn open(slot: u32, seen_access: u64) -> Mutation {
        Mutation::PutOpen(record(slot, seen_access))
    }

    fn file(id: u64, access_seq: u64) -> Mutation {
        let counters = FileRecord {
            access_seq,
            ..FileRecord::default()
        };
        Mutation::PutFile(id, counters)
    }

    #[test]
    fn a_batch_writes_each_record_once_and_ends_with_its_last_value() {
        let batch = vec![
            file(9, 1),
            open(1, 1),
            Mutation::PutNextSlot(3),
            file(9, 2),
            open(2, 2),
            open(1, 3),
            file(9, 3),
            open(4, 3),
            Mutation::DeleteOpen(4),
            file(7, 1),
            Mutation::DeleteFile(7),
            // A slot used again after its delete, and a file counted again after its delete.
            Mutation::DeleteOpen(2),
            open(2, 4),
            file(7, 2),
        ];
        let kept: Vec<Mutation> = last_writes(&batch).into_iter().cloned().collect();
        assert_eq!(
            kept,
            vec![
                Mutation::PutNextSlot(3),
                open(1, 3),
                file(9, 3),
                Mutation::DeleteOpen(4),
                Mutation::DeleteFile(7),
                Mutation::DeleteOpen(2),
                open(2, 4),
                file(7, 2),
            ]
        );
        // And the store ends where the whole batch, applied one by one, would.
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedbStore::open(&dir.path().join("state.redb"), false).unwrap();
        s.apply(&batch).unwrap();
        let got = s.load().unwrap();
        let mut seen: Vec<(u32, u64)> = got.opens.iter().map(|r| (r.slot, r.seen_access)).collect();
        seen.sort();
        assert_eq!(seen, vec![(1, 3), (2, 4)]);
        let mut files: Vec<(u64, u64)> = got
            .files
            .iter()
            .map(|(id, f)| (*id, f.access_seq))
            .collect();
        files.sort();
        assert_eq!(files, vec![(7, 2), (9, 3)]);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rec = OpenRecord {
            deadline: Some(10),
            ..record(5, 1)
        };
        {
            let mut s = RedbStore::open(&path, false).unwrap();
            s.apply(&[
                Mutation::PutMacKey([1; 32]),
                Mutation::PutNextSlot(6),
                Mutation::PutOpen(rec.clone()),
                Mutation::PutFile(
                    9,
                    FileRecord {
                        access_seq: 1,
                        ..FileRecord::default()
                    },
                ),
                Mutation::PutInboxKey(crate::store::InboxKey {
                    client: "c2".into(),
                    seq: 1,
                    token: "k".into(),
                }),
                Mutation::PutInboxKey(crate::store::InboxKey {
                    client: "c2".into(),
                    seq: 2,
                    token: "k2".into(),
                }),
                Mutation::DeleteInboxKey {
                    client: "c2".into(),
                    seq: 1,
                },
                Mutation::PutForeignKey(0, [7; 32]),
                Mutation::PutAlias(crate::store::Alias {
                    origin: 0,
                    old_slot: 3,
                    slot: 5,
                    old_file_id: 77,
                }),
                Mutation::PutAlias(crate::store::Alias {
                    origin: 0,
                    old_slot: 4,
                    slot: 6,
                    old_file_id: 77,
                }),
                Mutation::DeleteAlias {
                    origin: 0,
                    old_slot: 4,
                },
                Mutation::PutReferral(Some("peer:1".into())),
                Mutation::PutDraining(Some("peer:2".into())),
            ])
            .unwrap();
        }
        let snap = RedbStore::open(&path, false).unwrap().load().unwrap();
        assert_eq!(snap.mac_key, Some([1; 32]));
        assert_eq!(snap.next_slot, 6);
        assert_eq!(snap.opens, vec![rec]);
        assert_eq!(
            snap.files,
            vec![(
                9,
                FileRecord {
                    access_seq: 1,
                    ..FileRecord::default()
                }
            )]
        );
        assert_eq!(
            snap.inbox,
            vec![crate::store::InboxKey {
                client: "c2".into(),
                seq: 2,
                token: "k2".into(),
            }]
        );
        assert_eq!(snap.foreign_keys, vec![(0, [7; 32])]);
        assert_eq!(
            snap.aliases,
            vec![crate::store::Alias {
                origin: 0,
                old_slot: 3,
                slot: 5,
                old_file_id: 77
            }]
        );
        assert_eq!(snap.referral.as_deref(), Some("peer:1"));
        assert_eq!(snap.draining.as_deref(), Some("peer:2"));
    }
}
