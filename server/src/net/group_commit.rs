//! Group commit: requests that changed state while a store write was under way share the
//! next one. Each request runs on the core under the state lock as before and queues its
//! store writes with a ticket; it then waits, without the state lock, until a commit covering
//! its ticket is durable. Whoever finds no commit under way becomes the committer and, once it
//! has gathered (below), writes everything queued by then in one store call (one redb transaction with one fsync, one etcd
//! transaction). Replies still go only after their change is durable; what changes is that
//! eight concurrent opens cost one fsync instead of eight. Reads' access counts are queued
//! without a waiter (`Persist::Lazy`) and go with the next commit, whoever makes it.
//!
//! A committer first gathers: clients that take turns with the store split into two cohorts
//! otherwise (those answered by one commit come back while the next, holding those that
//! queued meanwhile, is under way), each commit taking half of them. So a new committer waits
//! until as many requests are queued as the last commit answered plus those queued at its
//! end, but no longer than the last commit took (at most [`MAX_GATHER`]). Only requests a
//! client waits for count (`returns`): not a detach, a lazy flush or a data path's count,
//! which come back with no next request. One client alone then does not wait (but once,
//! the first commit after several clients stopped), and eight taking turns share one fsync
//! instead of two.
//!
//! Requests later in the queue may have seen state that earlier, unwritten requests made, so
//! they stand or fall together: a commit that fails fails every ticket queued by then, and
//! one that fails for good (the server stops) fails every ticket from then on, so nothing
//! queued after it reaches the store without it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use handoff_core::state::Checkpoint;

use crate::store::{Mutation, Store};

/// A request's place in the commit order.
pub(super) type Ticket = u64;

/// Why the tickets of a failed commit were not written.
#[derive(Clone, Debug)]
pub(super) enum Failure {
    /// The store could not be reached: the core took the changes back.
    Unreachable(String),
    /// The server stops (fenced, the store refused a write, or a commit never finished):
    /// nothing more is written.
    Stopped,
}

/// The longest a committer waits for requests to gather (see the module's note).
const MAX_GATHER: Duration = Duration::from_millis(2);

pub(super) struct GroupCommit {
    store: Mutex<Box<dyn Store>>,
    queue: Mutex<Queue>,
    settled: Condvar,
    /// Wakes a gathering committer when a request takes a ticket.
    arrived: Condvar,
    /// The longest a committer gathers ([`MAX_GATHER`]; longer in a test).
    max_gather: Duration,
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
    /// A commit failed for good: every ticket not yet written fails.
    stopped: bool,
    /// Settled ranges that failed, kept while a request holding a ticket in one has not yet
    /// taken its outcome.
    failed: Vec<(Ticket, Ticket, Failure)>,
    /// Tickets handed out whose requests have not yet taken their outcome (with counts: a
    /// request that wrote nothing holds the last ticket handed out, as others may).
    holders: BTreeMap<Ticket, usize>,
    /// Of `holders`, those a client waits for (see the module's note), counted alike.
    returning: BTreeMap<Ticket, usize>,
    /// How many requests the next commit gathers before it starts (see the module's note).
    expect: usize,
    /// How long the last commit took: the longest the next one gathers (up to
    /// [`MAX_GATHER`]).
    last_took: Duration,
    /// A committer is gathering: a new ticket wakes it.
    gathering: bool,
}

/// What a committer took from the queue.
pub(super) struct Group {
    pub last: Ticket,
    pub writes: Vec<Mutation>,
    pub first_checkpoint: Option<Checkpoint>,
}

