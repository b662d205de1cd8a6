//! [`Shared`], the server's driver around the core: every request runs the core under one
//! lock, and the driver performs what the core returns (mutations written through to the
//! store before the reply, but for reads' access counts, which are written lazily: see
//! [`Persist`]; revocations of direct grants, files released), refusing state
//! changes while the cluster lease is not confirmed and raising [`Stop`] when it is lost. A
//! timer task wakes the core at its next deadline.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore};

use super::admission::{Admission, Limits};
use super::direct_grants::{DirectGrants, Revocable};
use super::files::{reopen, OpenedFile, Root};
use super::group_commit::{Failure, Group, GroupCommit, Ticket};
use super::stats::ServerStats;
use super::stop::Stop;
use crate::auth::ClientDirectory;
use crate::state::{
    Attached, ByteRange, CoreError, DirectAccess, HandleId, IoKind, OpenRequest, Persisted, Ready,
    ServerCore, NO_SLOT,
};
use crate::store::Health;
use crate::store::{Store, StoreError};
use crate::wire::Endpoint;
use crate::Error;

/// Wall-clock unix milliseconds: the only place the server reads time.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct ServerConfig {
    /// The served directory: every client path is resolved beneath it.
    pub root: Root,
    /// Data endpoints advertised to clients.
    pub endpoints: Vec<Endpoint>,
    pub tls_fingerprint: Option<[u8; 32]>,
    /// Admission control: connection caps and stall timeouts.
    pub limits: Limits,
    /// Files kept open for opens at most (the descriptor limit less room for connections).
    /// Past it, a new open's file is not kept: its duplicates open the path again and check
    /// it is the same file (a replaced file is then refused, never attached).
    pub max_kept_files: usize,
    /// Clients allowed to drain this server.
    pub admins: Vec<String>,
    /// Servers (their --peer-identity names) allowed to drain into this one.
    pub peers: Vec<String>,
    /// Who this server is when it drains into a peer.
    pub peer_identity: Option<crate::auth::Identity>,
}

struct Inner {
    core: ServerCore,
    /// Writes decided while the store was unreachable by requests that may wait for it
    /// (detaches, access counting of reads); written first once it answers again.
    backlog: Vec<crate::store::Mutation>,
    /// Direct-mode grants by open slot, to revoke when the core says so.
    grants: DirectGrants,
    /// The file each open names, held open while the open lives, by slot: duplicates are
    /// opened through it (never by path again), so a key follows its file, not its path.
    files: HashMap<u32, Arc<File>>,
}

/// Why a batch did not reach the store.
enum Unapplied {
    /// The store stayed unreachable while this node's lease held: retry later.
    Unreachable(String),
    /// This node lost its lease: it must stop.
    Fenced(String),
    /// The store refused the write otherwise: the server must stop.
    Failed(StoreError),
}

/// Writes `batch`; while the store is unreachable but this node's lease still holds, keeps
/// trying (etcd may be restarting). A fenced node, or a store that fails otherwise, must stop
/// (fail-stop, like a WAL write failure: a restart recovers the last consistent state).
fn apply_while_leased(
    store: &mut dyn Store,
    batch: &[crate::store::Mutation],
    health: impl Fn() -> Health,
) -> Result<(), Unapplied> {
    // Bounded even if the lease keeps being renewed (etcd answers keep-alives but not this).
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let started = std::time::Instant::now();
        match store.apply(batch) {
            Ok(()) => {
                super::metrics::store_commit(started);
                return Ok(());
            }
            Err(StoreError::Fenced(why)) => return Err(Unapplied::Fenced(why)),
            Err(StoreError::Unavailable(why)) => match health() {
                Health::Fenced(why) => return Err(Unapplied::Fenced(why)),
                Health::Active if std::time::Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                _ => return Err(Unapplied::Unreachable(why)),
            },
            Err(e) => return Err(Unapplied::Failed(e)),
        }
    }
}

/// When a request's state changes must reach the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persist {
    /// Before the reply: refused while the store is unreachable.
    Now,
    /// Before the reply while the store is reachable (a detach);
    /// served even while it is not, and written once it is back.
    Deferred,
    /// With the next commit, which the reply does not wait for (a read's access count, the
    /// way `lazytime` treats atime; a write's change count, which the file's change mark
    /// covers until it is written); as [`Persist::Deferred`] while the store is
    /// unreachable, and while changes kept from then are not yet written (the request that
    /// writes them waits). A queued count reaches the store within [`LAZY_DELAY`] and one
    /// commit, or sooner with any durable change after it: a crash can lose the access
    /// counts of its last moments, never one that a durable change followed.
    Lazy,
}

/// How long a lazily queued write waits for company before a commit of its own: under load
/// the access counts of many reads share one commit, and this bounds what a crash loses.
pub const LAZY_DELAY: Duration = Duration::from_millis(100);

