//! What an administrator sees and does (`handoff admin opens`, `admin close`): every open
//! with its holder, rights, locks, channels and durable deadline, the `smbstatus -L` of
//! handoff; and a forced close, after which the holder's key (and each of its handles) is
//! refused with a message saying an administrator closed it, instead of "unknown key".

use std::collections::{HashMap, VecDeque};

use super::{CoreError, HandleId, ServerCore};
use crate::state::records::OpenStatus;
use crate::state::{ByteRange, Mode, ShareMode};

/// Where an open stands, as an administrator is shown it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenState {
    /// At least one channel holds a handle of it.
    Connected,
    /// No channel: held for its holder until its deadline.
    Durable,
    /// Its durable timeout ran out; remembered (until its deadline) so the holder can learn
    /// what happened.
    Expired,
}

impl OpenState {
    pub fn to_wire(self) -> u8 {
        match self {
            OpenState::Connected => 1,
            OpenState::Durable => 2,
            OpenState::Expired => 3,
        }
    }

    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            1 => Some(OpenState::Connected),
            2 => Some(OpenState::Durable),
            3 => Some(OpenState::Expired),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OpenState::Connected => "connected",
            OpenState::Durable => "durable",
            OpenState::Expired => "expired",
        }
    }
}

/// One open as `admin opens` lists it. Never its key: keys are capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSummary {
    pub slot: u32,
    pub path: String,
    /// The client that opened it.
    pub owner: String,
    /// Every client holding a key to it (the owner, and those it was passed to).
    pub holders: Vec<String>,
    pub mode: Mode,
    pub share: ShareMode,
    pub locks: Vec<ByteRange>,
    /// Channels (control connections, data channels) holding a handle of it now.
    pub channels: u32,
    pub state: OpenState,
    /// Unix ms at which a durable open expires (or an expired one is forgotten); 0: none.
    pub deadline_ms: u64,
}

/// The opens and locks held now, for the server's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub connected: usize,
    pub durable: usize,
    pub expired: usize,
    /// Byte-range locks of live opens.
    pub locks: usize,
    pub in_grace: bool,
}

/// Which opens an administrator closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseTarget {
    /// The open a resume key names (any client's key).
    Key(Vec<u8>),
    /// Every open this client made or holds a key to.
    Client(String),
    /// Every open of the file at this path (as opened).
    Path(String),
}

impl CloseTarget {
    /// The `AdminClose` fields (key, client, path): the one that names the target, the
    /// others empty.
    pub fn to_fields(&self) -> (Vec<u8>, String, String) {
        match self {
            CloseTarget::Key(k) => (k.clone(), String::new(), String::new()),
            CloseTarget::Client(c) => (Vec::new(), c.clone(), String::new()),
            CloseTarget::Path(p) => (Vec::new(), String::new(), p.clone()),
        }
    }

    /// The target `AdminClose` fields name: None unless exactly one is set.
    pub fn from_fields(key: Vec<u8>, client: String, path: String) -> Option<Self> {
        match (key.is_empty(), client.is_empty(), path.is_empty()) {
            (false, true, true) => Some(CloseTarget::Key(key)),
            (true, false, true) => Some(CloseTarget::Client(client)),
            (true, true, false) => Some(CloseTarget::Path(path)),
            _ => None,
        }
    }
}

/// Opens an administrator closed, remembered (the last [`AdminClosed::KEEP`]) so their
/// holders are told why their key or handle stopped working.
#[derive(Debug, Default)]
pub struct AdminClosed {
    /// (slot, opened_at) of each closed open → when it was closed (unix ms).
    opens: HashMap<(u32, u64), u64>,
    handles: HashMap<HandleId, u64>,
    order: VecDeque<((u32, u64), Vec<HandleId>)>,
}

impl AdminClosed {
    const KEEP: usize = 4096;

    fn record(&mut self, open: (u32, u64), handles: Vec<HandleId>, now: u64) {
        if self.order.len() == Self::KEEP {
            if let Some((old, old_handles)) = self.order.pop_front() {
                self.opens.remove(&old);
                for h in old_handles {
                    self.handles.remove(&h);
                }
            }
        }
        self.opens.insert(open, now);
        for h in &handles {
            self.handles.insert(*h, now);
        }
        self.order.push_back((open, handles));
    }

