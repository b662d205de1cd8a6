//! Who may hold a connection: the server's admission control, shared by every listener
//! (control, TCP/TLS data, RDMA).
//!
//! A connection that has not authenticated yet holds a [`Ticket`]. Tickets are capped per
//! peer address and in total; when a cap is reached the *oldest* ticket of the address (or,
//! for the total, of the address holding the most) is closed to make room, as sshd's
//! `MaxStartups` and nginx's `limit_conn` keep a flood of idle connections from starving
//! clients that authenticate in a few milliseconds. A connection younger than [`MIN_WAIT`]
//! is never closed for that: it is most likely a client half-way through its handshake (the
//! ranks of a job starting at once), so the newcomer is turned away instead, and the client
//! library tries again shortly. Unauthenticated connections never use
//! the room kept for authenticated ones: an authenticated connection holds a [`Seat`],
//! capped in total and per client, and a refused seat is answered with a message naming the
//! cap.
//!
//! Admission also holds the client directory (who may authenticate, with which secret). It
//! can be replaced while the server runs (SIGHUP rereads `--clients`): every seat of a client
//! removed from it, or whose secret changed, is revoked, and its connection closed; a
//! handshake that used the directory before the change gets no seat unless the client's
//! secret is the same in both. Both happen under one lock, so none slips between them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::auth::ClientDirectory;
use crate::Error;

/// The caps, each a `handoffd` flag.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Authenticated connections at once, every channel (control, data, RDMA) counted.
    pub max_connections: usize,
    /// Authenticated connections of one client at once.
    pub max_client_connections: usize,
    /// Connections still authenticating, in total.
    pub max_unauthenticated: usize,
    /// Connections still authenticating from one IP address.
    pub max_unauthenticated_per_address: usize,
    /// How long a frame (or a bulk transfer) may stall half-way before the connection is
    /// closed.
    pub frame_timeout: Duration,
    /// How long an authenticated control connection that holds no open may send nothing
    /// before it is closed. None: never.
    pub idle_timeout: Option<Duration>,
    /// How long an RDMA data channel may be silent before the server checks its peer is
    /// still there (a zero-length RDMA WRITE it must acknowledge).
    pub rdma_probe_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            max_client_connections: 2048,
            max_unauthenticated: 1024,
            max_unauthenticated_per_address: 256,
            frame_timeout: Duration::from_secs(20),
            idle_timeout: Some(Duration::from_secs(300)),
            rdma_probe_interval: Duration::from_secs(20),
        }
    }
}

impl Limits {
    /// Descriptors the connections may take at most (the rest are for files).
    pub fn connection_fds(&self) -> usize {
        self.max_connections
            .saturating_add(self.max_unauthenticated)
    }
}

/// How long an unauthenticated connection is left alone before it may be closed to make room
/// (a handshake takes milliseconds).
pub const MIN_WAIT: Duration = Duration::from_secs(2);

/// Counters of admission decisions, for `handoff stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionCounts {
    pub unauthenticated: usize,
    pub authenticated: usize,
    /// Unauthenticated connections closed to make room for newer ones.
    pub evicted: u64,
    /// New connections closed at once: their address (or the server) was at its cap of
    /// unauthenticated connections, none of them old enough to close instead.
    pub turned_away: u64,
    /// Authenticated connections refused by a cap.
    pub refused: u64,
}

struct Waiting {
    addr: IpAddr,
    since: Instant,
    closed: Arc<Notify>,
}

struct State {
    next: u64,
    /// Unauthenticated connections by arrival (oldest first).
    waiting: BTreeMap<u64, Waiting>,
    per_address: HashMap<IpAddr, usize>,
    authenticated: usize,
    per_client: HashMap<String, usize>,
    /// Each client's seats, to revoke when the client is removed or its secret changes.
    seats: HashMap<String, Vec<Weak<Revocation>>>,
    directory: Arc<ClientDirectory>,
    counts: AdmissionCounts,
}

impl State {
    fn evict(&mut self, id: u64) {
        if let Some(w) = self.waiting.remove(&id) {
            self.forget_address(w.addr);
            self.counts.evicted += 1;
            w.closed.notify_one();
        }
    }

