//! The server's decisions, with no IO: opens, share modes, locks, resume keys, duplicate
//! handles, durable deadlines, the grace period, handle passing and the accessed/changed report.
//!
//! Call order, for the IO layer: [`ServerCore::checkpoint`]; each `handle_*`/request method
//! with the current wall-clock time in unix milliseconds; then [`ServerCore::ready`], write its
//! mutations to the store *before* sending the reply, perform its revocations and closes, and
//! acknowledge with [`ServerCore::advance`]; then wait until [`ServerCore::poll_timeout`] and call
//! [`ServerCore::handle_timeout`] (and persist again). Time is never read here, so tests drive
//! expiry and grace explicitly.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::inbox::Inboxes;
use super::records::{FileRecord, KeyGrant, OpenRecord, OpenStatus, MAX_GRANTS, MAX_LOCKS};
use super::resume_key::{KeySealer, ResumeKey, SEALED_LEN};
use super::{ByteRange, Mode, OpenTable, ShareMode};
use crate::store::{Mutation, Snapshot};

#[path = "admin.rs"]
mod admin;
pub use admin::{Census, CloseTarget, OpenState, OpenSummary};
#[path = "drain.rs"]
mod drain;
pub use drain::{Export, ImportSummary, Imported};
#[path = "ready.rs"]
mod ready;
pub use ready::{Checkpoint, Persisted, Ready};

#[derive(Clone, Copy, Debug)]
pub struct CoreConfig {
    pub durable_timeout_ms: u64,
    pub grace_ms: u64,
    /// How long an expired open is remembered so its holder can still resume and be told.
    pub tombstone_ms: u64,
    pub quotas: Quotas,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            durable_timeout_ms: 60_000,
            grace_ms: 10_000,
            tombstone_ms: 24 * 3600 * 1000,
            quotas: Quotas::default(),
        }
    }
}

/// What one client may hold on a server (each a `handoffd` flag). A request past a quota is
/// denied with a message that starts "quota:" and names the flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Live opens a client made (durable ones included). As many of its expired opens are
    /// remembered besides; past that its oldest expired one is forgotten early.
    pub max_client_opens: usize,
    /// Byte-range locks over all of a client's opens.
    pub max_client_locks: usize,
    /// Keys passed to one client and waiting in its inbox.
    pub max_inbox: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_client_opens: 16_384,
            max_client_locks: 65_536,
            max_inbox: 10_000,
        }
    }
}

/// A handle id: the control connection that opened, and every duplicate from a data channel.
pub type HandleId = u64;

/// What resuming learns about the time the open was unattended (claims 16–17).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResumeReport {
    pub accessed_by_other: bool,
    pub changed_by_other: bool,
    /// The open had expired and was granted again.
    pub reopened: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    /// Sharing violation, lock conflict, wrong rights or a key that is not this client's.
    #[error("{message}")]
    Denied {
        message: String,
        report: Option<ResumeReport>,
    },
    /// No such open: key unknown, closed or forgotten.
    #[error("{0}")]
    NotFound(String),
    /// The server restarted recently and accepts only resumes until the grace period ends.
    #[error("server is in its grace period after a restart; only resumes are accepted for {retry_after_ms} ms more")]
    Grace { retry_after_ms: u64 },
    #[error("{0}")]
    BadRequest(String),
    /// This server was drained: the open (and new ones) are served by `peer` now.
    #[error("this server was drained; ask {peer}")]
    Referred { peer: String },
    /// This server is handing its opens to `peer` right now: retry in a moment.
    #[error("this server is draining into {peer}; retry in a moment")]
    Draining { peer: String },
}

impl CoreError {
    fn denied(message: impl Into<String>) -> Self {
        CoreError::Denied {
            message: message.into(),
            report: None,
        }
    }
}

pub struct OpenRequest {
    pub client: String,
    pub path: String,
    pub file_id: u64,
    pub mode: Mode,
    pub share: ShareMode,
    pub locks: Vec<ByteRange>,
    pub pid: u32,
    /// The IO layer will truncate the file after the grant: counts as a change.
    pub truncate: bool,
}

#[derive(Debug)]
pub struct Granted {
    pub sealed: [u8; SEALED_LEN],
    pub handle: HandleId,
    pub slot: u32,
}

/// A handle attached to an open, as a data channel sees it.
#[derive(Clone, Debug)]
pub struct Attached {
    pub handle: HandleId,
    pub slot: u32,
    pub file_id: u64,
    pub path: String,
    pub mode: Mode,
    pub share: ShareMode,
    pub locks: Vec<ByteRange>,
    pub report: ResumeReport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
}

/// What a direct-mode grant lets the client do one-sidedly with the file's memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectAccess {
    /// RDMA READs only.
    Read,
    /// RDMA READs and WRITEs.
    Write,
}

pub struct ServerCore {
    config: CoreConfig,
    sealer: KeySealer,
    table: OpenTable,
    inboxes: Inboxes,
    handles: HashMap<HandleId, u32>,
    next_handle: HandleId,
    next_slot: u32,
    grace_until: u64,
    rng: StdRng,
    pending: Vec<Mutation>,
    /// Opens whose direct-mode rkeys must be revoked (IO layer: deregister them).
    revoked: Vec<u32>,
    /// Opens that ended (closed, expired, forgotten): the IO layer lets go of their files.
    released: Vec<u32>,
    /// MAC keys of servers that drained into this one, by origin index.
    foreign: Vec<(u32, KeySealer)>,
    /// Imported opens: (origin, old slot) → (slot here, old file id), and back.
    aliases: HashMap<(u32, u32), (u32, u64)>,
    alias_of: HashMap<u32, (u32, u32)>,
    /// Drained: every client is referred to this peer.
    referral: Option<String>,
    /// Draining into this peer now: requests about opens wait (they are not referred until
    /// the peer holds the opens).
    draining: Option<String>,
    /// Opens an administrator closed, so their holders are told.
    admin_closed: admin::AdminClosed,
    /// A clean stop brought the change marks down (see
    /// [`ServerCore::lower_change_marks`]): no file's bytes change any more, and no mark
    /// is held again.
    marks_lowered: bool,
    /// Writes checked through each open (by slot) whose bytes may still be on the way (see
    /// [`ServerCore::begin_write`]).
    writing: HashMap<u32, u32>,
}