    /// The refusal for a key whose open (slot, opened_at) an administrator closed.
    pub fn key_refusal(&self, slot: u32, opened_at: u64) -> Option<CoreError> {
        self.opens.get(&(slot, opened_at)).map(|at| refusal(*at))
    }

    /// The refusal for a handle of an open an administrator closed.
    pub fn handle_refusal(&self, handle: HandleId) -> Option<CoreError> {
        self.handles.get(&handle).map(|at| refusal(*at))
    }
}

fn refusal(at_ms: u64) -> CoreError {
    CoreError::NotFound(format!(
        "an administrator closed this open (handoff admin close) {} s after the unix epoch; \
         open the file again",
        at_ms / 1000
    ))
}

impl ServerCore {
    /// How many opens are in each state, and the locks they hold (one pass over the table).
    pub fn census(&self, now: u64) -> Census {
        let mut c = Census {
            in_grace: self.in_grace(now),
            ..Census::default()
        };
        for e in self.table.after(0) {
            match e.record.status {
                OpenStatus::Expired => c.expired += 1,
                OpenStatus::Live => {
                    c.locks += e.record.locks.len();
                    if e.channels > 0 {
                        c.connected += 1;
                    } else {
                        c.durable += 1;
                    }
                }
            }
        }
        c
    }

    /// A page of the opens, by slot, those after `after` (0: from the start), as many as
    /// `fits` accepts (it is asked with each in turn; the first always fits); returns them and
    /// the cursor of the next page (0: this was the last).
    pub fn admin_opens(
        &self,
        after: u32,
        mut fits: impl FnMut(&OpenSummary) -> bool,
    ) -> (Vec<OpenSummary>, u32) {
        let mut page = Vec::new();
        for e in self.table.after(after) {
            let r = &e.record;
            let slot = r.slot;
            let mut holders: Vec<String> = r.grants.iter().map(|g| g.client.clone()).collect();
            holders.sort();
            holders.dedup();
            let summary = OpenSummary {
                slot,
                path: r.path.clone(),
                owner: r.owner.clone(),
                holders,
                mode: r.mode,
                share: r.share,
                locks: r.locks.clone(),
                channels: e.channels,
                state: match r.status {
                    OpenStatus::Expired => OpenState::Expired,
                    OpenStatus::Live if e.channels > 0 => OpenState::Connected,
                    OpenStatus::Live => OpenState::Durable,
                },
                deadline_ms: r.deadline.unwrap_or(0),
            };
            // Asked of every one (the first counts towards the page too), heeded after the
            // first, so a page is never empty.
            if !fits(&summary) && !page.is_empty() {
                return (page, slot - 1);
            }
            page.push(summary);
        }
        (page, 0)
    }

    /// Closes the opens `target` names, whoever holds them, for every handle: their locks
    /// and share modes are released at once, and their holders' next use is refused, saying
    /// an administrator closed it. Returns how many were closed; none is an error (exit 4).
    pub fn admin_close(&mut self, target: &CloseTarget, now: u64) -> Result<usize, CoreError> {
        self.check_referral()?;
        let slots: Vec<u32> = match target {
            CloseTarget::Key(sealed) => vec![self.key_holder(sealed)?.0],
            CloseTarget::Client(name) => self
                .table
                .records()
                .filter(|r| &r.owner == name || r.grants.iter().any(|g| &g.client == name))
                .map(|r| r.slot)
                .collect(),
            CloseTarget::Path(path) => {
                let path = path.trim_start_matches('/');
                self.table
                    .records()
                    .filter(|r| r.path.trim_start_matches('/') == path)
                    .map(|r| r.slot)
                    .collect()
            }
        };
        if slots.is_empty() {
            return Err(CoreError::NotFound(match target {
                CloseTarget::Key(_) => "no open has that key".into(),
                CloseTarget::Client(name) => format!("client {name:?} holds no open"),
                CloseTarget::Path(path) => format!("no open of {path}"),
            }));
        }
        for &slot in &slots {
            let Some(r) = self.table.get(slot).map(|e| e.record.clone()) else {
                continue;
            };
            let handles: Vec<HandleId> = self
                .handles
                .iter()
                .filter(|(_, s)| **s == slot)
                .map(|(h, _)| *h)
                .collect();
            tracing::warn!(
                slot,
                path = %r.path,
                owner = %r.owner,
                "open closed by an administrator"
            );
            self.admin_closed.record((slot, r.opened_at), handles, now);
            self.forget(slot);
        }
        Ok(slots.len())
    }
}