    fn forget_address(&mut self, addr: IpAddr) {
        if let Some(n) = self.per_address.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&addr);
            }
        }
    }

    /// The oldest unauthenticated connection from `addr`, if it has waited `MIN_WAIT`.
    fn closable_from(&self, addr: IpAddr, now: Instant) -> Option<u64> {
        self.waiting
            .iter()
            .find(|(_, w)| w.addr == addr)
            .filter(|(_, w)| now.saturating_duration_since(w.since) >= MIN_WAIT)
            .map(|(id, _)| *id)
    }
}

/// Whom a peer address counts as: an IPv4 address as itself (also when mapped into IPv6), an
/// IPv6 address by its /64 (one host or site is given a /64; counting single addresses there
/// would give it 2^64 separate caps).
fn source(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The admission state of one server.
pub struct Admission {
    limits: Limits,
    state: Arc<Mutex<State>>,
}

/// What replacing the client directory changed, by client name (sorted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectoryChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Still listed, with another secret.
    pub changed: Vec<String>,
    /// Connections closed because their client was removed or changed.
    pub closed: usize,
}

impl Admission {
    pub fn new(limits: Limits, directory: ClientDirectory) -> Self {
        Self {
            limits,
            state: Arc::new(Mutex::new(State {
                next: 0,
                waiting: BTreeMap::new(),
                per_address: HashMap::new(),
                authenticated: 0,
                per_client: HashMap::new(),
                seats: HashMap::new(),
                directory: Arc::new(directory),
                counts: AdmissionCounts::default(),
            })),
        }
    }

    /// The client directory now: a handshake authenticates against this snapshot, and its
    /// seat is granted only if the snapshot still holds for the client (see
    /// [`Admission::authenticate`]).
    pub fn directory(&self) -> Arc<ClientDirectory> {
        self.lock().directory.clone()
    }

    /// Puts `new` in place of the client directory and revokes every seat of a client it
    /// removes or gives another secret (their connections close; their opens stay, durable).
    pub fn replace_directory(&self, new: ClientDirectory) -> DirectoryChange {
        let mut s = self.lock();
        let old = std::mem::replace(&mut s.directory, Arc::new(new));
        let new = s.directory.clone();
        let mut change = DirectoryChange::default();
        for name in old.names() {
            match new.secret(name) {
                None => change.removed.push(name.to_owned()),
                Some(secret) if Some(secret) != old.secret(name) => {
                    change.changed.push(name.to_owned())
                }
                Some(_) => {}
            }
        }
        change.added = new
            .names()
            .filter(|n| !old.contains(n))
            .map(str::to_owned)
            .collect();
        for list in [&mut change.added, &mut change.removed, &mut change.changed] {
            list.sort();
        }
        let revoked: Vec<Arc<Revocation>> = change
            .removed
            .iter()
            .chain(&change.changed)
            .filter_map(|name| s.seats.remove(name))
            .flatten()
            .filter_map(|w| w.upgrade())
            .collect();
        drop(s);
        change.closed = revoked.len();
        for r in revoked {
            r.revoke();
        }
        change
    }

    /// Whether `client` authenticated against `used` may take a seat now: the directory is
    /// the same, or holds the same secret for the client.
    fn still_valid(s: &State, used: &ClientDirectory, client: &str) -> bool {
        std::ptr::eq(used, &*s.directory)
            || (used.secret(client).is_some() && used.secret(client) == s.directory.secret(client))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn counts(&self) -> AdmissionCounts {
        let s = self.lock();
        AdmissionCounts {
            unauthenticated: s.waiting.len(),
            authenticated: s.authenticated,
            ..s.counts
        }
    }

    /// A new connection from `addr`, not yet authenticated. Past the per-address cap, the
    /// oldest unauthenticated connection of `addr` is closed to make room; past the total
    /// cap, the oldest of the address that holds the most. If that one is younger than
    /// [`MIN_WAIT`], the newcomer is turned away instead (None: close it now).
    pub fn arrive(&self, addr: IpAddr) -> Option<Ticket> {
        self.arrive_at(source(addr), Instant::now())
    }

    fn arrive_at(&self, addr: IpAddr, now: Instant) -> Option<Ticket> {
        let mut s = self.lock();
        if s.per_address.get(&addr).copied().unwrap_or(0)
            >= self.limits.max_unauthenticated_per_address.max(1)
        {
            let Some(id) = s.closable_from(addr, now) else {
                s.counts.turned_away += 1;
                return None;
            };
            tracing::debug!(%addr, "unauthenticated connections from this address at their cap: closing its oldest");
            s.evict(id);
        }
        if s.waiting.len() >= self.limits.max_unauthenticated.max(1) {
            let busiest = s
                .per_address
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(a, _)| *a);
            let Some(id) = busiest.and_then(|a| s.closable_from(a, now)) else {
                s.counts.turned_away += 1;
                return None;
            };
            tracing::debug!("unauthenticated connections at their total cap: closing the oldest of the busiest address");
            s.evict(id);
        }
        let id = s.next;
        s.next += 1;
        let closed = Arc::new(Notify::new());
        s.waiting.insert(
            id,
            Waiting {
                addr,
                since: now,
                closed: closed.clone(),
            },
        );
        *s.per_address.entry(addr).or_default() += 1;
        Some(Ticket {
            id,
            state: self.state.clone(),
            closed,
        })
    }