/// The server's state shared by every connection task: one reference-counted allocation, so
/// a clone (for a task, a guard) is a single atomic increment.
#[derive(Clone)]
pub struct Shared(Arc<SharedParts>);

impl std::ops::Deref for Shared {
    type Target = SharedParts;
    fn deref(&self) -> &SharedParts {
        &self.0
    }
}

/// What [`Shared`] holds.
pub struct SharedParts {
    inner: Arc<Mutex<Inner>>,
    /// The store, written by group commits: see [`GroupCommit`].
    commits: Arc<GroupCommit>,
    /// The cluster lease (with an etcd store), read without the lock.
    lease: Option<Arc<dyn crate::store::Fence>>,
    wake: Arc<Notify>,
    pub config: Arc<ServerConfig>,
    pub stats: Arc<ServerStats>,
    /// Who may hold a connection, shared by every listener.
    pub admission: Arc<Admission>,
    /// Slots for file-system work: see [`Shared::fs`].
    fs_slots: Arc<Semaphore>,
    /// Set when this server must stop serving (fenced, or its store failed).
    pub stop: Arc<Stop>,
    /// A commit of lazily queued writes is due (see [`Persist::Lazy`]).
    lazy_due: Arc<std::sync::atomic::AtomicBool>,
    /// Writes checked and not yet counted or given up (see [`CheckedWrite`]).
    writes_in_flight: AtomicUsize,
    /// Set by a clean stop: no write is checked any more (see [`Shared::settle`]).
    stopping: AtomicBool,
    /// Set while a drain runs: no byte of a file changes (see [`Shared::may_land`]).
    frozen: AtomicBool,
    /// One drain at a time (see [`Shared::drain_running`]).
    drain_running: AtomicBool,
    /// Bumped whenever the server truncates a file: a data channel that sees it change drops
    /// its registered windows of files before it serves another request. A correctness
    /// signal, not a statistic.
    pub truncations: Arc<std::sync::atomic::AtomicU64>,
}

/// File-system calls (opens, creates, truncations) that may wait at once. Tokio's pool has 512
/// blocking threads; a file system that stops answering can hold at most this many of them,
/// and the rest stay free for requests that only need the server's state.
pub const FS_CALLS: usize = 128;
/// How long a request waits for a slot before it is told the file system is not answering.
const FS_WAIT: Duration = Duration::from_secs(30);

impl Shared {
    pub fn new(
        core: ServerCore,
        store: Box<dyn Store>,
        config: ServerConfig,
        directory: ClientDirectory,
    ) -> Result<Self, Error> {
        let shared = Self(Arc::new(SharedParts {
            lease: store.fence(),
            commits: Arc::new(GroupCommit::new(store)),
            inner: Arc::new(Mutex::new(Inner {
                core,
                backlog: Vec::new(),
                grants: Default::default(),
                files: HashMap::new(),
            })),
            wake: Arc::new(Notify::new()),
            admission: Arc::new(Admission::new(config.limits.clone(), directory)),
            config: Arc::new(config),
            stats: Arc::default(),
            fs_slots: Arc::new(Semaphore::new(FS_CALLS)),
            stop: Arc::default(),
            lazy_due: Arc::default(),
            writes_in_flight: Default::default(),
            stopping: Default::default(),
            frozen: Default::default(),
            drain_running: Default::default(),
            truncations: Arc::default(),
        }));
        // Persist what recovery produced (a new MAC key on a fresh store).
        shared.run_blocking(|_, _| Ok(()))?;
        Ok(shared)
    }

    /// Runs `f` on the core under the lock, then writes its mutations through to the store;
    /// the result is returned only once they are durable. If the store fails, the server
    /// cannot keep its promise and says so.
    pub fn run_blocking<T>(
        &self,
        f: impl FnOnce(&mut ServerCore, u64) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.run_with(Persist::Now, f)
    }

    /// [`Shared::run_blocking`] with a choice of when its mutations must be durable (see
    /// [`Persist`]): while a cluster store is unreachable, [`Persist::Now`] refuses the
    /// request and the others run it and write its mutations once the store is back.
    pub fn run_with<T>(
        &self,
        persist: Persist,
        f: impl FnOnce(&mut ServerCore, u64) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.run_files(persist, |core, _, now| f(core, now))
    }

    /// [`Shared::run_with`] that also sees the files kept for opens (by slot). Nothing here
    /// touches the file system: files of opens that ended are closed after the lock is given
    /// up.
    fn run_files<T>(
        &self,
        persist: Persist,
        f: impl FnOnce(&mut ServerCore, &mut HashMap<u32, Arc<File>>, u64) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (result, ticket) = self.queue_files(persist, f);
        match ticket {
            Some(ticket) => self.settled(ticket, persist == Persist::Now).and(result),
            None => result,
        }
    }

