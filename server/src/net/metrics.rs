//! Prometheus metrics: what is counted where it happens (bytes, operations, latencies, store
//! commits), what is read off the server's state at each scrape (opens by state, locks,
//! connections, the node's role), and the text exposition `--metrics-listen` serves.
//!
//! Counting goes through the `metrics` facade: with no recorder installed (unit tests, a
//! server started without `--metrics-listen`) every call is a no-op.

use std::time::Instant;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::shared::Shared;
use crate::cluster::Health;

/// How a data channel's bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Rdma,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Rdma => "rdma",
        }
    }
}

/// A data-channel request, as the metrics name it (its value indexes [`DATA_OPS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataOp {
    Read = 0,
    Write = 1,
    Flush = 2,
}

impl DataOp {
    fn as_str(self) -> &'static str {
        match self {
            DataOp::Read => "read",
            DataOp::Write => "write",
            DataOp::Flush => "flush",
        }
    }
}

/// Latency buckets (seconds): 50 µs to about 100 s.
const BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0, 100.0,
];

/// Installs the process's recorder and describes every series; the handle renders them.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe_counter!(
        "handoff_data_bytes_total",
        metrics::Unit::Bytes,
        "File bytes moved on data channels, by transport and direction (read: to clients)"
    );
    describe_counter!(
        "handoff_data_operations_total",
        "Data-channel requests served, by transport and operation (read, write, flush)"
    );
    describe_counter!(
        "handoff_client_data_bytes_total",
        metrics::Unit::Bytes,
        "File bytes moved on data channels, by client and direction"
    );
    describe_counter!(
        "handoff_client_data_operations_total",
        "Data-channel requests served, by client and operation"
    );
    describe_gauge!(
        "handoff_data_handles",
        "Duplicate handles attached on data channels now, by transport"
    );
    describe_counter!(
        "handoff_control_requests_total",
        "Control-channel requests, by request (open, close, lock, pass, stat, ...) and result"
    );
    describe_counter!(
        "handoff_direct_grants_total",
        "Direct-mode grants (rkeys to a file the client reads with no server CPU)"
    );
    describe_counter!(
        "handoff_direct_revocations_total",
        "Direct-mode grants revoked (a conflicting open, lock, close or expiry)"
    );
    describe_histogram!(
        "handoff_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to serve a request, by operation (open, resume, read, write, flush)"
    );
    describe_histogram!(
        "handoff_store_commit_duration_seconds",
        metrics::Unit::Seconds,
        "Time to make one batch of state changes durable in the store"
    );
    describe_gauge!(
        "handoff_opens",
        "Opens held, by state: connected (a channel holds a handle), durable (none does; held until its timeout), expired (remembered for its holder)"
    );
    describe_gauge!("handoff_locks", "Byte-range locks held by live opens");
    describe_gauge!(
        "handoff_connections",
        "Connections now, by state (authenticated, unauthenticated)"
    );
    describe_counter!(
        "handoff_connection_refusals_total",
        "Connections refused or closed, by reason: evicted (an unauthenticated one closed for a newer), turned_away (its address was at its cap), cap (an authenticated client over --max-connections or --max-client-connections), auth_failed (the handshake failed: unknown client, wrong secret)"
    );
    describe_gauge!(
        "handoff_active",
        "1 while this node serves state changes (embedded store, or the cluster's active node)"
    );
    describe_gauge!(
        "handoff_grace",
        "1 during the grace period after a restart (only resumes are served)"
    );
    describe_gauge!("handoff_fenced", "1 once this node lost its cluster lease");
    describe_gauge!(
        "handoff_draining",
        "1 while this server hands its opens to a peer, or after it did"
    );
    Ok(handle)
}

