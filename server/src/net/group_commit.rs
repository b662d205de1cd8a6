//! Group commit: requests that changed state while a store write was under way share the
//! next one. Each request runs on the core under the state lock as before and queues its
//! store writes with a ticket; it then waits, without the state lock, until a commit covering
//! its ticket is durable. Whoever finds no commit under way becomes the committer and writes
//! everything queued so far in one store call (one redb transaction with one fsync, one etcd
//! transaction). Replies still go only after their change is durable; what changes is that
//! eight concurrent opens cost one fsync instead of eight.
//!
//! Requests later in the queue may have seen state that earlier, unwritten requests made, so
//! they stand or fall together: a commit that fails fails every ticket queued by then.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use handoff_core::state::Checkpoint;

use crate::store::{Mutation, Store};

/// A request's place in the commit order.
pub(super) type Ticket = u64;

/// Why the tickets of a failed commit were not written.
#[derive(Clone, Debug)]
pub(super) enum Failure {
    /// The store could not be reached: the core took the changes back.
    Unreachable(String),
    /// The server stopped (fenced, or the store refused the write).
    Stopped,
}

pub(super) struct GroupCommit {
    store: Mutex<Box<dyn Store>>,
    queue: Mutex<Queue>,
    settled: Condvar,
}

#[derive(Default)]
struct Queue {
    /// The last ticket handed out.
    issued: Ticket,
    /// Every ticket up to this one is settled (written, or failed).
    done: Ticket,
    /// Writes of the tickets after `done`, in order.
    writes: Vec<Mutation>,
    /// Where the core stood before each unsettled ticket's request ran, oldest first: a
    /// failed commit takes the core back to its first ticket's.
    checkpoints: VecDeque<(Ticket, Checkpoint)>,
    /// A commit is under way (its committer is not holding this lock).
    committing: bool,
    /// Settled tickets that failed, as ranges, newest last (kept short: see `settle`).
    failed: VecDeque<(Ticket, Ticket, Failure)>,
}

/// What a committer took from the queue.
pub(super) struct Group {
    pub last: Ticket,
    pub writes: Vec<Mutation>,
    pub first_checkpoint: Option<Checkpoint>,
}

/// Failed ranges remembered for waiters that have not looked yet.
const FAILURES_KEPT: usize = 1024;

impl GroupCommit {
    pub(super) fn new(store: Box<dyn Store>) -> Self {
        Self {
            store: Mutex::new(store),
            queue: Mutex::default(),
            settled: Condvar::new(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a request's writes (called under the state lock, so tickets follow the order in
    /// which requests ran on the core). `checkpoint`: where the core stood before it ran.
    pub(super) fn enqueue(&self, writes: Vec<Mutation>, checkpoint: Checkpoint) -> Ticket {
        let mut q = self.queue();
        q.issued += 1;
        let ticket = q.issued;
        q.writes.extend(writes);
        q.checkpoints.push_back((ticket, checkpoint));
        ticket
    }

    /// The last ticket handed out: a request that wrote nothing but saw state waits for it,
    /// so it never answers from state that is not yet durable.
    pub(super) fn issued(&self) -> Ticket {
        self.queue().issued
    }

    /// Waits until `ticket` is settled; `commit` is called (without any lock of this type
    /// held) when this thread is to write a group, and returns how it went plus the ticket
    /// up to which it settles (a failure may settle more than it took).
    pub(super) fn wait(
        &self,
        ticket: Ticket,
        mut commit: impl FnMut(&mut dyn Store, Group) -> (Ticket, Result<(), Failure>),
    ) -> Result<(), Failure> {
        let mut q = self.queue();
        loop {
            if q.done >= ticket {
                return q.outcome(ticket);
            }
            if q.committing {
                q = self.settled.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            q.committing = true;
            let group = Group {
                last: q.issued,
                writes: std::mem::take(&mut q.writes),
                first_checkpoint: q.checkpoints.front().map(|(_, c)| *c),
            };
            let mut pending = Committing {
                commits: self,
                first: q.done + 1,
                last: group.last,
            };
            drop(q);
            let (last, outcome) = {
                let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
                commit(store.as_mut(), group)
            };
            pending.last = last;
            q = pending.settle(outcome);
        }
    }

    /// After a failed commit, under the state lock: every ticket queued since it was taken
    /// fails too (their requests may have seen the failed state). Returns the last ticket and
    /// their writes, to be kept for when the store is back.
    pub(super) fn fail_rest(&self) -> (Ticket, Vec<Mutation>) {
        let mut q = self.queue();
        (q.issued, std::mem::take(&mut q.writes))
    }
}

/// A commit under way: settled by its committer, or as failed if the committer panicked
/// (its writes are gone, so its tickets must not be taken as durable).
struct Committing<'a> {
    commits: &'a GroupCommit,
    first: Ticket,
    last: Ticket,
}

impl<'a> Committing<'a> {
    fn settle(self, outcome: Result<(), Failure>) -> MutexGuard<'a, Queue> {
        let commits = self.commits;
        let mut q = commits.queue();
        q.settle(self.first, self.last, outcome);
        q.committing = false;
        commits.settled.notify_all();
        std::mem::forget(self);
        q
    }
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        let mut q = self.commits.queue();
        q.settle(self.first, self.last, Err(Failure::Stopped));
        q.committing = false;
        self.commits.settled.notify_all();
    }
}

impl Queue {
    fn settle(&mut self, first: Ticket, last: Ticket, outcome: Result<(), Failure>) {
        self.done = self.done.max(last);
        while self.checkpoints.front().is_some_and(|(t, _)| *t <= last) {
            self.checkpoints.pop_front();
        }
        if let Err(f) = outcome {
            self.failed.push_back((first, last, f));
            if self.failed.len() > FAILURES_KEPT {
                self.failed.pop_front();
            }
        }
    }

    fn outcome(&self, ticket: Ticket) -> Result<(), Failure> {
        match self
            .failed
            .iter()
            .find(|(from, to, _)| (*from..=*to).contains(&ticket))
        {
            Some((_, _, f)) => Err(f.clone()),
            None => Ok(()),
        }
    }
}