    /// The half of [`Shared::run_files`] under the lock: runs `f` and queues its writes.
    /// Returns its result and the ticket to wait for ([`Shared::settled`]) before answering
    /// with it, if there is one.
    fn queue_files<T>(
        &self,
        persist: Persist,
        f: impl FnOnce(&mut ServerCore, &mut HashMap<u32, Arc<File>>, u64) -> Result<T, Error>,
    ) -> (Result<T, Error>, Option<super::group_commit::Ticket>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.stop.check() {
            return (Err(e), None);
        }
        let defer = match self.health() {
            Health::Suspended(_) if persist != Persist::Now => true,
            health => {
                if let Err(e) = self.may_change(health) {
                    return (Err(e), None);
                }
                false
            }
        };
        let checkpoint = inner.core.checkpoint();
        let Inner { core, files, .. } = &mut *inner;
        let result = f(core, files, now_ms());
        let mut ready = inner.core.ready();
        let mut batch = std::mem::take(&mut ready.mutations);
        // A backlog (written while the store was unreachable: detaches, change counts) is
        // waited for by whoever writes it first, a read too.
        let lazy = persist == Persist::Lazy && inner.backlog.is_empty();
        let mut queued_lazily = false;
        let ticket = if defer {
            inner.backlog.append(&mut batch);
            None
        } else {
            if !inner.backlog.is_empty() {
                let mut all = std::mem::take(&mut inner.backlog);
                all.append(&mut batch);
                batch = all;
            }
            if batch.is_empty() && persist != Persist::Now {
                // Nothing to write, and nothing it answers waits for the store (a read's
                // check, say): no wait for other requests' commits on the data path.
                None
            } else if batch.is_empty() {
                // Nothing to write, but what it saw must be durable before it answers.
                Some(self.commits.issued(persist == Persist::Now))
            } else if lazy {
                // Counters only: no deadline moved, so the timer task need not look.
                self.commits.enqueue_unwaited(batch, checkpoint);
                queued_lazily = true;
                None
            } else {
                self.wake.notify_one();
                Some(
                    self.commits
                        .enqueue(batch, checkpoint, persist == Persist::Now),
                )
            }
        };
        // Taking access back and closing files need not wait for the store.
        let closing = self.perform(&mut inner, ready);
        drop(inner);
        if queued_lazily {
            self.commit_lazily();
        }
        // close(2) can wait on a network file system: never under the lock.
        drop(closing);
        (result, ticket)
    }