impl ServerCore {
    /// Builds the core from what the store holds. A fresh store gets a new MAC key (returned
    /// as a mutation to persist). Every recovered live open starts detached with a full
    /// durable timeout, and a grace period begins if anything was recovered.
    pub fn recover(config: CoreConfig, snapshot: Snapshot, now: u64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pending = Vec::new();
        let mac_key = snapshot.mac_key.unwrap_or_else(|| {
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            pending.push(Mutation::PutMacKey(k));
            k
        });
        let mut core = ServerCore {
            config,
            sealer: KeySealer::new(mac_key),
            table: OpenTable::default(),
            inboxes: Inboxes::default(),
            handles: HashMap::new(),
            next_handle: 1,
            next_slot: snapshot.next_slot.max(1),
            grace_until: 0,
            rng,
            pending,
            revoked: Vec::new(),
            released: Vec::new(),
            foreign: snapshot
                .foreign_keys
                .iter()
                .map(|(i, k)| (*i, KeySealer::new(*k)))
                .collect(),
            aliases: HashMap::new(),
            alias_of: HashMap::new(),
            draining: snapshot
                .draining
                .clone()
                .filter(|_| snapshot.referral.is_none()),
            referral: snapshot.referral.clone(),
            admin_closed: Default::default(),
            marks_lowered: false,
            writing: HashMap::new(),
        };
        for a in &snapshot.aliases {
            core.aliases
                .insert((a.origin, a.old_slot), (a.slot, a.old_file_id));
            core.alias_of.insert(a.slot, (a.origin, a.old_slot));
        }
        let files: HashMap<u64, FileRecord> = snapshot.files.into_iter().collect();
        let recovered = !snapshot.opens.is_empty();
        for mut rec in snapshot.opens {
            if rec.status == OpenStatus::Live {
                let fresh = now.saturating_add(config.durable_timeout_ms);
                rec.deadline = Some(rec.deadline.map_or(fresh, |d| d.max(fresh)));
            }
            core.next_slot = core.next_slot.max(rec.slot.saturating_add(1));
            let file_id = rec.file_id;
            core.table.insert(rec, 0);
            core.table.file_mut(file_id).counters = files
                .get(&file_id)
                .map(|f| f.recovered())
                .unwrap_or_default();
        }
        // A version raised to its mark has reached it: the mark goes above it again where
        // the file is shared with a writer.
        let unheld: Vec<u64> = core
            .table
            .files_mut()
            .filter(|(_, f)| {
                shared_with_a_writer(f) && f.counters.change_mark <= f.counters.version
            })
            .map(|(id, _)| id)
            .collect();
        for file_id in unheld {
            core.persist_file(file_id);
        }
        if recovered {
            core.grace_until = now.saturating_add(config.grace_ms);
        }
        core.recover_inboxes(snapshot.inbox, snapshot.legacy_inboxes);
        core
    }

    /// Puts back the keys waiting in inboxes whose opens still exist; drops (from the store
    /// too) those whose opens ended, and rewrites inboxes stored whole by an older version
    /// one key at a time.
    fn recover_inboxes(
        &mut self,
        keys: Vec<crate::store::InboxKey>,
        legacy: Vec<(String, Vec<String>)>,
    ) {
        for k in keys {
            match self.waiting_slot(&k.client, &k.token) {
                Some((slot, owner)) => self.inboxes.restore(k, slot, &owner),
                None => self.pending.push(Mutation::DeleteInboxKey {
                    client: k.client,
                    seq: k.seq,
                }),
            }
        }
        for (client, tokens) in legacy {
            for t in tokens {
                if let Some((slot, owner)) = self.waiting_slot(&client, &t) {
                    if !self.inboxes.contains(&client, &t) {
                        let m = self.inboxes.add(&client, t, slot, &owner);
                        self.pending.push(m);
                    }
                }
            }
            self.pending.push(Mutation::DeleteLegacyInbox(client));
        }
    }

    /// The open a passed key names (its slot and owner), if it exists and the key is
    /// `client`'s.
    fn waiting_slot(&self, client: &str, token: &str) -> Option<(u32, String)> {
        let sealed = super::resume_key::token_to_sealed(token).ok()?;
        let (slot, holder) = self.lookup_key(&sealed).ok()?;
        let owner = self.table.get(slot)?.record.owner.clone();
        (holder == client).then_some((slot, owner))
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    pub fn sealer(&self) -> &KeySealer {
        &self.sealer
    }

    pub fn open_count(&self) -> usize {
        self.table.len()
    }

    pub fn in_grace(&self, now: u64) -> bool {
        now < self.grace_until
    }

    /// Forgets every open whose slot is `since` or later (a batch the store did not
    /// confirm); their deletions are new mutations.
    fn undo_opens_since(&mut self, since: u32) {
        let slots: Vec<u32> = self
            .table
            .records()
            .map(|r| r.slot)
            .filter(|s| *s >= since)
            .collect();
        for slot in slots {
            self.forget(slot);
        }
    }

    /// Handles numbered `since` or later.
    fn handles_since(&self, since: HandleId) -> Vec<HandleId> {
        self.handles
            .keys()
            .copied()
            .filter(|h| *h >= since)
            .collect()
    }

    /// Store writes the last calls produced, in order (the rest of a [`Ready`] stays).
    #[cfg(test)]
    pub(crate) fn take_mutations(&mut self) -> Vec<Mutation> {
        std::mem::take(&mut self.pending)
    }

    /// Opens whose grants the last calls revoked (the rest of a [`Ready`] stays).
    #[cfg(test)]
    pub(crate) fn take_revocations(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.revoked)
    }

    /// Whether a live open holds `file_id`.
    pub fn file_in_use(&self, file_id: u64) -> bool {
        self.table.file(file_id).is_some_and(|f| !f.live.is_empty())
    }

    /// Whether a new open could be granted now at all (not drained, not in the grace period):
    /// asked before a file is created, so a refused create leaves nothing behind.
    pub fn admits_new_opens(&self, now: u64) -> Result<(), CoreError> {
        self.check_referral()?;
        if self.in_grace(now) {
            return Err(CoreError::Grace {
                retry_after_ms: self.grace_until - now,
            });
        }
        Ok(())
    }

