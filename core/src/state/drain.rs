//! Planned drain (claim 43), the core's half: the drained server exports its table and then
//! refers every client to the peer; the peer imports the opens under new slots, keeps the
//! drained server's MAC key to authenticate the keys clients already hold, and maps each old
//! (origin, slot) to its own slot.

use super::{CoreError, ServerCore};
use crate::state::records::{FileRecord, OpenRecord, OpenStatus};
use crate::state::resume_key::KeySealer;
use crate::store::{Alias, Mutation};

/// What a draining server hands to its peer.
#[derive(Clone, Debug)]
pub struct Export {
    pub mac_key: [u8; 32],
    /// Every open, live or expired (a tombstone still tells its holder what happened), with
    /// its current locks.
    pub records: Vec<OpenRecord>,
    /// The counters of each file the records name, by the drained server's file id.
    pub counters: Vec<(u64, FileRecord)>,
    /// Passed keys not yet collected, by client (only those whose opens still exist).
    pub inboxes: Vec<(String, Vec<String>)>,
}

/// One open as the peer receives it: the record as the origin had it (its slot and file id),
/// the file's counters there, and the file's id here.
#[derive(Clone, Debug)]
pub struct Imported {
    pub record: OpenRecord,
    pub counters: FileRecord,
    pub local_file_id: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub imported: u64,
    /// Live opens that conflicted with opens already here: kept as expired, so their holder
    /// learns it on resume.
    pub conflicted: u64,
}

impl ServerCore {
    /// Starts draining to `peer`: until [`ServerCore::finish_drain`], requests about opens are
    /// told to retry in a moment (so nothing changes while the table travels, and nobody is
    /// sent to a peer that does not hold their open yet). Returns the table to send.
    pub fn begin_drain(&mut self, peer: &str) -> Result<Export, CoreError> {
        if let Some(p) = &self.referral {
            return Err(CoreError::BadRequest(format!(
                "this server is already drained to {p}"
            )));
        }
        // (Read before the drain starts: while draining, keys are not looked up.)
        let inboxes = self.live_inboxes();
        match &self.draining {
            // Carrying on a drain a restart interrupted.
            Some(p) if p == peer => {}
            Some(p) => {
                return Err(CoreError::BadRequest(format!(
                    "this server is draining to {p} already"
                )))
            }
            None => {
                // Durable before anything is sent: a crash mid-transfer resumes the drain
                // at restart instead of serving opens the peer may already hold.
                self.draining = Some(peer.to_owned());
                self.pending
                    .push(Mutation::PutDraining(Some(peer.to_owned())));
            }
        }
        // Every open is about to be held by the peer: no direct grant here outlives that.
        let slots: Vec<u32> = self.table.records().map(|r| r.slot).collect();
        self.revoked.extend(slots);
        let mut records = Vec::with_capacity(self.table.len());
        let mut counters = std::collections::BTreeMap::new();
        for rec in self.table.records() {
            let mut rec = rec.clone();
            if let Some(f) = self.table.file(rec.file_id) {
                if rec.status == OpenStatus::Live {
                    rec.locks = f.locks.ranges_of(rec.slot);
                }
                counters.insert(rec.file_id, f.counters);
            }
            records.push(rec);
        }
        Ok(Export {
            mac_key: self.sealer.mac_key(),
            records,
            counters: counters.into_iter().collect(),
            inboxes,
        })
    }

    /// The peer took the table: remember the referral durably and let go of every open.
    pub fn finish_drain(&mut self) {
        let Some(peer) = self.draining.take() else {
            return;
        };
        self.referral = Some(peer.clone());
        self.pending.push(Mutation::PutReferral(Some(peer.clone())));
        self.pending.push(Mutation::PutDraining(None));
        let slots: Vec<u32> = self.table.records().map(|r| r.slot).collect();
        for slot in slots {
            self.forget(slot);
        }
        tracing::info!(peer, "drained: clients are referred to the peer");
    }

    /// The transfer failed: serve again as before.
    pub fn abort_drain(&mut self) {
        if self.draining.take().is_some() {
            self.pending.push(Mutation::PutDraining(None));
        }
    }

    /// The peer a drain (interrupted by a restart) is still going to.
    pub fn draining(&self) -> Option<&str> {
        self.draining.as_deref()
    }

    /// Where this server refers its clients, if it was drained.
    pub fn referral(&self) -> Option<&str> {
        self.referral.as_deref()
    }

