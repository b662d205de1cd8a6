//! The counters a server exposes (`handoff stats`).

/// Counters a server exposes (`handoff stats`); data-path work done by the server's CPU.
#[derive(Default, Debug)]
pub struct ServerStats {
    /// Bytes the server moved with RDMA work requests it posted (WRITE for reads, READ for
    /// writes). Direct-mode reads never add to it.
    pub rdma_server_bytes: std::sync::atomic::AtomicU64,
    pub rdma_requests: std::sync::atomic::AtomicU64,
    /// Of those, requests that came several to a message (`RdmaReadMany`, `RdmaWriteMany`).
    pub rdma_batched_requests: std::sync::atomic::AtomicU64,
    pub rdma_connections: std::sync::atomic::AtomicU64,
    pub direct_grants: std::sync::atomic::AtomicU64,
    pub direct_revocations: std::sync::atomic::AtomicU64,
    pub tcp_bytes: std::sync::atomic::AtomicU64,
    /// CPU time (ns) the threads serving RDMA connections spent (handshakes, requests, probes):
    /// direct-mode bytes never add to it.
    pub data_cpu_ns: std::sync::atomic::AtomicU64,
    /// Bytes of RDMA writes the adapter put straight into the file's pages (zero-copy: no
    /// bounce buffer, no pwrite).
    pub rdma_in_place_bytes: std::sync::atomic::AtomicU64,
    /// File windows registered only when a request needed them (see
    /// `FileWindows::prepare`): a transfer's first, or one out of order.
    pub rdma_window_waits: std::sync::atomic::AtomicU64,
    /// File windows registered ahead of a transfer moving forward, and then used by it.
    pub rdma_windows_ahead: std::sync::atomic::AtomicU64,
}

impl ServerStats {
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            (
                "rdma_server_bytes".into(),
                self.rdma_server_bytes.load(Relaxed),
            ),
            ("rdma_requests".into(), self.rdma_requests.load(Relaxed)),
            (
                "rdma_batched_requests".into(),
                self.rdma_batched_requests.load(Relaxed),
            ),
            (
                "rdma_connections".into(),
                self.rdma_connections.load(Relaxed),
            ),
            ("direct_grants".into(), self.direct_grants.load(Relaxed)),
            (
                "direct_revocations".into(),
                self.direct_revocations.load(Relaxed),
            ),
            ("tcp_bytes".into(), self.tcp_bytes.load(Relaxed)),
            ("data_cpu_ns".into(), self.data_cpu_ns.load(Relaxed)),
            (
                "rdma_in_place_bytes".into(),
                self.rdma_in_place_bytes.load(Relaxed),
            ),
            (
                "rdma_window_waits".into(),
                self.rdma_window_waits.load(Relaxed),
            ),
            (
                "rdma_windows_ahead".into(),
                self.rdma_windows_ahead.load(Relaxed),
            ),
        ]
    }
}