    /// Everything about a new open that can be decided without its file (drained, grace
    /// period, malformed lock list, truncation without write access): asked before the file
    /// is opened or created, so a request refused for these reasons touches nothing.
    pub fn precheck_open(
        &self,
        client: &str,
        mode: Mode,
        locks: &[ByteRange],
        truncate: bool,
        now: u64,
    ) -> Result<(), CoreError> {
        self.admits_new_opens(now)?;
        self.check_quota(client, 1, locks.len())?;
        if locks.len() > MAX_LOCKS {
            return Err(CoreError::BadRequest(format!(
                "at most {MAX_LOCKS} lock ranges"
            )));
        }
        for (i, a) in locks.iter().enumerate() {
            if locks[..i].iter().any(|b| a.overlaps(b)) {
                return Err(CoreError::BadRequest(format!("lock ranges overlap at {a}")));
            }
        }
        if mode == Mode::Read && truncate {
            return Err(CoreError::BadRequest("truncating needs mode rw".into()));
        }
        Ok(())
    }

    /// The open a key names, for the IO layer to check its file before attaching (the key
    /// authenticated and `client`'s to use, as for [`ServerCore::attach`]).
    pub fn key_record(&self, client: &str, sealed: &[u8]) -> Result<&OpenRecord, CoreError> {
        let slot = self.verify_key(client, sealed)?;
        self.table
            .get(slot)
            .map(|e| &e.record)
            .ok_or_else(|| CoreError::NotFound("open vanished".into()))
    }

    /// Revokes direct access of every live open of `file_id` but `except`.
    fn revoke_others(&mut self, file_id: u64, except: u32) {
        if let Some(f) = self.table.file(file_id) {
            self.revoked
                .extend(f.live.iter().copied().filter(|s| *s != except));
        }
    }

    /// An open `slot` of `file_id` was granted or revived: a writer or a lock holder revokes
    /// every other open's direct access; any other newcomer revokes the direct *writes* of
    /// others (held only by opens that can write), which need the file to themselves.
    pub(super) fn revoke_for_newcomer(&mut self, file_id: u64, slot: u32, mode: Mode, locks: bool) {
        if mode.can_write() || locks {
            return self.revoke_others(file_id, slot);
        }
        let Some(f) = self.table.file(file_id) else {
            return;
        };
        // A direct write grant lives only while its open is the file's one live open, so
        // only a lone other open can hold one: no scan of the file's opens (a file can have
        // 10^5 readers, and every open would pay for it).
        let mut others = f.live.iter().copied().filter(|s| *s != slot);
        if let (Some(lone), None) = (others.next(), others.next()) {
            if self
                .table
                .get(lone)
                .is_some_and(|e| e.record.mode.can_write())
            {
                self.revoked.push(lone);
            }
        }
    }

    /// The open behind a handle, with its slot.
    fn handle_entry(&self, handle: HandleId) -> Result<(u32, &super::OpenEntry), CoreError> {
        self.check_referral()?;
        let slot = *self.handles.get(&handle).ok_or_else(|| {
            self.admin_closed
                .handle_refusal(handle)
                .unwrap_or_else(|| CoreError::NotFound("handle is closed".into()))
        })?;
        let e = self
            .table
            .get(slot)
            .ok_or_else(|| CoreError::NotFound("open was closed".into()))?;
        Ok((slot, e))
    }

    /// Direct mode (one-sided access by the client, no server CPU). Reads are granted to a
    /// read-only handle while no other open of the file can write and no other open holds a
    /// lock. Writes are granted to a read-write handle whose open is the file's only live open
    /// (it holds it exclusively, by share mode or because nobody else has it open); any other
    /// open, lock, close or expiry revokes them.
    pub fn direct_allowed(&self, handle: HandleId, access: DirectAccess) -> Result<u32, CoreError> {
        let (slot, e) = self.handle_entry(handle)?;
        let file = self.table.file(e.record.file_id);
        if access == DirectAccess::Write {
            if !e.record.mode.can_write() {
                return Err(CoreError::denied("direct writes need an open with mode rw"));
            }
            if file.is_some_and(|f| f.live.iter().any(|s| *s != slot)) {
                return Err(CoreError::denied(
                    "direct writes refused: another open of the file is live",
                ));
            }
            return Ok(slot);
        }
        if e.record.mode.can_write() {
            return Err(CoreError::denied("direct reads are for read-only opens"));
        }
        // This open is read-only, so every writer counted is another open.
        if file.is_some_and(|f| f.shares.writers > 0) {
            return Err(CoreError::denied(
                "direct mode refused: another open of the file can write",
            ));
        }
        if file.is_some_and(|f| f.locks.len() > f.locks.ranges_of(slot).len()) {
            return Err(CoreError::denied(
                "direct mode refused: another open holds a lock",
            ));
        }
        Ok(slot)
    }