    /// What a server that stops cleanly does last: writes every change not yet in the store
    /// (queued lazily, or kept while it was unreachable) and waits until it is durable.
    /// Refused while a cluster store is unreachable.
    ///
    /// It also makes the change counters exact for the restart: from here no file's bytes
    /// change (writes and truncations are refused, direct grants taken back), and once the
    /// changes in flight are counted (waiting up to [`STOP_WRITES_WAIT`]) the files' change
    /// marks come down to their versions, so the restart tells no open of a change that
    /// did not happen. If changes were still in flight, the marks stay. A direct write
    /// grant was counted when it was made, and no other open could look while it lived
    /// (looking revokes it).
    pub fn settle(&self) -> Result<(), Error> {
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            // Under the lock: a grant being made sees this when it records itself.
            self.stopping.store(true, Ordering::SeqCst);
            for slot in inner.grants.slots() {
                inner.grants.revoke(slot);
            }
        }
        let counted = self.writes_ended(STOP_WRITES_WAIT);
        if !counted {
            tracing::warn!("writes still in flight at the stop: change marks kept");
        }
        self.run_blocking(move |core, _| {
            if counted {
                core.lower_change_marks();
            }
            Ok(())
        })
    }

    /// Has lazily queued writes committed after [`LAZY_DELAY`], off the caller's thread (by
    /// one flusher at a time; a durable change that comes first takes them along).
    fn commit_lazily(&self) {
        if self.lazy_due.swap(true, Ordering::AcqRel) {
            return; // a flusher is waiting already, and will take these too
        }
        let this = self.clone();
        let flush = move || {
            std::thread::sleep(LAZY_DELAY);
            // Cleared before the ticket is taken: a write queued after this point is either
            // under that ticket or calls for a flusher of its own.
            this.lazy_due.store(false, Ordering::Release);
            if let Err(e) = this.settled(this.commits.issued(false), false) {
                tracing::debug!("lazily queued writes not committed: {e}");
            }
        };
        let spawned = match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                drop(rt.spawn_blocking(flush));
                Ok(())
            }
            Err(_) => std::thread::Builder::new()
                .name("lazy-commit".into())
                .spawn(flush)
                .map(drop),
        };
        if let Err(e) = spawned {
            // The writes wait for the next durable change instead.
            self.lazy_due.store(false, Ordering::Release);
            tracing::warn!("no thread to commit lazily queued writes: {e}");
        }
    }

    /// Waits until `ticket` is settled (committing if no one else is), and says how.
    /// `returns`: a client waits for it (see [`GroupCommit`]'s gathering).
    fn settled(&self, ticket: super::group_commit::Ticket, returns: bool) -> Result<(), Error> {
        match self
            .commits
            .wait(ticket, returns, |store, group| self.commit(store, group))
        {
            Ok(()) => Ok(()),
            Err(Failure::Unreachable(why)) => Err(Error::Store(StoreError::Unavailable(format!(
                "{why}; the request was not confirmed, retry it"
            )))),
            Err(Failure::Stopped) => Err(match self.stop.check() {
                Err(e) => e,
                // A commit that never finished (its thread panicked): what it held is lost,
                // so the server cannot go on as if it were written.
                Ok(()) => self
                    .stop
                    .store_failed(&StoreError::Failed("a store commit did not finish".into())),
            }),
        }
    }

    /// Revokes the grants and takes the kept files of a [`Ready`] (under the state lock);
    /// returns the files, to be closed once the lock is given up.
    fn perform(&self, inner: &mut Inner, ready: Ready) -> Vec<Arc<File>> {
        for slot in ready.revoke {
            let revoked = inner.grants.revoke(slot);
            self.stats
                .direct_revocations
                .fetch_add(revoked, std::sync::atomic::Ordering::Relaxed);
        }
        ready
            .released
            .iter()
            .filter_map(|slot| inner.files.remove(slot))
            .collect()
    }

    /// Writes one group of queued changes (see [`GroupCommit`]); returns the last ticket it
    /// settles and how.
    fn commit(&self, store: &mut dyn Store, group: Group) -> (Ticket, Result<(), Failure>) {
        // A server that stopped writes nothing more (a later group could depend on the one
        // that failed).
        if self.stop.check().is_err() {
            return (group.last, Err(Failure::Stopped));
        }
        let failure = match apply_while_leased(store, &group.writes, || self.health()) {
            Ok(()) => return (group.last, Ok(())),
            // On a stop nothing more is served: the state stays as the store last took it.
            Err(Unapplied::Fenced(why)) => {
                self.stop.fenced(&why);
                return (group.last, Err(Failure::Stopped));
            }
            Err(Unapplied::Failed(e)) => {
                self.stop.store_failed(&e);
                return (group.last, Err(Failure::Stopped));
            }
            Err(Unapplied::Unreachable(why)) => why,
        };
        // Not confirmed, so nothing is promised: the core takes back what this group made,
        // and what every request queued after it made (they may build on it). All of it is
        // written once the store is back (writes are idempotent, and kept in order).
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (last, mut rest) = self.commits.fail_rest();
        let mut writes = group.writes;
        writes.append(&mut rest);
        writes.append(&mut inner.backlog);
        if let Some(checkpoint) = group.first_checkpoint {
            inner
                .core
                .advance(checkpoint, Persisted::Unconfirmed, now_ms());
        }
        let mut undone = inner.core.ready();
        writes.append(&mut undone.mutations);
        inner.backlog = writes;
        let closing = self.perform(&mut inner, undone);
        drop(inner);
        drop(closing);
        (last, Err(Failure::Unreachable(failure)))
    }

    /// Whether this server may change file bytes now: checked before each chunk of a write
    /// is put into the file, so a node whose lease lapsed mid-transfer stops writing at once.
    pub fn writable(&self) -> Result<(), Error> {
        self.stop.check()?;
        self.may_change(self.health())
    }

    /// Whether a node in `health` may change state: a fenced node stops here, a passive or
    /// suspended one refuses.
    fn may_change(&self, health: Health) -> Result<(), Error> {
        match health {
            Health::Active => Ok(()),
            Health::Fenced(why) => Err(self.stop.fenced(&why)),
            Health::Passive => Err(Error::Store(StoreError::Unavailable(
                "this node is passive; another node is active".into(),
            ))),
            Health::Suspended(why) => Err(Error::Store(StoreError::Unavailable(why))),
        }
    }

    /// Whether this node serves under a cluster lease (an etcd store), which can lapse.
    pub fn is_leased(&self) -> bool {
        self.lease.is_some()
    }

    /// Whether this node may change state now: always with an embedded store; with a
    /// cluster store, what its lease says.
    pub fn health(&self) -> Health {
        self.lease.as_ref().map_or(Health::Active, |l| l.health())
    }

    /// Grants direct mode to `handle` if the core allows it: `make` registers the memory and
    /// returns the grant, which is recorded (under the same lock) for later revocation.
    ///
    /// A write grant counts as a change of the file at once (the server never sees the bytes
    /// that follow, so a client resuming an older open is told the file changed).
    pub fn grant_direct<T: Revocable + 'static>(
        &self,
        handle: HandleId,
        access: DirectAccess,
        make: impl FnOnce() -> Result<Arc<T>, Error>,
    ) -> Result<Arc<T>, Error> {
        self.writable()?;
        self.peek(|core| core.direct_allowed(handle, access))?;
        let write = match access {
            DirectAccess::Write => Some(self.check_write(handle, None)?),
            DirectAccess::Read => None,
        };
        // Registering pins (so reads in) every page of the file: not under the lock.
        let grant = make()?;
        let recorded = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if self.stopping.load(Ordering::SeqCst) {
                // The stop took back the grants already: this one is not made.
                Err(Error::Store(StoreError::Unavailable(
                    "the server is stopping".into(),
                )))
            } else {
                // Decided again: a conflicting open or lock may have come meanwhile.
                inner
                    .core
                    .direct_allowed(handle, access)
                    .map_err(Error::from)
            }
            .map(|slot| inner.grants.record(slot, grant.clone()))
        };
        // The lock is given up: a write guard dropped on an error takes it again.
        recorded?;
        if let Some(mut write) = write {
            // The client may write from now on, without the server seeing the bytes.
            write.may_have_landed();
            self.wrote(&mut write);
        }
        self.stats
            .direct_grants
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(grant)
    }

    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ServerCore, u64) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.blocking(move |s| s.run_blocking(f)).await
    }

    /// The peer a drain interrupted by a restart is still going to.
    pub fn draining(&self) -> Option<String> {
        self.peek(|core| core.draining().map(str::to_owned))
    }

    /// The peer this server refers its clients to, if it was drained.
    pub fn referral(&self) -> Option<String> {
        self.peek(|core| core.referral().map(str::to_owned))
    }

    /// Keeps of `handles` those still attached to an open; whether any is.
    pub fn still_attached(&self, handles: &mut Vec<HandleId>) -> bool {
        self.peek(|core| handles.retain(|h| core.handle_record(*h).is_some()));
        !handles.is_empty()
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.peek(ServerCore::poll_timeout)
    }

    /// Reads the core under the lock (nothing changes, nothing is written).
    pub(super) fn peek<T>(&self, f: impl FnOnce(&ServerCore) -> T) -> T {
        f(&self.inner.lock().unwrap_or_else(|p| p.into_inner()).core)
    }

    /// Runs blocking work (the lock, the store, file IO) off the async runtime's threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| Error::Protocol(format!("server task failed: {e}")))?
    }

    /// Runs file-system work (which a hung network file system can stall for as long as it
    /// likes) off the async workers and outside the lock, at most [`FS_CALLS`] at a time.
    pub async fn fs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let slot = tokio::time::timeout(FS_WAIT, self.fs_slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                Error::FileSystem(format!(
                    "the server's file system is not answering ({FS_CALLS} operations are waiting on it); try again later"
                ))
            })?
            .map_err(|_| Error::Closed)?;
        let r = self.blocking(f).await;
        drop(slot);
        r
    }

    /// Expires opens at their deadlines until the process ends.
    pub async fn run_timers(self) {
        loop {
            let wait = self.next_deadline().map(|d| d.saturating_sub(now_ms()));
            let sleep = tokio::time::sleep(Duration::from_millis(wait.unwrap_or(3_600_000)));
            tokio::select! {
                _ = sleep => {
                    if let Err(e) = self.run(|core, now| { core.handle_timeout(now); Ok(()) }).await {
                        tracing::debug!("expiries wait: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Data channel: a duplicate handle for `key`, with its own descriptor of the open's file
    /// (read, or read-write, as the open). The file is the one the open was granted on: while
    /// the server runs it is reached through the descriptor kept for the open; after a restart
    /// (or once an expired open is granted again) the path is opened beneath the root and must
    /// still name the same file. If it does not, or the file cannot be opened, the handle is
    /// given back.
    pub fn attach(
        &self,
        client: &str,
        key: &[u8],
    ) -> Result<(Attached, File, AttachedHandle), Error> {
        // The file is checked before anything changes: a key whose file was replaced attaches
        // nothing (and revives no expired open).
        let kept = self.run_files(Persist::Now, |core, files, _| {
            let rec = core.key_record(client, key)?;
            Ok(match files.get(&rec.slot) {
                Some(f) => Ok(f.clone()),
                None => Err((rec.path.clone(), rec.file_id, rec.mode.can_write())),
            })
        })?;
        let (file, found) = match kept {
            Ok(kept) => (kept, false),
            Err((path, file_id, write)) => {
                (Arc::new(self.open_by_path(&path, file_id, write)?), true)
            }
        };
        let att = self.run_files(Persist::Now, |core, files, _| {
            let att = core.attach(client, key)?;
            if found && files.len() < self.config.max_kept_files {
                files.entry(att.slot).or_insert_with(|| file.clone());
            }
            Ok(att)
        })?;
        // From here on the handle is given back however this ends (an error, a panic).
        let guard = AttachedHandle {
            shared: self.clone(),
            handle: att.handle,
        };
        let own = reopen(&file, att.mode.can_write(), &att.path)?;
        drop(file); // if not kept, a close(2) here, after the lock was given up
        Ok((att, own, guard))
    }

    /// Opens `path` beneath the root again (after a restart, or once an expired open is
    /// granted again) and checks it is still the file `file_id` the open was granted on.
    fn open_by_path(&self, path: &str, file_id: u64, write: bool) -> Result<File, Error> {
        let replaced = || {
            Error::not_found(format!(
                "{path}: the file was replaced or removed since it was opened; the key no longer names a file"
            ))
        };
        let opened = match self.config.root.open_file(path, write) {
            Ok(o) => o,
            Err(Error::Core(CoreError::NotFound(_))) => return Err(replaced()),
            Err(e) => return Err(e),
        };
        if opened.identity.file_id() != file_id {
            tracing::warn!(path, "the open's file was replaced: refusing its key");
            return Err(replaced());
        }
        Ok(opened.file)
    }

    /// A new open of a file already opened beneath the root (outside the lock): the core
    /// decides, and a granted open keeps the file. A denied one closes it here, after the
    /// lock was given up; if this open had created the file and no open holds it, it is
    /// removed again, so a refused create leaves nothing behind.
    pub fn open_blocking(
        &self,
        req: OpenRequest,
        opened: OpenedFile,
    ) -> Result<(crate::state::Granted, Arc<File>), Error> {
        let path = req.path.clone();
        let file = Arc::new(opened.file);
        let kept = file.clone();
        let max_kept = self.config.max_kept_files;
        let (truncate, file_id) = (req.truncate, req.file_id);
        let mut pinned = false;
        let granted = self.run_files(Persist::Now, |core, files, now| {
            let g = core.open(req, now)?;
            // The core counts the cut on its way from here (see `ServerCore::open`).
            pinned = truncate;
            if files.len() < max_kept {
                files.insert(g.slot, kept);
            }
            Ok(g)
        });
        match granted {
            Ok(g) => Ok((g, file)),
            Err(e) => {
                if pinned {
                    self.end_file_change(file_id);
                }
                drop(file);
                if opened.created && !self.file_in_use(opened.identity.file_id()) {
                    self.config.root.remove_created(&path, &opened.identity);
                }
                Err(e)
            }
        }
    }

    /// What can be decided about a new open without its file (asked before it is opened or
    /// created): see [`ServerCore::precheck_open`].
    pub fn precheck_open(&self, client: &str, p: &crate::wire::OpenParams) -> Result<(), Error> {
        let now = now_ms();
        Ok(self.peek(|core| core.precheck_open(client, p.mode, &p.locks, p.truncate, now))?)
    }

    /// Whether `client` may remove or rename what `target` names (see
    /// `ServerCore::check_removable`).
    pub fn check_removable(
        &self,
        client: &str,
        target: &super::namespace_fs::Target,
    ) -> Result<(), Error> {
        match target.file {
            Some(id) => Ok(self.peek(|core| core.check_removable(client, id.file_id()))?),
            None => Ok(()),
        }
    }

    /// Whether a live open holds the file `file_id`.
    pub fn file_in_use(&self, file_id: u64) -> bool {
        self.peek(|core| core.file_in_use(file_id))
    }

    /// A channel holding `handle` is gone (written to the store once it is reachable).
    pub fn detach(&self, handle: HandleId) {
        let _ = self.run_with(Persist::Deferred, move |core, now| {
            core.detach(handle, now);
            Ok(())
        });
    }

    /// [`Shared::detach`] from an async task.
    pub async fn detach_off_runtime(&self, handle: HandleId) {
        let detached = self.blocking(move |s| {
            s.detach(handle);
            Ok(())
        });
        let _ = detached.await;
    }

    /// Checks and counts one read or write. A read's access count is written lazily (also
    /// while a cluster store is unreachable); a write is refused then.
    pub fn begin_io(
        &self,
        handle: HandleId,
        kind: IoKind,
        range: Option<ByteRange>,
    ) -> Result<(), Error> {
        let persist = match kind {
            IoKind::Read => Persist::Lazy,
            IoKind::Write => Persist::Now,
        };
        self.run_with(persist, move |core, _| {
            Ok(core.begin_io(handle, kind, range)?)
        })
    }

    /// Checks a write before its bytes move; nothing is counted until some land (see
    /// [`Shared::wrote`]). Refused while a cluster store is unreachable, and while the
    /// server is stopping or draining.
    pub fn check_write(
        &self,
        handle: HandleId,
        range: Option<ByteRange>,
    ) -> Result<CheckedWrite, Error> {
        let in_flight = self.changing_bytes()?;
        let (slot, file_id) = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.core.begin_write(handle, range)?
        };
        Ok(CheckedWrite {
            check: WriteCheck {
                handle: Some(handle),
                file_id,
            },
            slot,
            uncounted: false,
            ended: false,
            in_flight,
        })
    }

    /// A change of `file_id`'s bytes the server makes itself (a truncation by path), once
    /// `check` allows it: the file's change mark is held, durably, before this returns, and
    /// the change is on its way (see [`CheckedWrite`]) until counted. `handle` is the open
    /// to count it as, if one makes it.
    pub fn changing_file(
        &self,
        file_id: u64,
        handle: Option<HandleId>,
        check: impl FnOnce(&mut ServerCore) -> Result<(), Error>,
    ) -> Result<CheckedWrite, Error> {
        let in_flight = self.changing_bytes()?;
        let mut begun = false;
        let committed = self.run_blocking(|core, _| {
            check(core)?;
            core.begin_file_change(file_id);
            begun = true;
            Ok(())
        });
        if let Err(e) = committed {
            if begun {
                // Begun in the core, but the mark is not known to be durable: not made.
                self.end_file_change(file_id);
            }
            return Err(e);
        }
        Ok(self.file_change_begun(file_id, handle, in_flight))
    }

    /// Ends a change of `file_id`'s bytes begun in the core but never made (its commit
    /// failed), so it does not keep the file's state and mark held for good.
    fn end_file_change(&self, file_id: u64) {
        let _ = self.run_with(Persist::Lazy, |core, _| {
            core.end_write(NO_SLOT, file_id);
            Ok(())
        });
    }

    /// The guard of a change of `file_id`'s bytes the core counts on its way already (an
    /// open with truncation: see `ServerCore::open`), made under `in_flight`.
    pub fn file_change_begun(
        &self,
        file_id: u64,
        handle: Option<HandleId>,
        in_flight: WriteInFlight,
    ) -> CheckedWrite {
        CheckedWrite {
            check: WriteCheck { handle, file_id },
            slot: NO_SLOT,
            uncounted: false,
            ended: false,
            in_flight,
        }
    }

    /// Counts a change of file bytes (a write, a truncation) in flight until the guard is
    /// dropped, so that a clean stop or a drain can wait for it; refused once the server is
    /// stopping or draining, and as [`Shared::writable`] refuses.
    pub fn changing_bytes(&self) -> Result<WriteInFlight, Error> {
        // Counted before the flag is read, as the stop sets the flag before it reads the
        // count (both sequentially consistent): one of the two sees the other.
        let in_flight = WriteInFlight {
            shared: self.clone(),
        };
        self.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        self.may_land()?;
        Ok(in_flight)
    }

    /// Whether bytes of a change in flight may still go into a file: not once the server
    /// stops or drains (a write in flight then ends at its next piece), and as
    /// [`Shared::writable`] says.
    pub fn may_land(&self) -> Result<(), Error> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Error::Store(StoreError::Unavailable(
                "the server is stopping".into(),
            )));
        }
        if self.frozen.load(Ordering::SeqCst) {
            return Err(Error::Store(StoreError::Unavailable(
                "the server is draining to a peer".into(),
            )));
        }
        self.writable()
    }

    /// Marks a drain as running while the guard lives; None if one is already.
    pub fn drain_running(&self) -> Option<DrainRunning> {
        let was = self.drain_running.swap(true, Ordering::SeqCst);
        (!was).then(|| DrainRunning {
            shared: self.clone(),
        })
    }

    /// A drain begins (`true`) or was given up (`false`): see [`Shared::may_land`].
    pub fn freeze_bytes(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// Waits up to `limit` for every change of file bytes in flight to end; whether they
    /// did. Only meaningful once new ones are refused (stopping, draining).
    fn writes_ended(&self, limit: Duration) -> bool {
        let give_up = std::time::Instant::now() + limit;
        loop {
            if self.writes_in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if std::time::Instant::now() >= give_up {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`Shared::writes_ended`] from an async task.
    pub async fn writes_ended_off_runtime(&self, limit: Duration) -> bool {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.writes_ended(limit))
            .await
            .unwrap_or(false)
    }

    /// Bytes of a checked write (or change) reached the file, or it is over: its change is
    /// counted if bytes may have landed, also if the handle's open was closed meanwhile,
    /// and the core stops counting it on its way. The count is written lazily (see
    /// [`Persist::Lazy`]): while another open could look, the file's stored change mark
    /// already covers it, so a crash before it is written still reports the change (see
    /// `ServerCore::persist_file_marked`). Waits for a commit only to write changes kept
    /// while a cluster store was unreachable.
    pub fn wrote(&self, write: &mut CheckedWrite) {
        let counted = self.run_files(Persist::Lazy, write.finish());
        warn_uncounted(write, counted);
    }

    /// [`Shared::wrote`] for a task on an RDMA serving thread: the count is made here, and
    /// a wait for a commit goes off the thread, its CPU counted as the serving threads'
    /// own, so the thread's other connections are served meanwhile. An error only if that
    /// wait failed to finish (a panic in the commit): the fate of those changes is unknown,
    /// so the write must not be answered.
    pub async fn wrote_off_thread(&self, write: &mut CheckedWrite) -> Result<(), Error> {
        let (counted, ticket) = self.queue_files(Persist::Lazy, write.finish());
        let counted = match ticket {
            None => counted,
            Some(ticket) => {
                let this = self.clone();
                let wait = move || {
                    let cpu = &this.stats.data_cpu_ns;
                    crate::data::thread_cpu::counted(cpu, || this.settled(ticket, false))
                };
                match tokio::task::spawn_blocking(wait).await {
                    Ok(settled) => settled.and(counted),
                    Err(e) => return Err(Error::Protocol(format!("a store commit failed: {e}"))),
                }
            }
        };
        warn_uncounted(write, counted);
        Ok(())
    }

    /// [`Shared::wrote`] from a destructor, on whatever thread drops it: never waits. A
    /// commit it must wait for (changes kept while a cluster store was unreachable) is
    /// waited for on the blocking pool, or here outside a runtime.
    fn wrote_in_drop(&self, write: &mut CheckedWrite) {
        let (counted, ticket) = self.queue_files(Persist::Lazy, write.finish());
        warn_uncounted(write, counted);
        let Some(ticket) = ticket else {
            return;
        };
        let this = self.clone();
        let wait = move || {
            if let Err(e) = this.settled(ticket, false) {
                tracing::warn!("a write's count was not written: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(wait)),
            Err(_) => wait(),
        }
    }
}

/// Says so if a write's count could not be made.
fn warn_uncounted(write: &CheckedWrite, counted: Result<(), Error>) {
    if let Err(e) = counted {
        let file = write.check.file_id;
        tracing::warn!(file, "a write could not be counted: {e}");
    }
}

/// A write that passed its checks: what to count once its bytes land.
#[derive(Clone, Copy, Debug)]
pub struct WriteCheck {
    /// The handle it came through (none for a change the server makes by path).
    pub handle: Option<HandleId>,
    pub file_id: u64,
}

/// How long a clean stop or a drain waits for the writes in flight to be counted.
pub const STOP_WRITES_WAIT: Duration = Duration::from_secs(5);

/// A checked write (or change of a file's bytes), on its way until it is counted
/// ([`Shared::wrote`]) or dropped: the core knows it is on its way (and holds the file's
/// change mark where another open could miss it), and a clean stop or a drain waits for
/// it. If some of its bytes may be in the file ([`CheckedWrite::may_have_landed`]) and it
/// is dropped uncounted (a peer that went away mid-payload, a failed transfer), it counts
/// the change then.
pub struct CheckedWrite {
    pub check: WriteCheck,
    /// The open's slot, under which the core counts the write on its way (`NO_SLOT`: the
    /// file's, for a change no open makes).
    slot: u32,
    uncounted: bool,
    /// Counted (or given up) and no longer on its way in the core.
    ended: bool,
    in_flight: WriteInFlight,
}

impl CheckedWrite {
    /// Bytes of it may be in the file from now on (written, or an adapter may place them).
    pub fn may_have_landed(&mut self) {
        self.uncounted = true;
    }

    /// Whether it is still on its way.
    pub fn pending(&self) -> bool {
        !self.ended
    }

    /// What the core does to end it: count its change if bytes may have landed, and stop
    /// counting it on its way. Marks it ended.
    fn finish(
        &mut self,
    ) -> impl FnOnce(&mut ServerCore, &mut HashMap<u32, Arc<File>>, u64) -> Result<(), Error> {
        let (check, slot, count) = (self.check, self.slot, self.uncounted);
        self.ended = true;
        self.uncounted = false;
        move |core, _, _| {
            if count {
                match (slot, check.handle) {
                    (NO_SLOT, Some(h)) if core.count_io(h, IoKind::Write).is_ok() => {}
                    (NO_SLOT, _) => core.count_change(check.file_id),
                    (slot, _) => core.count_write(slot, check.file_id),
                }
            }
            core.end_write(slot, check.file_id);
            Ok(())
        }
    }
}

impl Drop for CheckedWrite {
    fn drop(&mut self) {
        // Counted before it stops being in flight (the guard goes after this).
        if !self.ended {
            let shared = self.in_flight.shared.clone();
            shared.wrote_in_drop(self);
        }
    }
}

/// A drain running, until dropped (see [`Shared::drain_running`]).
pub struct DrainRunning {
    shared: Shared,
}

impl Drop for DrainRunning {
    fn drop(&mut self) {
        self.shared.drain_running.store(false, Ordering::SeqCst);
    }
}

/// One change of file bytes in flight, counted while this lives (see
/// [`Shared::changing_bytes`]).
pub struct WriteInFlight {
    shared: Shared,
}

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        self.shared.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A duplicate handle held by a data channel: dropping it (the session ended, failed or
/// panicked) detaches the handle, so the open's durable timeout can start.
pub struct AttachedHandle {
    shared: Shared,
    handle: HandleId,
}

impl Drop for AttachedHandle {
    fn drop(&mut self) {
        let (shared, handle) = (self.shared.clone(), self.handle);
        match tokio::runtime::Handle::try_current() {
            // Off the async workers: a detach may wait for the store.
            Ok(rt) => drop(rt.spawn_blocking(move || shared.detach(handle))),
            Err(_) => shared.detach(handle),
        }
    }
}
