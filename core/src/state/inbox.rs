//! Keys passed to clients and not yet done with: per recipient, in the order they were
//! passed, each entry stored on its own (so a pass writes one small record, not the whole
//! inbox) and dropped when the open it names ends. Listing is paged by a cursor. Entries are
//! counted per recipient and owner of the open, for the quota on keys one client may leave
//! in another's inbox (so no client can fill someone's inbox for everybody).

use std::collections::{BTreeMap, HashMap};

use crate::store::{InboxKey, Mutation};

#[derive(Debug, Default)]
pub struct Inboxes {
    /// The cursor the next entry gets (cursors start at 1; 0 means "from the start").
    next_seq: u64,
    by_client: HashMap<String, BTreeMap<u64, String>>,
    /// Entries naming each open, to drop when it ends, and the open's owner.
    by_slot: HashMap<u32, (String, Vec<(String, u64)>)>,
    /// Entries by (recipient, owner of the open).
    per_owner: HashMap<(String, String), usize>,
}

impl Inboxes {
    /// Keys waiting for `client` that name opens of `owner`.
    pub fn from(&self, client: &str, owner: &str) -> usize {
        self.per_owner
            .get(&(client.to_owned(), owner.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn contains(&self, client: &str, token: &str) -> bool {
        self.by_client
            .get(client)
            .is_some_and(|m| m.values().any(|t| t == token))
    }

    /// Puts a recovered entry (naming open `slot` of `owner`) back under its own cursor.
    pub fn restore(&mut self, key: InboxKey, slot: u32, owner: &str) {
        self.next_seq = self.next_seq.max(key.seq.saturating_add(1));
        self.insert(key.client, key.seq, key.token, slot, owner);
    }

    fn insert(&mut self, client: String, seq: u64, token: String, slot: u32, owner: &str) {
        *self
            .per_owner
            .entry((client.clone(), owner.to_owned()))
            .or_default() += 1;
        self.by_slot
            .entry(slot)
            .or_insert_with(|| (owner.to_owned(), Vec::new()))
            .1
            .push((client.clone(), seq));
        self.by_client.entry(client).or_default().insert(seq, token);
    }

    /// Adds `token` (naming open `slot` of `owner`) to `client`'s inbox; returns the
    /// mutation that stores it.
    pub fn add(&mut self, client: &str, token: String, slot: u32, owner: &str) -> Mutation {
        let seq = self.next_seq.max(1);
        self.next_seq = seq + 1;
        self.insert(client.to_owned(), seq, token.clone(), slot, owner);
        Mutation::PutInboxKey(InboxKey {
            client: client.to_owned(),
            seq,
            token,
        })
    }

    /// Drops every entry naming open `slot` (it ended); returns the mutations that delete
    /// them.
    pub fn remove_slot(&mut self, slot: u32) -> Vec<Mutation> {
        let Some((owner, entries)) = self.by_slot.remove(&slot) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(entries.len());
        for (client, seq) in entries {
            let pair = (client.clone(), owner.clone());
            if let Some(n) = self.per_owner.get_mut(&pair) {
                *n -= 1;
                if *n == 0 {
                    self.per_owner.remove(&pair);
                }
            }
            if let Some(m) = self.by_client.get_mut(&client) {
                m.remove(&seq);
                if m.is_empty() {
                    self.by_client.remove(&client);
                }
            }
            out.push(Mutation::DeleteInboxKey { client, seq });
        }
        out
    }

    /// Up to `limit` of `client`'s keys after cursor `after`, oldest first, and the cursor
    /// of the next page (0: there is none).
    pub fn page(&self, client: &str, after: u64, limit: usize) -> (Vec<String>, u64) {
        let Some(m) = self.by_client.get(client) else {
            return (Vec::new(), 0);
        };
        let mut keys = Vec::new();
        let mut last = 0;
        let mut more = false;
        for (seq, token) in m.range(after.saturating_add(1)..) {
            if keys.len() == limit.max(1) {
                more = true;
                break;
            }
            keys.push(token.clone());
            last = *seq;
        }
        (keys, if more { last } else { 0 })
    }

    /// Every key waiting for `client`, oldest first.
    pub fn all(&self, client: &str) -> Vec<String> {
        self.by_client
            .get(client)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Clients with at least one key waiting, by name.
    pub fn clients(&self) -> Vec<String> {
        let mut c: Vec<String> = self.by_client.keys().cloned().collect();
        c.sort();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_every_key_once_in_order_and_ended_opens_leave() {
        let mut inbox = Inboxes::default();
        for i in 0..10u32 {
            let owner = if i % 3 == 1 { "carol" } else { "alice" };
            inbox.add("bob", format!("k{i}"), i % 3, owner);
        }
        assert_eq!(
            (inbox.from("bob", "alice"), inbox.from("bob", "carol")),
            (7, 3)
        );
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let (keys, next) = inbox.page("bob", after, 4);
            seen.extend(keys);
            if next == 0 {
                break;
            }
            after = next;
        }
        let want: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        assert_eq!(seen, want);
        let deleted = inbox.remove_slot(1);
        assert_eq!(deleted.len(), 3);
        assert_eq!(inbox.all("bob").len(), 7);
        assert_eq!(
            (inbox.from("bob", "alice"), inbox.from("bob", "carol")),
            (7, 0)
        );
        assert!(!inbox.contains("bob", "k1"));
        assert!(inbox.contains("bob", "k2"));
        assert_eq!(inbox.page("nobody", 0, 4), (Vec::new(), 0));
    }
}
