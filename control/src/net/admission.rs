//! Who may hold a connection: the server's admission control, shared by every listener
//! (control, TCP/TLS data, RDMA).
//!
//! A connection that has not authenticated yet holds a [`Ticket`]. Tickets are capped per
//! peer address and in total; when a cap is reached the *oldest* ticket of the address (or,
//! for the total, of the address holding the most) is closed to make room, as sshd's
//! `MaxStartups` and nginx's `limit_conn` keep a flood of idle connections from starving
//! clients that authenticate in a few milliseconds. Unauthenticated connections never use
//! the room kept for authenticated ones: an authenticated connection holds a [`Seat`],
//! capped in total and per client, and a refused seat is answered with a message naming the
//! cap.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// How long an authenticated control connection may send nothing before it is closed
    /// (its opens stay durable). None: never.
    pub idle_timeout: Option<Duration>,
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

/// Counters of admission decisions, for `handoff stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionCounts {
    pub unauthenticated: usize,
    pub authenticated: usize,
    /// Unauthenticated connections closed to make room for newer ones.
    pub evicted: u64,
    /// Authenticated connections refused by a cap.
    pub refused: u64,
}

struct Waiting {
    addr: IpAddr,
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

    fn oldest_from(&self, addr: IpAddr) -> Option<u64> {
        self.waiting
            .iter()
            .find(|(_, w)| w.addr == addr)
            .map(|(id, _)| *id)
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

    /// A new connection from `addr`, not yet authenticated. Makes room first by closing the
    /// oldest unauthenticated connection of `addr` (past its per-address cap), else the
    /// oldest of the address that holds the most (past the total cap).
    pub fn arrive(&self, addr: IpAddr) -> Ticket {
        let mut s = self.lock();
        if s.per_address.get(&addr).copied().unwrap_or(0)
            >= self.limits.max_unauthenticated_per_address.max(1)
        {
            if let Some(id) = s.oldest_from(addr) {
                tracing::debug!(%addr, "unauthenticated connections from this address at their cap: closing its oldest");
                s.evict(id);
            }
        }
        if s.waiting.len() >= self.limits.max_unauthenticated.max(1) {
            let busiest = s
                .per_address
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(a, _)| *a);
            if let Some(id) = busiest.and_then(|a| s.oldest_from(a)) {
                tracing::debug!("unauthenticated connections at their total cap: closing the oldest of the busiest address");
                s.evict(id);
            }
        }
        let id = s.next;
        s.next += 1;
        let closed = Arc::new(Notify::new());
        s.waiting.insert(
            id,
            Waiting {
                addr,
                closed: closed.clone(),
            },
        );
        *s.per_address.entry(addr).or_default() += 1;
        Ticket {
            id,
            state: self.state.clone(),
            closed,
        }
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

    /// Turns a ticket into a seat for `client`, who just authenticated.
    pub fn authenticate(&self, ticket: Ticket, client: &str) -> Result<Seat, Error> {
        let mut s = self.lock();
        ticket.leave(&mut s);
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

    fn leave(&self, s: &mut State) {
        if let Some(w) = s.waiting.remove(&self.id) {
            s.forget_address(w.addr);
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

    #[tokio::test]
    async fn an_address_at_its_cap_loses_its_oldest_connection_not_anyone_elses() {
        let a = Admission::new(small());
        let other = a.arrive(ip(2));
        let first = a.arrive(ip(1));
        let _second = a.arrive(ip(1));
        let _third = a.arrive(ip(1));
        // The oldest of 10.0.0.1 was closed; 10.0.0.2's older connection was not.
        tokio::time::timeout(Duration::from_millis(100), first.evicted())
            .await
            .expect("the oldest connection of the flooding address is closed");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.evicted())
                .await
                .is_err(),
            "another address's connection stays"
        );
        assert_eq!(a.counts().unauthenticated, 3);
        assert_eq!(a.counts().evicted, 1);
    }

    #[tokio::test]
    async fn the_total_cap_closes_the_oldest_of_the_busiest_address() {
        let a = Admission::new(small());
        let quiet = a.arrive(ip(9));
        let busy_old = a.arrive(ip(1));
        let _busy = a.arrive(ip(1));
        let _c = a.arrive(ip(3));
        let _d = a.arrive(ip(4));
        tokio::time::timeout(Duration::from_millis(100), busy_old.evicted())
            .await
            .expect("the busiest address gives way");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), quiet.evicted())
                .await
                .is_err(),
            "the oldest overall is spared when it is not from the busiest address"
        );
    }

    #[test]
    fn seats_are_capped_per_client_and_in_total_and_given_back_on_drop() {
        let a = Admission::new(small());
        let t1 = a.arrive(ip(1));
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