    /// A seat for an authenticated connection of `client`, who proved itself with the
    /// secret in `used` (RDMA, which authenticates its key before it accepts, has no ticket).
    pub fn seat(&self, client: &str, used: &ClientDirectory) -> Result<Seat, Error> {
        let mut s = self.lock();
        if !Self::still_valid(&s, used, client) {
            return Err(Error::Closed);
        }
        self.take_seat(&mut s, client)
    }

    fn take_seat(&self, s: &mut State, client: &str) -> Result<Seat, Error> {
        let mine = s.per_client.get(client).copied().unwrap_or(0);
        if mine >= self.limits.max_client_connections {
            s.counts.refused += 1;
            return Err(Error::Limit(format!(
                "too many connections from {client}: it holds {mine}, the most this server \
                 allows one client (handoffd --max-client-connections {})",
                self.limits.max_client_connections
            )));
        }
        if s.authenticated >= self.limits.max_connections {
            s.counts.refused += 1;
            return Err(Error::Limit(format!(
                "too many connections: this server holds {}, its most (handoffd \
                 --max-connections {}); retry later",
                s.authenticated, self.limits.max_connections
            )));
        }
        s.authenticated += 1;
        *s.per_client.entry(client.to_owned()).or_default() += 1;
        let revocation = Arc::new(Revocation::default());
        let seats = s.seats.entry(client.to_owned()).or_default();
        seats.retain(|w| w.strong_count() > 0);
        seats.push(Arc::downgrade(&revocation));
        Ok(Seat {
            client: client.to_owned(),
            state: self.state.clone(),
            revocation,
        })
    }

    /// Turns a ticket into a seat for `client`, who just authenticated against `used`. A
    /// ticket closed to make room meanwhile gets none (its connection is being closed), nor
    /// does a client the directory lost or changed since `used` was read (its connection
    /// closes, and the client's retry meets the directory as it is now).
    pub fn authenticate(
        &self,
        ticket: Ticket,
        client: &str,
        used: &ClientDirectory,
    ) -> Result<Seat, Error> {
        let mut s = self.lock();
        if !ticket.leave(&mut s) || !Self::still_valid(&s, used, client) {
            return Err(Error::Closed);
        }
        self.take_seat(&mut s, client)
    }
}

/// An unauthenticated connection's place; dropping it gives the place back.
pub struct Ticket {
    id: u64,
    state: Arc<Mutex<State>>,
    closed: Arc<Notify>,
}

impl Ticket {
    /// Resolves when admission closed this connection to make room for a newer one.
    pub async fn evicted(&self) {
        self.closed.notified().await
    }

    /// What [`Ticket::evicted`] waits on, for whoever outlives the ticket itself.
    pub fn closer(&self) -> Arc<Notify> {
        self.closed.clone()
    }