impl GroupCommit {
    pub(super) fn new(store: Box<dyn Store>) -> Self {
        Self {
            store: Mutex::new(store),
            queue: Mutex::default(),
            settled: Condvar::new(),
            arrived: Condvar::new(),
            max_gather: MAX_GATHER,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a request's writes (called under the state lock, so tickets follow the order in
    /// which requests ran on the core). `checkpoint`: where the core stood before it ran;
    /// `returns`: a client waits for it (see the module's note). The caller must then
    /// [`GroupCommit::wait`] for the ticket.
    pub(super) fn enqueue(
        &self,
        writes: Vec<Mutation>,
        checkpoint: Checkpoint,
        returns: bool,
    ) -> Ticket {
        let mut q = self.queue();
        let ticket = q.push(writes, checkpoint);
        q.hold(ticket, returns);
        self.arrive(&q);
        ticket
    }

    /// A request took a ticket: a gathering committer counts it.
    fn arrive(&self, q: &Queue) {
        if q.gathering {
            self.arrived.notify_one();
        }
    }

    /// Queues writes that no request waits for (see `Persist::Lazy`): they go with the next
    /// commit, of whoever waits for this ticket or a later one.
    pub(super) fn enqueue_unwaited(&self, writes: Vec<Mutation>, checkpoint: Checkpoint) {
        self.queue().push(writes, checkpoint);
    }

    /// The last ticket handed out, for a request that wrote nothing but saw state: it waits
    /// for it, so it never answers from state that is not yet durable (`returns`: as for
    /// [`GroupCommit::enqueue`]). The caller must then [`GroupCommit::wait`] for the ticket.
    pub(super) fn issued(&self, returns: bool) -> Ticket {
        let mut q = self.queue();
        let ticket = q.issued;
        q.hold(ticket, returns);
        self.arrive(&q);
        ticket
    }

    /// Waits until `ticket` is settled; `commit` is called (without any lock of this type
    /// held) when this thread is to write a group, and returns how it went plus the ticket
    /// up to which it settles (a failure may settle more than it took). `returns`: as the
    /// ticket was taken.
    pub(super) fn wait(
        &self,
        ticket: Ticket,
        returns: bool,
        mut commit: impl FnMut(&mut dyn Store, Group) -> (Ticket, Result<(), Failure>),
    ) -> Result<(), Failure> {
        let mut q = self.queue();
        loop {
            if q.done >= ticket || q.stopped {
                let outcome = q.outcome(ticket);
                q.release(ticket, returns);
                return outcome;
            }
            if q.committing {
                q = self.settled.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // (Nothing in `gather` can panic, so `committing` is always cleared by the
            // `Committing` made below.)
            q.committing = true;
            q = self.gather(q);
            let answers = q.returning_in(q.done + 1..=q.issued);
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
            let started = Instant::now();
            let (last, outcome) = {
                let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
                commit(store.as_mut(), group)
            };
            pending.last = last;
            q = pending.settle(outcome);
            q.last_took = started.elapsed();
            // Those it answered may come back, with those that queued while it ran.
            let queued = q.returning_in(q.done + 1..=Ticket::MAX);
            q.expect = answers + queued;
        }
    }

    /// A new committer's wait for requests to gather (see the module's note): until
    /// [`Queue::expect`] requests hold tickets it will write, or the last commit's time has
    /// passed.
    fn gather<'a>(&self, mut q: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        if q.expect <= 1 {
            return q;
        }
        let until = Instant::now() + q.last_took.min(self.max_gather);
        q.gathering = true;
        while q.returning_in(q.done + 1..=q.issued) < q.expect {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = self
                .arrived
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        q.gathering = false;
        q
    }

    /// After a failed commit, under the state lock: every ticket queued since it was taken
    /// fails too (their requests may have seen the failed state). Returns the last ticket and
    /// their writes, to be kept for when the store is back.
    pub(super) fn fail_rest(&self) -> (Ticket, Vec<Mutation>) {
        let mut q = self.queue();
        (q.issued, std::mem::take(&mut q.writes))
    }
}

/// A commit under way: settled by its committer, or, if the committer panicked, as failed
/// for good (its writes are gone, so its tickets must never be taken as durable, nor later
/// ones written without them).
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
    /// Hands out the next ticket, for `writes` made from the core at `checkpoint`.
    fn push(&mut self, writes: Vec<Mutation>, checkpoint: Checkpoint) -> Ticket {
        self.issued += 1;
        self.writes.extend(writes);
        self.checkpoints.push_back((self.issued, checkpoint));
        self.issued
    }

    fn hold(&mut self, ticket: Ticket, returns: bool) {
        *self.holders.entry(ticket).or_default() += 1;
        if returns {
            *self.returning.entry(ticket).or_default() += 1;
        }
    }

    /// Requests a client waits for holding tickets in `range` (waiting, or about to).
    fn returning_in(&self, range: std::ops::RangeInclusive<Ticket>) -> usize {
        self.returning.range(range).map(|(_, n)| n).sum()
    }

    /// A request took its outcome: failed ranges no holder can ask about are dropped.
    fn release(&mut self, ticket: Ticket, returns: bool) {
        let let_go = |holders: &mut BTreeMap<Ticket, usize>| {
            if let Some(n) = holders.get_mut(&ticket) {
                *n -= 1;
                if *n == 0 {
                    holders.remove(&ticket);
                }
            }
        };
        let_go(&mut self.holders);
        if returns {
            let_go(&mut self.returning);
        }
        let oldest = self.holders.keys().next().copied().unwrap_or(Ticket::MAX);
        self.failed.retain(|(_, to, _)| *to >= oldest);
    }

    fn settle(&mut self, first: Ticket, last: Ticket, outcome: Result<(), Failure>) {
        let last = match &outcome {
            // Nothing queued now or later may reach the store without this group.
            Err(Failure::Stopped) => {
                self.stopped = true;
                self.writes.clear();
                self.issued
            }
            _ => last,
        };
        self.done = self.done.max(last);
        while self.checkpoints.front().is_some_and(|(t, _)| *t <= last) {
            self.checkpoints.pop_front();
        }
        if let Err(f) = outcome {
            self.failed.push((first, last, f));
        }
    }

    fn outcome(&self, ticket: Ticket) -> Result<(), Failure> {
        if self.stopped && ticket > self.done {
            return Err(Failure::Stopped);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_of(issued: Ticket) -> Queue {
        let mut q = Queue::default();
        for t in 1..=issued {
            q.issued = t;
            q.hold(t, true);
        }
        q
    }

    /// Where an empty core stands (what a request's checkpoint names does not matter here).
    fn checkpoint() -> Checkpoint {
        use handoff_core::state::{CoreConfig, ServerCore};
        ServerCore::recover(CoreConfig::default(), Default::default(), 0, 1).checkpoint()
    }

    /// How long a commit takes in these tests (and the longest a committer gathers): long
    /// enough that a loaded machine's scheduling does not cut a gather short.
    const COMMIT: Duration = Duration::from_millis(20);

    /// `clients` threads each waiting for `rounds` writes in turn on a store whose commits
    /// take [`COMMIT`]; returns the number of writes each commit took.
    fn take_turns(commits: &GroupCommit, clients: usize, rounds: usize) -> Vec<usize> {
        let batches = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..clients {
                s.spawn(|| {
                    for _ in 0..rounds {
                        let t = commits.enqueue(vec![Mutation::DeleteOpen(1)], checkpoint(), true);
                        let took = commits.wait(t, true, |_, group| {
                            std::thread::sleep(COMMIT);
                            batches.lock().unwrap().push(group.writes.len());
                            (group.last, Ok(()))
                        });
                        took.unwrap();
                    }
                });
            }
        });
        batches.into_inner().unwrap()
    }

    #[test]
    fn requests_taking_turns_share_commits_and_a_lone_one_never_gathers() {
        let store = handoff_core::store::MemoryStore::default();
        let mut commits = GroupCommit::new(Box::new(store));
        commits.max_gather = COMMIT;
        // One client: every commit is its own, and the next expects no one else.
        let alone = take_turns(&commits, 1, 5);
        assert_eq!(alone, vec![1; 5]);
        assert_eq!(
            commits.queue().expect,
            1,
            "a lone client never waits to gather"
        );
        // Nor does a write no client waits for (a detach, say) that shares its commit.
        let detach = commits.enqueue(vec![Mutation::DeleteOpen(2)], checkpoint(), false);
        let open = commits.enqueue(vec![Mutation::DeleteOpen(3)], checkpoint(), true);
        let commit = |_: &mut dyn Store, group: Group| (group.last, Ok(()));
        commits.wait(open, true, commit).unwrap();
        commits.wait(detach, false, commit).unwrap();
        assert_eq!(commits.queue().expect, 1);
        // Eight taking turns: without gathering they split into two cohorts of about four,
        // each commit taking the requests that queued while the other ran.
        let batches = take_turns(&commits, 8, 10);
        let mean = batches.iter().sum::<usize>() as f64 / batches.len() as f64;
        assert!(mean >= 6.0, "{mean:.1} writes per commit: {batches:?}");
    }

    #[test]
    fn a_commit_that_fails_for_good_fails_every_ticket_then_and_later() {
        let mut q = queue_of(5);
        q.settle(1, 2, Ok(()));
        q.writes.push(Mutation::DeleteOpen(9));
        q.settle(3, 4, Err(Failure::Stopped));
        assert!(q.writes.is_empty(), "ticket 5's writes are never written");
        assert!(q.outcome(2).is_ok());
        for t in [3, 4, 5, 6] {
            assert!(matches!(q.outcome(t), Err(Failure::Stopped)), "ticket {t}");
        }
    }

    #[test]
    fn a_failed_range_is_kept_until_every_holder_in_it_looked() {
        let mut q = queue_of(3);
        q.settle(1, 3, Err(Failure::Unreachable("down".into())));
        q.release(1, true);
        q.release(2, true);
        assert!(q.outcome(3).is_err(), "ticket 3 has not looked yet");
        q.release(3, true);
        assert!(q.failed.is_empty());
        q.issued = 4;
        q.hold(4, true);
        q.settle(4, 4, Ok(()));
        assert!(q.outcome(4).is_ok());
    }
}