/// A request of `op` (open, resume) took since `started`.
pub fn request_took(op: &'static str, started: Instant) {
    histogram!("handoff_request_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

/// A control request of kind `request` ended (`ok` or refused).
pub fn control_request(request: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "refused" };
    counter!("handoff_control_requests_total", "request" => request, "result" => result)
        .increment(1);
}

/// A connection was refused for `reason` outside admission's counts (auth_failed).
pub fn connection_refused(reason: &'static str) {
    counter!("handoff_connection_refusals_total", "reason" => reason).increment(1);
}

/// A store commit took since `started`.
pub fn store_commit(started: Instant) {
    histogram!("handoff_store_commit_duration_seconds").record(started.elapsed().as_secs_f64());
}

/// The series one attached data-channel handle moves, looked up once when it attaches (a
/// request then only adds to them), and the handle counted in `handoff_data_handles` while
/// it lives.
pub struct DataCounters {
    transport: Transport,
    /// By direction: read, write.
    bytes: [Counter; 2],
    client_bytes: [Counter; 2],
    /// By [`DataOp`]: read, write, flush.
    operations: [Counter; 3],
    client_operations: [Counter; 3],
    latency: [Histogram; 3],
}

const DATA_OPS: [DataOp; 3] = [DataOp::Read, DataOp::Write, DataOp::Flush];

impl DataCounters {
    pub fn new(transport: Transport, client: &str) -> Self {
        let t = transport.as_str();
        let by_direction = |name: &'static str, label: &'static str, value: &str| {
            ["read", "write"].map(
                |direction| counter!(name, label => value.to_owned(), "direction" => direction),
            )
        };
        let by_op = |name: &'static str, label: &'static str, value: &str| {
            DATA_OPS.map(|op| counter!(name, label => value.to_owned(), "op" => op.as_str()))
        };
        gauge!("handoff_data_handles", "transport" => t).increment(1.0);
        Self {
            transport,
            bytes: by_direction("handoff_data_bytes_total", "transport", t),
            client_bytes: by_direction("handoff_client_data_bytes_total", "client", client),
            operations: by_op("handoff_data_operations_total", "transport", t),
            client_operations: by_op("handoff_client_data_operations_total", "client", client),
            latency: DATA_OPS
                .map(|op| histogram!("handoff_request_duration_seconds", "op" => op.as_str())),
        }
    }

    /// A request served: its bytes, its operation and its latency, by transport and by client.
    pub fn served(&self, op: DataOp, bytes: u64, started: Instant) {
        let i = op as usize;
        if bytes > 0 {
            let direction = usize::from(op == DataOp::Write);
            self.bytes[direction].increment(bytes);
            self.client_bytes[direction].increment(bytes);
        }
        self.operations[i].increment(1);
        self.client_operations[i].increment(1);
        self.latency[i].record(started.elapsed().as_secs_f64());
    }
}

impl Drop for DataCounters {
    fn drop(&mut self) {
        gauge!("handoff_data_handles", "transport" => self.transport.as_str()).decrement(1.0);
    }
}

/// Sets what is read off the server's state, then renders every series (Prometheus text
/// exposition format 0.0.4). Before the server serves (a passive node waiting for the
/// group's lease) only its role is set: not active.
pub fn scrape(shared: Option<&Shared>, handle: &PrometheusHandle) -> String {
    let Some(shared) = shared else {
        gauge!("handoff_active").set(0.0);
        return handle.render();
    };
    let census = shared.peek(|core| core.census(super::now_ms()));
    for (state, n) in [
        ("connected", census.connected),
        ("durable", census.durable),
        ("expired", census.expired),
    ] {
        gauge!("handoff_opens", "state" => state).set(n as f64);
    }
    gauge!("handoff_locks").set(census.locks as f64);
    let a = shared.admission.counts();
    gauge!("handoff_connections", "state" => "authenticated").set(a.authenticated as f64);
    gauge!("handoff_connections", "state" => "unauthenticated").set(a.unauthenticated as f64);
    for (reason, n) in [
        ("evicted", a.evicted),
        ("turned_away", a.turned_away),
        ("cap", a.refused),
    ] {
        counter!("handoff_connection_refusals_total", "reason" => reason).absolute(n);
    }
    let stats = &shared.stats;
    use std::sync::atomic::Ordering::Relaxed;
    counter!("handoff_direct_grants_total").absolute(stats.direct_grants.load(Relaxed));
    counter!("handoff_direct_revocations_total").absolute(stats.direct_revocations.load(Relaxed));
    let health = shared.health();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    gauge!("handoff_active").set(flag(matches!(health, Health::Active)));
    gauge!("handoff_fenced").set(flag(matches!(health, Health::Fenced(_))));
    gauge!("handoff_grace").set(flag(census.in_grace));
    gauge!("handoff_draining").set(flag(
        shared.draining().is_some() || shared.referral().is_some(),
    ));
    handle.render()
}