    /// Merges opens drained from another server (whose resume keys `origin_mac` seals).
    pub fn import(
        &mut self,
        origin_mac: [u8; 32],
        opens: Vec<Imported>,
        now: u64,
    ) -> Result<ImportSummary, CoreError> {
        self.check_referral()?;
        let origin = match self.foreign.iter().find(|(_, s)| s.mac_key() == origin_mac) {
            Some((i, _)) => *i,
            None => {
                let i = self.foreign.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
                self.foreign.push((i, KeySealer::new(origin_mac)));
                self.pending.push(Mutation::PutForeignKey(i, origin_mac));
                i
            }
        };
        let mut summary = ImportSummary::default();
        for imp in &opens {
            if let Some((slot, _)) = self.aliases.get(&(origin, imp.record.slot)).copied() {
                // Sent again (a drain retried after a failure): the origin kept serving it
                // meanwhile, so its state now is the one that counts.
                self.forget(slot);
            }
            self.rebase_counters(imp, &opens);
            let mut rec = imp.record.clone();
            let old_slot = rec.slot;
            let old_file_id = rec.file_id;
            let slot = self.next_slot;
            self.next_slot = self
                .next_slot
                .checked_add(1)
                .ok_or_else(|| CoreError::BadRequest("server has used every open slot".into()))?;
            self.pending.push(Mutation::PutNextSlot(self.next_slot));
            rec.slot = slot;
            rec.file_id = imp.local_file_id;
            let local = self
                .table
                .file(rec.file_id)
                .map(|f| f.counters)
                .unwrap_or_default();
            rec.seen_access = local
                .access_seq
                .saturating_sub(imp.counters.access_seq.saturating_sub(rec.seen_access));
            rec.seen_version = local
                .version
                .saturating_sub(imp.counters.version.saturating_sub(rec.seen_version));
            if rec.status == OpenStatus::Live
                && self
                    .check_compatible(rec.file_id, None, rec.mode, rec.share, &rec.locks)
                    .is_err()
            {
                rec.status = OpenStatus::Expired;
                summary.conflicted += 1;
            }
            rec.deadline = Some(now.saturating_add(match rec.status {
                OpenStatus::Live => self.config.durable_timeout_ms,
                OpenStatus::Expired => self.config.tombstone_ms,
            }));
            let alias = Alias {
                origin,
                old_slot,
                slot,
                old_file_id,
            };
            self.aliases.insert((origin, old_slot), (slot, old_file_id));
            self.alias_of.insert(slot, (origin, old_slot));
            self.pending.push(Mutation::PutAlias(alias));
            let file_id = rec.file_id;
            tracing::info!(slot, old_slot, path = %rec.path, owner = %rec.owner, "open imported from a drained server");
            if rec.status == OpenStatus::Live {
                // A newcomer like any other: direct grants of local opens it conflicts with go.
                let (mode, locks) = (rec.mode, !rec.locks.is_empty());
                self.revoke_for_newcomer(file_id, slot, mode, locks);
            }
            self.table.insert(rec, 0);
            self.persist_file(file_id);
            self.persist_open(slot);
            summary.imported += 1;
        }
        Ok(summary)
    }

    /// Every client's passed keys whose opens still exist, by client name.
    fn live_inboxes(&self) -> Vec<(String, Vec<String>)> {
        self.inboxes
            .clients()
            .into_iter()
            .map(|c| {
                let keys = self.inbox(&c);
                (c, keys)
            })
            .collect()
    }

    /// Adds keys passed to `client` on a drained server to its inbox here (after the opens
    /// they name were imported; keys that name nothing here are left out). The inbox quota
    /// is not applied: these keys were already passed, and none is dropped.
    pub fn import_inbox(&mut self, client: &str, tokens: Vec<String>) -> Result<(), CoreError> {
        self.check_referral()?;
        for t in tokens {
            let Some((slot, owner)) = self.waiting_slot(client, &t) else {
                continue;
            };
            if !self.inboxes.contains(client, &t) {
                let added = self.inboxes.add(client, t, slot, &owner);
                self.pending.push(added);
            }
        }
        Ok(())
    }

    /// Makes this server's counters of `imp`'s file at least the distance each imported open
    /// of it is behind the origin's counters, so "accessed/changed by another client" stays
    /// exactly as the origin would have reported it.
    fn rebase_counters(&mut self, imp: &Imported, all: &[Imported]) {
        let behind = |f: fn(&Imported) -> (u64, u64)| {
            all.iter()
                .filter(|o| o.local_file_id == imp.local_file_id)
                .map(|o| {
                    let (have, seen) = f(o);
                    have.saturating_sub(seen)
                })
                .max()
                .unwrap_or(0)
        };
        let access = behind(|o| (o.counters.access_seq, o.record.seen_access));
        let version = behind(|o| (o.counters.version, o.record.seen_version));
        let fresh = self.table.file(imp.local_file_id).is_none();
        let file = self.table.file_mut(imp.local_file_id);
        if fresh {
            file.counters = imp.counters;
        }
        file.counters.access_seq = file.counters.access_seq.max(access);
        file.counters.version = file.counters.version.max(version);
        file.last_bump = None;
    }
}