    /// When [`ServerCore::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.table.next_deadline()
    }

    /// Expires live opens whose durable timeout passed (claims 13–15) and drops old tombstones.
    pub fn handle_timeout(&mut self, now: u64) {
        for slot in self.table.due(now) {
            let Some(entry) = self.table.get(slot) else {
                continue;
            };
            match entry.record.status {
                OpenStatus::Live if entry.channels == 0 => {
                    tracing::info!(slot, path = %entry.record.path, "durable timeout expired; open closed, locks released");
                    self.table.expire(slot);
                    // Writes still on their way no longer count as a live writer's.
                    self.orphan_writes_of(slot);
                    self.revoked.push(slot);
                    self.released.push(slot);
                    self.table
                        .set_deadline(slot, Some(now.saturating_add(self.config.tombstone_ms)));
                    self.persist_open(slot);
                    self.bound_tombstones(slot);
                }
                OpenStatus::Live => self.table.set_deadline(slot, None),
                OpenStatus::Expired => self.forget(slot),
            }
        }
    }

    /// Keeps the expired opens remembered for the owner of `slot` within its open quota:
    /// past it, the oldest is forgotten before its time (its holder then hears "key unknown"
    /// instead of "expired").
    fn bound_tombstones(&mut self, slot: u32) {
        let Some(owner) = self.table.get(slot).map(|e| e.record.owner.clone()) else {
            return;
        };
        let cap = self.config.quotas.max_client_opens.max(1);
        while let Some(oldest) = self
            .table
            .owner(&owner)
            .filter(|o| o.expired.len() > cap)
            .and_then(|o| o.expired.first().copied())
        {
            tracing::info!(
                slot = oldest,
                owner,
                "expired open forgotten early: its owner has more than {cap} expired opens"
            );
            self.forget(oldest);
        }
    }

    /// Denies `client` `new_opens` more opens or `new_locks` more byte-range locks past its
    /// quotas.
    fn check_quota(
        &self,
        client: &str,
        new_opens: usize,
        new_locks: usize,
    ) -> Result<(), CoreError> {
        let q = &self.config.quotas;
        let owned = self.table.owner(client);
        let opens = owned.map_or(0, |o| o.live.len());
        if new_opens > 0 && opens + new_opens > q.max_client_opens {
            return Err(CoreError::denied(format!(
                "quota: client {client} holds {opens} opens, the most this server allows one \
                 client (handoffd --max-client-opens {}); close some first",
                q.max_client_opens
            )));
        }
        if new_locks > 0 {
            let held = owned.map_or(0, |o| o.locks);
            if held + new_locks > q.max_client_locks {
                return Err(CoreError::denied(format!(
                    "quota: client {client} holds {held} byte-range locks, the most this server \
                     allows one client (handoffd --max-client-locks {}); unlock some first",
                    q.max_client_locks
                )));
            }
        }
        Ok(())
    }

    fn persist_open(&mut self, slot: u32) {
        if let Some(e) = self.table.get(slot) {
            let mut rec = e.record.clone();
            if let Some(file) = self.table.file(rec.file_id) {
                if rec.status == OpenStatus::Live {
                    rec.locks = file.locks.ranges_of(slot);
                }
            }
            self.pending.push(Mutation::PutOpen(rec));
        }
    }

    /// Writes the file's counters, with its change mark held above its version while one
    /// open's write could land unseen by another (see [`ServerCore::persist_file_marked`]).
    fn persist_file(&mut self, file_id: u64) {
        let hold =
            !self.marks_lowered && self.table.file(file_id).is_some_and(shared_with_a_writer);
        self.persist_file_marked(file_id, hold);
    }

    /// Brings every file's change mark down to its version, for good: for a clean stop,
    /// once no file's bytes can change any more (writes and truncations are refused, direct
    /// grants taken back) and every change let through before is counted, so none can land
    /// unseen and the restart reports exactly what happened.
    pub fn lower_change_marks(&mut self) {
        self.marks_lowered = true;
        let raised: Vec<u64> = self
            .table
            .files_mut()
            .filter(|(_, f)| f.counters.change_mark > f.counters.version)
            .map(|(id, _)| id)
            .collect();
        for file_id in raised {
            self.persist_file_marked(file_id, false);
        }
    }

    /// A change of the file's bytes the server makes itself (a truncation by path) is on
    /// its way, whoever holds the file open: its state is kept and its change mark held
    /// (written with the next commit, which must be durable before the bytes change) until
    /// [`ServerCore::end_write`] with [`NO_SLOT`].
    pub fn begin_file_change(&mut self, file_id: u64) {
        self.table.file_mut(file_id).orphan_writes += 1;
        self.persist_file_marked(file_id, true);
    }

    /// Writes the file's counters; with `hold`, its change mark first goes above its version.
    ///
    /// Why the mark: a write is counted once its bytes are in the file (a refused write
    /// changes nothing), and that count's commit is not waited for. A crash between the
    /// bytes and the commit would lose the change, and a resuming open would be told "not
    /// changed" about a file that changed. So while a file has an open that can write and
    /// another open that could look (or a change on its way that no open makes), its change
    /// mark stays above its version. Every commit that records what an open has seen then
    /// also holds a mark above it (a group's file records are written first: see the
    /// stores), and a restart raises the version to the mark (`FileRecord::recovered`).
    /// Without `hold`, the mark comes down to the version: nothing can change the bytes
    /// unseen, and every change is in the version this writes. The price is a false
    /// "changed" after a crash, in the safe direction (as NFS's write verifier after a
    /// reboot), for the opens of files that were shared with a writer when it came.
    fn persist_file_marked(&mut self, file_id: u64, hold: bool) {
        if self.table.file(file_id).is_none() {
            return;
        }
        let file = self.table.file_mut(file_id);
        if hold {
            let next = file.counters.version.saturating_add(1);
            file.counters.change_mark = file.counters.change_mark.max(next);
        } else {
            // Nothing can change the bytes unseen any more (no other open, or no writer and
            // no write on its way): every change is in the version written with this.
            file.counters.change_mark = file.counters.change_mark.min(file.counters.version);
        }
        let counters = file.counters;
        self.pending.push(Mutation::PutFile(file_id, counters));
    }

    /// The writes still on their way through `slot`, whose open is closing or expiring,
    /// become the file's: they keep its state, and its mark held (an open of the file must
    /// not record a version those bytes then pass unseen).
    fn orphan_writes_of(&mut self, slot: u32) {
        let Some(n) = self.writing.remove(&slot) else {
            return;
        };
        if let Some(file_id) = self.table.get(slot).map(|e| e.record.file_id) {
            self.table.file_mut(file_id).orphan_writes += n;
            self.persist_file(file_id);
        }
    }

    fn forget(&mut self, slot: u32) {
        self.revoked.push(slot);
        self.released.push(slot);
        let dropped = self.inboxes.remove_slot(slot);
        self.pending.extend(dropped);
        if let Some((origin, old_slot)) = self.alias_of.remove(&slot) {
            self.aliases.remove(&(origin, old_slot));
            self.pending
                .push(Mutation::DeleteAlias { origin, old_slot });
        }
        self.orphan_writes_of(slot);
        if let Some((rec, unreferenced)) = self.table.remove(slot) {
            self.pending.push(Mutation::DeleteOpen(slot));
            if unreferenced {
                self.pending.push(Mutation::DeleteFile(rec.file_id));
            }
        }
        self.handles.retain(|_, s| *s != slot);
    }

    fn new_handle(&mut self, slot: u32) -> HandleId {
        let h = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(h, slot);
        if let Some(e) = self.table.get_mut(slot) {
            e.channels += 1;
        }
        self.table.set_deadline(slot, None);
        h
    }

    /// The live opens (connected or durable) of `file_id` held by clients other than
    /// `client`, with their slots: what stands in the way of a change `client` asks by path.
    fn others_opens<'a>(
        &'a self,
        file_id: u64,
        client: &'a str,
    ) -> impl Iterator<Item = (u32, &'a OpenRecord)> + 'a {
        self.table
            .file(file_id)
            .into_iter()
            .flat_map(|f| f.live.iter())
            .filter_map(|s| Some((*s, &self.table.get(*s)?.record)))
            .filter(move |(_, r)| r.owner != client)
    }

    /// Whether `client` may remove or rename the file `file_id` (SMB's delete sharing): not
    /// while another client holds an open of it, connected or durable, that does not share
    /// delete; the refusal names that client. The client's own opens never stand in its way.
    pub fn check_removable(&self, client: &str, file_id: u64) -> Result<(), CoreError> {
        match self
            .others_opens(file_id, client)
            .find(|(_, r)| !r.share.delete)
        {
            Some((_, r)) => Err(CoreError::denied(format!(
                "sharing violation: {} is open by client {} (mode {}, shares {}), which does \
                 not let others remove or rename it",
                r.path, r.owner, r.mode, r.share
            ))),
            None => Ok(()),
        }
    }

    /// Whether `client` may change the size of the file `file_id` by its path, a change that
    /// touches every byte from `from` on (the smaller of the old and new sizes): not while
    /// another client holds an open of it that does not share write, or a lock on any of
    /// those bytes; the refusal names that client. The client's own opens never stand in its
    /// way.
    pub fn check_truncatable(
        &self,
        client: &str,
        file_id: u64,
        from: u64,
    ) -> Result<(), CoreError> {
        // Decided under the lock: not once a drain has begun to take the counters.
        self.check_referral()?;
        let tail = ByteRange::new(from, u64::MAX - from);
        for (slot, r) in self.others_opens(file_id, client) {
            if !r.share.write {
                return Err(CoreError::denied(format!(
                    "sharing violation: {} is open by client {} (mode {}, shares {}), which \
                     does not let others write it",
                    r.path, r.owner, r.mode, r.share
                )));
            }
            let locked = self.table.file(file_id).and_then(|f| {
                f.locks
                    .ranges_of(slot)
                    .into_iter()
                    .find(|l| tail.is_some_and(|t| t.overlaps(l)))
            });
            if let Some(range) = locked {
                return Err(CoreError::denied(format!(
                    "cannot truncate: client {} holds a byte-range lock on bytes {range}",
                    r.owner
                )));
            }
        }
        Ok(())
    }

    /// Checks `mode`/`share`/`locks` of `slot` (or of a prospective open) against every other
    /// live open of the file.
    fn check_compatible(
        &self,
        file_id: u64,
        me: Option<u32>,
        mode: Mode,
        share: ShareMode,
        locks: &[ByteRange],
    ) -> Result<(), CoreError> {
        let Some(file) = self.table.file(file_id) else {
            return Ok(());
        };
        let mut others = file.shares;
        if let Some(o) = me
            .filter(|m| file.live.contains(m))
            .and_then(|m| self.table.get(m))
        {
            others = others.without(o.record.mode, o.record.share);
        }
        // The counts decide; only a denial walks the opens, to name one in the message.
        if !others.admit(mode, share) {
            let culprit = file
                .live
                .iter()
                .filter(|s| Some(**s) != me)
                .filter_map(|s| self.table.get(*s))
                .map(|o| &o.record)
                .find(|r| !ShareMode::compatible((mode, share), (r.mode, r.share)));
            return Err(CoreError::denied(match culprit {
                Some(r) => format!(
                    "sharing violation: {} is open by client {} (mode {}, shares {})",
                    r.path, r.owner, r.mode, r.share
                ),
                None => "sharing violation".to_string(),
            }));
        }
        let owner = me.unwrap_or(u32::MAX);
        for range in locks {
            if let Some(holder) = file.locks.conflict(owner, *range) {
                let who = self
                    .table
                    .get(holder)
                    .map_or("?", |e| e.record.owner.as_str());
                return Err(CoreError::denied(format!(
                    "lock conflict: bytes {range} are locked by client {who}"
                )));
            }
        }
        Ok(())
    }

    /// A new open (claims 1–4, 21, 28–30). The opening connection holds the first handle.
    pub fn open(&mut self, req: OpenRequest, now: u64) -> Result<Granted, CoreError> {
        self.precheck_open(&req.client, req.mode, &req.locks, req.truncate, now)?;
        self.check_compatible(req.file_id, None, req.mode, req.share, &req.locks)?;
        if req.truncate {
            let whole = ByteRange::new(0, u64::MAX).expect("non-empty, no overflow");
            if let Some(holder) = self
                .table
                .file(req.file_id)
                .and_then(|f| f.locks.conflict(u32::MAX, whole))
            {
                let who = self
                    .table
                    .get(holder)
                    .map_or("?", |e| e.record.owner.as_str());
                return Err(CoreError::denied(format!(
                    "cannot truncate: client {who} holds a byte-range lock on the file"
                )));
            }
        }

        let slot = self.next_slot;
        self.next_slot = self.next_slot.checked_add(1).ok_or_else(|| {
            CoreError::BadRequest(
                "server has used every open slot; restart with a new --state".into(),
            )
        })?;
        self.pending.push(Mutation::PutNextSlot(self.next_slot));
        let nonce = self.rng.next_u64();
        let file = self.table.file_mut(req.file_id);
        file.counters.access_seq += 1;
        if req.truncate {
            file.counters.version += 1;
        }
        file.last_bump = Some((slot, req.truncate));
        let counters = file.counters;
        let key = ResumeKey {
            file_id: req.file_id,
            opened_at: now,
            pid: req.pid,
            slot,
            nonce,
        };
        let record = OpenRecord {
            slot,
            file_id: req.file_id,
            path: req.path,
            owner: req.client.clone(),
            pid: req.pid,
            opened_at: now,
            mode: req.mode,
            share: req.share,
            locks: req.locks,
            seen_access: counters.access_seq,
            seen_version: counters.version,
            status: OpenStatus::Live,
            deadline: None,
            grants: vec![KeyGrant {
                nonce,
                client: req.client,
            }],
        };
        tracing::info!(slot, path = %record.path, owner = %record.owner, mode = %record.mode, share = %record.share, "open granted");
        self.revoke_for_newcomer(req.file_id, slot, record.mode, !record.locks.is_empty());
        self.table.insert(record, 0);
        if req.truncate {
            // The cut comes after this open is granted: it is on its way (holding the
            // file's mark) until the caller ends it (`end_write` with [`NO_SLOT`]).
            self.table.file_mut(req.file_id).orphan_writes += 1;
        }
        let handle = self.new_handle(slot);
        self.persist_file(req.file_id);
        self.persist_open(slot);
        Ok(Granted {
            sealed: self.sealer.seal(&key),
            handle,
            slot,
        })
    }

    /// For a connect request that carries only a key (RDMA private data): authenticates the
    /// key, finds its open, and names the client the key is bound to, who must then prove
    /// itself.
    pub fn key_holder(&self, sealed: &[u8]) -> Result<(u32, String), CoreError> {
        self.check_referral()?;
        self.lookup_key(sealed)
    }

    /// [`ServerCore::key_holder`] whether or not this server was drained.
    fn lookup_key(&self, sealed: &[u8]) -> Result<(u32, String), CoreError> {
        let rejected =
            |e: super::KeyError| CoreError::NotFound(format!("resume key rejected: {e}"));
        let gone =
            || CoreError::NotFound("resume key unknown: its open was closed or forgotten".into());
        // Authenticated first with this server's key, then with the keys of servers that
        // drained into it; only an authentic key is looked up.
        let (key, slot, file_id) = match self.sealer.open(sealed) {
            Ok(k) => (k, k.slot, k.file_id),
            Err(super::KeyError::BadMac) => {
                let (origin, key) = self
                    .foreign
                    .iter()
                    .find_map(|(i, s)| s.open(sealed).ok().map(|k| (*i, k)))
                    .ok_or_else(|| rejected(super::KeyError::BadMac))?;
                // The alias names the open here and the file id the key was sealed with.
                let (slot, _) = self
                    .aliases
                    .get(&(origin, key.slot))
                    .copied()
                    .filter(|(_, old_file_id)| *old_file_id == key.file_id)
                    .ok_or_else(gone)?;
                let here = self.table.get(slot).map_or(0, |e| e.record.file_id);
                (key, slot, here)
            }
            Err(e) => return Err(rejected(e)),
        };
        let closed = || {
            self.admin_closed
                .key_refusal(slot, key.opened_at)
                .unwrap_or_else(gone)
        };
        let r = &self.table.get(slot).ok_or_else(closed)?.record;
        if r.file_id != file_id || r.opened_at != key.opened_at || r.pid != key.pid {
            return Err(closed());
        }
        let grant = r
            .grants
            .iter()
            .find(|g| g.nonce == key.nonce)
            .ok_or_else(gone)?;
        Ok((slot, grant.client.clone()))
    }

    /// A drained server refers every request about opens to its peer.
    pub fn check_referral(&self) -> Result<(), CoreError> {
        if let Some(peer) = &self.referral {
            return Err(CoreError::Referred { peer: peer.clone() });
        }
        if let Some(peer) = &self.draining {
            return Err(CoreError::Draining { peer: peer.clone() });
        }
        Ok(())
    }

    /// Authenticates a key, then finds its open and checks it is `client`'s to use.
    pub fn verify_key(&self, client: &str, sealed: &[u8]) -> Result<u32, CoreError> {
        let (slot, holder) = self.key_holder(sealed)?;
        if holder != client {
            return Err(CoreError::denied("resume key belongs to another client"));
        }
        Ok(slot)
    }

    /// Resume: a duplicate handle on the open the key names, with the report (claims 16–17,
    /// 22–23, 42, 44). An expired open is granted again if that is compatible with the opens
    /// made meanwhile; otherwise the report comes back with the denial.
    pub fn attach(&mut self, client: &str, sealed: &[u8]) -> Result<Attached, CoreError> {
        let slot = self.verify_key(client, sealed)?;
        let entry = self
            .table
            .get(slot)
            .ok_or_else(|| CoreError::NotFound("open vanished".into()))?;
        let rec = entry.record.clone();
        let counters = self
            .table
            .file(rec.file_id)
            .map(|f| f.counters)
            .unwrap_or_default();
        let mut report = ResumeReport {
            accessed_by_other: counters.access_seq != rec.seen_access,
            changed_by_other: counters.version != rec.seen_version,
            reopened: false,
        };
        if rec.status == OpenStatus::Expired {
            if let Err(CoreError::Denied { message, .. }) =
                self.check_compatible(rec.file_id, Some(slot), rec.mode, rec.share, &rec.locks)
            {
                return Err(CoreError::Denied {
                    message: format!("the open expired and cannot be granted again: {message}"),
                    report: Some(report),
                });
            }
            self.table.revive(slot);
            report.reopened = true;
            // Its mode counts again: a writer back among others needs the mark held.
            self.persist_file(rec.file_id);
            self.revoke_for_newcomer(rec.file_id, slot, rec.mode, !rec.locks.is_empty());
        }
        if let Some(e) = self.table.get_mut(slot) {
            e.record.seen_access = counters.access_seq;
            e.record.seen_version = counters.version;
        }
        let file = self.table.file_mut(rec.file_id);
        if file.last_bump.is_some_and(|(s, _)| s != slot) {
            // This open has now seen the other's accesses: the next one must count again.
            file.last_bump = None;
        }
        let handle = self.new_handle(slot);
        self.persist_open(slot);
        let locks = self
            .table
            .file(rec.file_id)
            .map(|f| f.locks.ranges_of(slot))
            .unwrap_or_default();
        tracing::info!(slot, handle, client, ?report, "duplicate handle attached");
        Ok(Attached {
            handle,
            slot,
            file_id: rec.file_id,
            path: rec.path,
            mode: rec.mode,
            share: rec.share,
            locks,
            report,
        })
    }

    /// A channel holding `handle` is gone. The last one starts the durable timeout (claims
    /// 11–12, 26–27, 31–32).
    pub fn detach(&mut self, handle: HandleId, now: u64) {
        let Some(slot) = self.handles.remove(&handle) else {
            return;
        };
        let Some(e) = self.table.get_mut(slot) else {
            return;
        };
        e.channels = e.channels.saturating_sub(1);
        if e.channels == 0 && e.record.status == OpenStatus::Live {
            self.table.set_deadline(
                slot,
                Some(now.saturating_add(self.config.durable_timeout_ms)),
            );
            self.persist_open(slot);
        }
    }

    /// Checks one read or write through `handle` of `range` (None: zero bytes) and counts it
    /// as an access (and a change, for writes).
    pub fn begin_io(
        &mut self,
        handle: HandleId,
        kind: IoKind,
        range: Option<ByteRange>,
    ) -> Result<(), CoreError> {
        self.check_io(handle, kind, range)?;
        self.count_io(handle, kind)
    }

    /// Whether `handle` may read or write `range` (None: zero bytes) now; counts nothing.
    /// A write is checked before its bytes move and counted ([`ServerCore::count_io`]) only
    /// once some of them reached the file.
    /// Returns the file's id.
    pub fn check_io(
        &self,
        handle: HandleId,
        kind: IoKind,
        range: Option<ByteRange>,
    ) -> Result<u64, CoreError> {
        Ok(self.checked_io(handle, kind, range)?.1)
    }

    /// [`ServerCore::check_io`], also naming the open's slot.
    fn checked_io(
        &self,
        handle: HandleId,
        kind: IoKind,
        range: Option<ByteRange>,
    ) -> Result<(u32, u64), CoreError> {
        let (slot, e) = self.handle_entry(handle)?;
        if kind == IoKind::Write && !e.record.mode.can_write() {
            return Err(CoreError::denied(
                "handle is read-only: the open's mode is r",
            ));
        }
        if let (Some(range), Some(file)) = (range, self.table.file(e.record.file_id)) {
            if let Some(holder) = file.locks.conflict(slot, range) {
                let who = self
                    .table
                    .get(holder)
                    .map_or("?", |e| e.record.owner.as_str());
                return Err(CoreError::denied(format!(
                    "bytes {range} are locked by another open (client {who})"
                )));
            }
        }
        Ok((slot, e.record.file_id))
    }

    /// [`ServerCore::check_io`] for a write whose bytes are about to move: the write is on
    /// its way until [`ServerCore::end_write`]. Returns the open's slot and the file's id.
    pub fn begin_write(
        &mut self,
        handle: HandleId,
        range: Option<ByteRange>,
    ) -> Result<(u32, u64), CoreError> {
        let (slot, file_id) = self.checked_io(handle, IoKind::Write, range)?;
        *self.writing.entry(slot).or_default() += 1;
        Ok((slot, file_id))
    }

    /// A write [`ServerCore::begin_write`] let through is over (counted, refused, or given
    /// up), also if its open was closed meanwhile.
    pub fn end_write(&mut self, slot: u32, file_id: u64) {
        if let Some(n) = self.writing.get_mut(&slot) {
            *n -= 1;
            if *n == 0 {
                self.writing.remove(&slot);
            }
            return;
        }
        let Some(file) = self.table.file(file_id) else {
            return;
        };
        if file.orphan_writes == 0 {
            return;
        }
        self.table.file_mut(file_id).orphan_writes -= 1;
        if self.table.drop_if_unused(file_id) {
            self.pending.push(Mutation::DeleteFile(file_id));
        }
    }

    /// The file is about to be cut short, or was (a path truncation): every open's direct
    /// grant on it is revoked, the cutting open's own too. Pages an adapter pinned before the
    /// cut stay pinned but leave the file, so a grant (or a registered window) that outlived
    /// it would take bytes that then vanish.
    pub fn revoke_file(&mut self, file_id: u64) {
        if let Some(f) = self.table.file(file_id) {
            self.revoked.extend(f.live.iter().copied());
        }
    }

    /// Counts a change to `file_id` no handle makes: its open was closed while the bytes
    /// were on their way, or the server cut the file by path. The file's opens are told.
    pub fn count_change(&mut self, file_id: u64) {
        if self.table.file(file_id).is_none() {
            return; // no open of the file is left to tell
        }
        let file = self.table.file_mut(file_id);
        file.counters.access_seq += 1;
        file.counters.version += 1;
        file.last_bump = None;
        // The writer's open is gone, but another of its writes may still be on the way.
        self.persist_file_marked(file_id, true);
    }

    /// Counts an access (and a change, for a write) through `handle`.
    pub fn count_io(&mut self, handle: HandleId, kind: IoKind) -> Result<(), CoreError> {
        let (slot, _) = self.handle_entry(handle)?;
        self.count_at(slot, kind);
        Ok(())
    }

    /// Counts the change a write through `slot` ([`ServerCore::begin_write`]) made, as that
    /// open's own while it is live (also while the server drains, or after the handle that
    /// wrote went), else as one no open made ([`ServerCore::count_change`]).
    pub fn count_write(&mut self, slot: u32, file_id: u64) {
        let live = self
            .table
            .get(slot)
            .is_some_and(|e| e.record.status == OpenStatus::Live);
        if live {
            self.count_at(slot, IoKind::Write);
        } else {
            self.count_change(file_id);
        }
    }

    fn count_at(&mut self, slot: u32, kind: IoKind) {
        let Some(e) = self.table.get(slot) else {
            return;
        };
        let file_id = e.record.file_id;
        let wrote = kind == IoKind::Write;
        let file = self.table.file_mut(file_id);
        match file.last_bump {
            // Already counted, and nobody has looked since: nothing observable changes.
            Some((s, w)) if s == slot && (w || !wrote) => return,
            Some((s, w)) if s == slot => file.last_bump = Some((s, w || wrote)),
            _ => file.last_bump = Some((slot, wrote)),
        }
        let before = file.counters;
        file.counters.access_seq += 1;
        if wrote {
            file.counters.version += 1;
        }
        let counters = file.counters;
        if let Some(e) = self.table.get_mut(slot) {
            if !wrote {
                // A read looks at the file: it has seen everything so far.
                e.record.seen_access = counters.access_seq;
                e.record.seen_version = counters.version;
            } else {
                // A write does not look: its own count is not news to it, but what others
                // did since it last looked (while its bytes were on their way, say) still is.
                if e.record.seen_access == before.access_seq {
                    e.record.seen_access = counters.access_seq;
                }
                if e.record.seen_version == before.version {
                    e.record.seen_version = counters.version;
                }
            }
        }
        self.persist_file(file_id);
        self.persist_open(slot);
    }

    /// Closes the open a key names, for every handle of it.
    pub fn close(&mut self, client: &str, sealed: &[u8]) -> Result<(), CoreError> {
        let slot = self.verify_key(client, sealed)?;
        tracing::info!(slot, client, "open closed");
        self.forget(slot);
        Ok(())
    }

    /// Passes the open to client `to` (claims 18–20): a new key bound to `to`, also put in
    /// `to`'s inbox. The caller checked that `to` is a known client.
    pub fn pass(
        &mut self,
        client: &str,
        sealed: &[u8],
        to: &str,
    ) -> Result<[u8; SEALED_LEN], CoreError> {
        let slot = self.verify_key(client, sealed)?;
        let owner = self
            .table
            .get(slot)
            .map(|e| e.record.owner.clone())
            .unwrap_or_default();
        let waiting = self.inboxes.from(to, &owner);
        let cap = self.config.quotas.max_inbox;
        if waiting >= cap {
            return Err(CoreError::denied(format!(
                "quota: {to}'s inbox holds {waiting} passed keys to opens of {owner}, the most \
                 one client may leave in another's inbox (handoffd --max-inbox {cap}); nothing \
                 was passed. Keys leave an inbox when their opens are closed or expire"
            )));
        }
        let nonce = self.rng.next_u64();
        let e = self
            .table
            .get_mut(slot)
            .ok_or_else(|| CoreError::NotFound("open vanished".into()))?;
        if e.record.grants.len() >= MAX_GRANTS {
            return Err(CoreError::BadRequest(format!(
                "an open can be passed at most {} times",
                MAX_GRANTS - 1
            )));
        }
        e.record.grants.push(KeyGrant {
            nonce,
            client: to.to_owned(),
        });
        let r = &e.record;
        let key = ResumeKey {
            file_id: r.file_id,
            opened_at: r.opened_at,
            pid: r.pid,
            slot,
            nonce,
        };
        let sealed = self.sealer.seal(&key);
        let added = self.inboxes.add(
            to,
            super::resume_key::sealed_to_token(&sealed),
            slot,
            &owner,
        );
        self.pending.push(added);
        self.persist_open(slot);
        tracing::info!(slot, from = client, to, "open passed");
        Ok(sealed)
    }

    /// Keys passed to `client` whose opens still exist, a page of at most `limit` after
    /// cursor `after`, and the cursor of the next page (0: none).
    pub fn inbox_page(&self, client: &str, after: u64, limit: usize) -> (Vec<String>, u64) {
        self.inboxes.page(client, after, limit)
    }

    /// Every key passed to `client` whose open still exists.
    pub fn inbox(&self, client: &str) -> Vec<String> {
        self.inboxes.all(client)
    }

    /// Takes or gives up a byte-range lock for the open a key names.
    pub fn lock(
        &mut self,
        client: &str,
        sealed: &[u8],
        range: ByteRange,
        take: bool,
    ) -> Result<(), CoreError> {
        let slot = self.verify_key(client, sealed)?;
        let e = self
            .table
            .get(slot)
            .ok_or_else(|| CoreError::NotFound("open vanished".into()))?;
        if e.record.status != OpenStatus::Live {
            return Err(CoreError::NotFound(
                "the open expired; resume it first".into(),
            ));
        }
        let file_id = e.record.file_id;
        // A lock counts against the quota of the open's owner, whoever it was passed to.
        let owner = e.record.owner.clone();
        if take {
            self.check_quota(&owner, 0, 1)?;
        }
        let file = self.table.file_mut(file_id);
        let before = file.locks.ranges_of(slot).len();
        if before >= MAX_LOCKS {
            return Err(CoreError::BadRequest(if take {
                format!("at most {MAX_LOCKS} lock ranges")
            } else {
                // Unlocking the middle of a range splits it in two.
                format!("at most {MAX_LOCKS} lock ranges; unlock whole ranges first")
            }));
        }
        if take {
            file.locks.lock(slot, range).map_err(|_| {
                CoreError::denied(format!(
                    "lock conflict: bytes {range} are locked by another open"
                ))
            })?;
        } else if !file.locks.unlock(slot, range) {
            return Err(CoreError::NotFound(format!(
                "no lock held on bytes {range}"
            )));
        }
        let locks = file.locks.ranges_of(slot);
        self.table.count_locks(&owner, before, locks.len());
        if take {
            self.revoke_others(file_id, slot);
        }
        if let Some(e) = self.table.get_mut(slot) {
            e.record.locks = locks;
        }
        self.persist_open(slot);
        Ok(())
    }

    /// The live record behind a handle (for the IO layer: path and mode).
    pub fn handle_record(&self, handle: HandleId) -> Option<&OpenRecord> {
        let slot = self.handles.get(&handle)?;
        self.table.get(*slot).map(|e| &e.record)
    }
}

/// The slot of no open: for [`ServerCore::end_write`] of a change no open makes (a
/// truncation, see [`ServerCore::begin_file_change`]). Slots never reach it.
pub const NO_SLOT: u32 = u32::MAX;

/// Whether a write by one open of the file could land unseen by another: the file has two
/// or more opens (live or expired, which may resume and look) and a live one can write, or
/// a write through an open that is gone is still on its way.
fn shared_with_a_writer(file: &super::open_table::FileState) -> bool {
    (file.refs >= 2 && file.shares.writers >= 1) || file.orphan_writes > 0
}
