//! A duplicate handle on whichever data channel was chosen: TCP/TLS or RDMA.

use std::net::SocketAddr;

use handoff_core::state::ResumeReport;
use handoff_core::wire::FileInfo;
use handoff_datapath::rdma::client::is_revoked;
use handoff_datapath::rdma::multi::{MultiChannel, QpReport};
use handoff_datapath::DataError;

use crate::Identity;

/// Which data channel to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Rdma,
    Tcp,
    Tls,
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Channel::Rdma => "rdma",
            Channel::Tcp => "tcp",
            Channel::Tls => "tls",
        })
    }
}

/// Whether this host has an RDMA device the verbs library can use.
pub fn host_has_rdma() -> bool {
    std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some())
}

pub enum DataHandle {
    /// TCP or TLS; resumes by key by itself when its connection breaks.
    Stream(Box<crate::StreamHandle>),
    Rdma(Box<RdmaHandle>),
}

/// An RDMA duplicate handle (one QP per server endpoint), with what it needs to reconnect
/// when a direct-mode grant is revoked.
pub struct RdmaHandle {
    pub multi: MultiChannel,
    addrs: Vec<SocketAddr>,
    identity: Identity,
    key: Vec<u8>,
    /// Direct mode was asked for.
    pub want_direct: bool,
    /// Reads done one-sided by this client (no server CPU), in bytes.
    pub direct_bytes: u64,
    /// Times a direct grant was revoked and the handle fell back to server-initiated reads.
    pub fallbacks: u32,
    info: FileInfo,
    report: ResumeReport,
    handle: u64,
    request: usize,
}

impl RdmaHandle {
    /// Connects one QP per address; `request` is the bytes asked per request (2 MiB, the
    /// maximum, unless the caller reads or writes in smaller pieces).
    pub fn connect(
        addrs: Vec<SocketAddr>,
        identity: &Identity,
        key: &[u8],
        want_direct: bool,
        request: usize,
    ) -> Result<Self, DataError> {
        let mut multi = MultiChannel::connect(&addrs, identity, key, request)?;
        let first = multi.primary()?;
        let (info, report, handle) = (first.info.clone(), first.report, first.handle);
        if want_direct {
            first.map_direct()?;
        }
        Ok(Self {
            multi,
            addrs,
            identity: identity.clone(),
            key: key.to_vec(),
            want_direct,
            direct_bytes: 0,
            fallbacks: 0,
            info,
            report,
            handle,
            request,
        })
    }

    /// Whether reads are one-sided (a direct-mode grant is held).
    pub fn is_direct(&mut self) -> bool {
        self.multi.primary().is_ok_and(|q| q.is_direct())
    }

    pub fn qp_reports(&self) -> Vec<QpReport> {
        self.multi.reports()
    }

    fn read_to(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, DataError> {
        if self.multi.primary()?.is_direct() {
            let mut delivered = 0u64;
            let r = self
                .multi
                .primary()?
                .read_direct(offset, len, &mut |chunk| {
                    delivered += chunk.len() as u64;
                    sink(chunk)
                });
            match r {
                Ok(n) => {
                    self.direct_bytes += n;
                    return Ok(n);
                }
                Err(e) if is_revoked(&e) => {
                    // The QP is in error after a remote access error: take a new duplicate
                    // handle and read the rest through the server.
                    tracing::info!("direct access revoked; falling back to server-initiated reads");
                    self.direct_bytes += delivered;
                    self.fallbacks += 1;
                    self.multi = MultiChannel::connect(
                        &self.addrs,
                        &self.identity,
                        &self.key,
                        self.request,
                    )?;
                    let rest = self
                        .multi
                        .read_to(offset + delivered, len - delivered, sink)?;
                    return Ok(delivered + rest);
                }
                Err(e) => return Err(e),
            }
        }
        self.multi.read_to(offset, len, sink)
    }
}

impl DataHandle {
    pub fn info(&mut self) -> FileInfo {
        match self {
            DataHandle::Stream(d) => d.info.clone(),
            DataHandle::Rdma(r) => r.info.clone(),
        }
    }

    pub fn report(&mut self) -> ResumeReport {
        match self {
            DataHandle::Stream(d) => d.report,
            DataHandle::Rdma(r) => r.report,
        }
    }

    pub fn handle(&mut self) -> u64 {
        match self {
            DataHandle::Stream(d) => d.handle,
            DataHandle::Rdma(r) => r.handle,
        }
    }

    /// Reads up to `len` bytes at `offset`, chunk by chunk into `sink`.
    pub async fn read_to(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, DataError> {
        match self {
            DataHandle::Stream(d) => d.read_to(offset, len, sink).await,
            DataHandle::Rdma(r) => r.read_to(offset, len, sink),
        }
    }

    /// Writes what `fill` produces at `offset` onwards; returns the bytes written.
    pub async fn write_from(
        &mut self,
        offset: u64,
        fill: &mut dyn FnMut(&mut [u8]) -> std::io::Result<usize>,
    ) -> Result<u64, DataError> {
        match self {
            DataHandle::Stream(d) => {
                // Start small (a short write costs no big allocation) and double up to
                // BLOCK while `fill` keeps filling the whole buffer.
                const BLOCK: usize = 16 << 20;
                let mut buf = vec![0u8; 64 << 10];
                let mut pos = offset;
                loop {
                    let mut filled = 0;
                    while filled < buf.len() {
                        let n = fill(&mut buf[filled..])?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    if filled == 0 {
                        return Ok(pos - offset);
                    }
                    d.write_at(pos, &buf[..filled]).await?;
                    pos += filled as u64;
                    if filled == buf.len() && buf.len() < BLOCK {
                        buf.resize(buf.len() * 2, 0);
                    }
                }
            }
            DataHandle::Rdma(r) => r.multi.primary()?.write_from(offset, fill),
        }
    }

    /// Writes all of `data` at `offset`.
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DataError> {
        match self {
            DataHandle::Stream(d) => d.write_at(offset, data).await,
            DataHandle::Rdma(r) => r.multi.primary()?.write_at(offset, data),
        }
    }

    pub async fn flush(&mut self) -> Result<(), DataError> {
        match self {
            DataHandle::Stream(d) => d.flush().await,
            DataHandle::Rdma(r) => r.multi.primary()?.flush(),
        }
    }
}