    /// Gives the place back; false if admission had already closed it.
    fn leave(&self, s: &mut State) -> bool {
        match s.waiting.remove(&self.id) {
            Some(w) => {
                s.forget_address(w.addr);
                true
            }
            None => false,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.leave(&mut s);
    }
}

/// An authenticated connection's place; dropping it gives the place back.
pub struct Seat {
    client: String,
    state: Arc<Mutex<State>>,
    revocation: Arc<Revocation>,
}

/// A seat's revocation: raised when its client leaves the directory (or changes secret).
#[derive(Default)]
struct Revocation {
    revoked: AtomicBool,
    notify: Notify,
    /// Run once, on revocation (a thread's connection closed from outside it).
    closers: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl Revocation {
    fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        let closers = std::mem::take(&mut *self.closers.lock().unwrap_or_else(|p| p.into_inner()));
        for close in closers {
            close();
        }
    }
}

impl Seat {
    pub fn client(&self) -> &str {
        &self.client
    }

    /// Resolves once the seat is revoked: the connection must close.
    pub async fn revoked(&self) {
        loop {
            let notified = self.revocation.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.revocation.revoked.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Runs `close` when the seat is revoked (at once if it already is): how a connection
    /// served off the async control path (an RDMA connection) is closed from outside.
    pub fn on_revoke(&self, close: impl FnOnce() + Send + 'static) {
        let mut closers = self
            .revocation
            .closers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.revocation.revoked.load(Ordering::SeqCst) {
            drop(closers);
            close();
        } else {
            closers.push(Box::new(close));
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.authenticated = s.authenticated.saturating_sub(1);
        if let Some(n) = s.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                s.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Limits {
        Limits {
            max_connections: 3,
            max_client_connections: 2,
            max_unauthenticated: 4,
            max_unauthenticated_per_address: 2,
            ..Limits::default()
        }
    }

    /// A directory of `(name, secret byte)`.
    fn directory(clients: &[(&str, u8)]) -> ClientDirectory {
        let lines: Vec<String> = clients
            .iter()
            .map(|(n, b)| format!("{n}:{}", hex::encode([*b; 32])))
            .collect();
        ClientDirectory::parse(&lines.join("\n")).unwrap()
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// Arrivals `secs` seconds after a fixed start.
    fn at(a: &Admission, start: Instant, secs: u64, from: IpAddr) -> Option<Ticket> {
        a.arrive_at(from, start + Duration::from_secs(secs))
    }

    async fn is_closed(t: &Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(50), t.evicted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn an_address_at_its_cap_loses_its_oldest_connection_not_anyone_elses() {
        let a = Admission::new(
            small(),
            directory(&[("alice", 1), ("bob", 2), ("carol", 3)]),
        );
        let t0 = Instant::now();
        let other = at(&a, t0, 0, ip(2)).unwrap();
        let first = at(&a, t0, 0, ip(1)).unwrap();
        let second = at(&a, t0, 1, ip(1)).unwrap();
        // Both of 10.0.0.1's are younger than MIN_WAIT: the newcomer is turned away.
        assert!(at(&a, t0, 1, ip(1)).is_none());
        assert_eq!(a.counts().turned_away, 1);
        // Later the oldest of 10.0.0.1 is closed for it; 10.0.0.2's older one stays.
        let _third = at(&a, t0, 3, ip(1)).unwrap();
        assert!(
            is_closed(&first).await,
            "the flooding address's oldest is closed"
        );
        assert!(!is_closed(&second).await);
        assert!(
            !is_closed(&other).await,
            "another address's connection stays"
        );
        assert_eq!(a.counts().unauthenticated, 3);
        assert_eq!(a.counts().evicted, 1);
    }

    #[tokio::test]
    async fn the_total_cap_closes_the_oldest_of_the_busiest_address() {
        let a = Admission::new(
            small(),
            directory(&[("alice", 1), ("bob", 2), ("carol", 3)]),
        );
        let t0 = Instant::now();
        let quiet = at(&a, t0, 0, ip(9)).unwrap();
        let busy_old = at(&a, t0, 0, ip(1)).unwrap();
        let _busy = at(&a, t0, 0, ip(1)).unwrap();
        let _c = at(&a, t0, 0, ip(3)).unwrap();
        assert!(
            at(&a, t0, 1, ip(4)).is_none(),
            "full, and nobody waited long"
        );
        let _d = at(&a, t0, 5, ip(4)).unwrap();
        assert!(is_closed(&busy_old).await, "the busiest address gives way");
        assert!(
            !is_closed(&quiet).await,
            "the oldest overall is spared when it is not from the busiest address"
        );
    }

    #[test]
    fn an_ipv6_prefix_counts_as_one_source_and_mapped_ipv4_as_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(source(a), source(b));
        assert_ne!(source(a), source("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(source("::ffff:10.0.0.1".parse().unwrap()), ip(1));
    }

    #[tokio::test]
    async fn a_ticket_closed_to_make_room_gets_no_seat() {
        let a = Admission::new(
            small(),
            directory(&[("alice", 1), ("bob", 2), ("carol", 3)]),
        );
        let t0 = Instant::now();
        let old = at(&a, t0, 0, ip(1)).unwrap();
        let _b = at(&a, t0, 0, ip(1)).unwrap();
        let _c = at(&a, t0, 5, ip(1)).unwrap();
        assert!(is_closed(&old).await);
        let dir = a.directory();
        assert!(matches!(
            a.authenticate(old, "alice", &dir),
            Err(Error::Closed)
        ));
        assert_eq!(a.counts().authenticated, 0);
    }

    #[test]
    fn seats_are_capped_per_client_and_in_total_and_given_back_on_drop() {
        let a = Admission::new(
            small(),
            directory(&[("alice", 1), ("bob", 2), ("carol", 3)]),
        );
        let d = a.directory();
        let t1 = a.arrive(ip(1)).unwrap();
        let s1 = a.authenticate(t1, "alice", &d).unwrap();
        let _s2 = a.seat("alice", &d).unwrap();
        let err = a.seat("alice", &d).err().expect("alice is at her cap");
        assert!(err.to_string().contains("too many connections from alice"));
        assert_eq!(err.code(), crate::wire::ErrorCode::Denied);
        let _b1 = a.seat("bob", &d).unwrap();
        let err = a.seat("carol", &d).err().expect("the server is full");
        assert!(err.to_string().contains("--max-connections 3"), "{err}");
        drop(s1);
        a.seat("alice", &d).expect("a dropped seat is given back");
        assert_eq!(a.counts().unauthenticated, 0);
        assert_eq!(a.counts().refused, 2);
    }

    async fn is_revoked(seat: &Seat) -> bool {
        tokio::time::timeout(Duration::from_millis(50), seat.revoked())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_new_directory_revokes_the_seats_of_removed_and_changed_clients_only() {
        let limits = Limits {
            max_connections: 100,
            max_client_connections: 10,
            ..Limits::default()
        };
        let a = Admission::new(limits, directory(&[("alice", 1), ("bob", 2), ("carol", 3)]));
        let old = a.directory();
        let alice = a.seat("alice", &old).unwrap();
        let bob = a.seat("bob", &old).unwrap();
        let carol = a.seat("carol", &old).unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        let c = closed.clone();
        bob.on_revoke(move || c.store(true, Ordering::SeqCst));
        // A handshake that read the old directory and takes its seat after the change.
        let late_bob = a.arrive(ip(1)).unwrap();
        let late_carol = a.arrive(ip(1)).unwrap();

        let change = a.replace_directory(directory(&[("alice", 1), ("carol", 9), ("dave", 4)]));
        assert_eq!(change.added, ["dave"]);
        assert_eq!(change.removed, ["bob"]);
        assert_eq!(change.changed, ["carol"]);
        assert_eq!(change.closed, 2);
        assert!(is_revoked(&bob).await && is_revoked(&carol).await);
        assert!(closed.load(Ordering::SeqCst), "bob's closer ran");
        assert!(!is_revoked(&alice).await, "alice is unchanged");
        assert!(matches!(
            a.authenticate(late_bob, "bob", &old),
            Err(Error::Closed)
        ));
        assert!(matches!(
            a.authenticate(late_carol, "carol", &old),
            Err(Error::Closed)
        ));
        let t = a.arrive(ip(1)).unwrap();
        a.authenticate(t, "alice", &old)
            .expect("alice's secret is the same in both");
        let now = a.directory();
        a.seat("dave", &now).expect("an added client is seated");
        // A closer given after the revocation runs at once.
        let late = Arc::new(AtomicBool::new(false));
        let l = late.clone();
        bob.on_revoke(move || l.store(true, Ordering::SeqCst));
        assert!(late.load(Ordering::SeqCst));
    }
}
