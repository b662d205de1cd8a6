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

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

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

#[derive(Default)]
struct State {
    next: u64,
    /// Unauthenticated connections by arrival (oldest first).
    waiting: BTreeMap<u64, Waiting>,
    per_address: HashMap<IpAddr, usize>,
    authenticated: usize,
    per_client: HashMap<String, usize>,
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

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: Arc::default(),
        }
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

    /// A seat for an authenticated connection of `client` (RDMA, which authenticates its key
    /// before it accepts, has no ticket).
    pub fn seat(&self, client: &str) -> Result<Seat, Error> {
        let mut s = self.lock();
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
        Ok(Seat {
            client: client.to_owned(),
            state: self.state.clone(),
        })
    }

    /// Turns a ticket into a seat for `client`, who just authenticated. A ticket closed to
    /// make room meanwhile gets none (its connection is being closed).
    pub fn authenticate(&self, ticket: Ticket, client: &str) -> Result<Seat, Error> {
        let mut s = self.lock();
        if !ticket.leave(&mut s) {
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
}

impl Seat {
    pub fn client(&self) -> &str {
        &self.client
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
        let a = Admission::new(small());
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
        let a = Admission::new(small());
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
        let a = Admission::new(small());
        let t0 = Instant::now();
        let old = at(&a, t0, 0, ip(1)).unwrap();
        let _b = at(&a, t0, 0, ip(1)).unwrap();
        let _c = at(&a, t0, 5, ip(1)).unwrap();
        assert!(is_closed(&old).await);
        assert!(matches!(a.authenticate(old, "alice"), Err(Error::Closed)));
        assert_eq!(a.counts().authenticated, 0);
    }

    #[test]
    fn seats_are_capped_per_client_and_in_total_and_given_back_on_drop() {
        let a = Admission::new(small());
        let t1 = a.arrive(ip(1)).unwrap();
        let s1 = a.authenticate(t1, "alice").unwrap();
        let _s2 = a.seat("alice").unwrap();
        let err = a.seat("alice").err().expect("alice is at her cap");
        assert!(err.to_string().contains("too many connections from alice"));
        assert_eq!(err.code(), crate::wire::ErrorCode::Denied);
        let _b1 = a.seat("bob").unwrap();
        let err = a.seat("carol").err().expect("the server is full");
        assert!(err.to_string().contains("--max-connections 3"), "{err}");
        drop(s1);
        a.seat("alice").expect("a dropped seat is given back");
        assert_eq!(a.counts().unauthenticated, 0);
        assert_eq!(a.counts().refused, 2);
    }
}
