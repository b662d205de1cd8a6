//! A duplicate handle on whichever data channel was chosen: TCP/TLS or RDMA.

use handoff_core::state::ResumeReport;
use handoff_core::wire::FileInfo;
use handoff_datapath::{DataError, Fill, Sink};

pub use crate::rdma_handle::RdmaHandle;

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

/// A duplicate handle on a data channel, whichever transport carries it: what a caller can
/// do with it. Every call is async and none blocks a runtime worker (RDMA's completion waits
/// run on the handle's own thread, see [`RdmaHandle`]).
#[async_trait::async_trait]
pub trait DataTransport: Send {
    /// The file as it was when the handle attached.
    fn info(&self) -> FileInfo;
    /// What happened to the file while no channel held it.
    fn report(&self) -> ResumeReport;
    /// The duplicate handle's number on the server.
    fn handle(&self) -> u64;
    /// Reads up to `len` bytes at `offset` (fewer at end of file), chunk by chunk into `sink`;
    /// returns the bytes read.
    async fn read_to(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut Sink<'_>,
    ) -> Result<u64, DataError>;
    /// Writes what `fill` produces at `offset` onwards; returns the bytes written.
    async fn write_from(&mut self, offset: u64, fill: &mut Fill<'_>) -> Result<u64, DataError>;
    /// Writes all of `data` at `offset`.
    async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DataError>;
    /// Makes everything written so far durable on the server.
    async fn flush(&mut self) -> Result<(), DataError>;
}

/// A duplicate handle as [`crate::Client::open_data`] makes it: use it through
/// [`DataTransport`] (it derefs to one); match it to see the transport's own report.
pub enum DataHandle {
    /// TCP or TLS; resumes by key by itself when its connection breaks.
    Stream(Box<crate::StreamHandle>),
    Rdma(Box<RdmaHandle>),
}

impl std::ops::Deref for DataHandle {
    type Target = dyn DataTransport;
    fn deref(&self) -> &Self::Target {
        match self {
            DataHandle::Stream(d) => d.as_ref(),
            DataHandle::Rdma(r) => r.as_ref(),
        }
    }
}

impl std::ops::DerefMut for DataHandle {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            DataHandle::Stream(d) => d.as_mut(),
            DataHandle::Rdma(r) => r.as_mut(),
        }
    }
}

#[async_trait::async_trait]
impl DataTransport for crate::StreamHandle {
    fn info(&self) -> FileInfo {
        self.client.info.clone()
    }

    fn report(&self) -> ResumeReport {
        self.client.report
    }

    fn handle(&self) -> u64 {
        self.client.handle
    }

    async fn read_to(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut Sink<'_>,
    ) -> Result<u64, DataError> {
        crate::StreamHandle::read_to(self, offset, len, sink).await
    }

    async fn write_from(&mut self, offset: u64, fill: &mut Fill<'_>) -> Result<u64, DataError> {
        // Start small (a short write costs no big allocation) and double up to BLOCK while
        // `fill` keeps filling the whole buffer.
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
            crate::StreamHandle::write_at(self, pos, &buf[..filled]).await?;
            pos += filled as u64;
            if filled == buf.len() && buf.len() < BLOCK {
                buf.resize(buf.len() * 2, 0);
            }
        }
    }

    async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DataError> {
        crate::StreamHandle::write_at(self, offset, data).await
    }

    async fn flush(&mut self) -> Result<(), DataError> {
        crate::StreamHandle::flush(self).await
    }
}

#[async_trait::async_trait]
impl DataTransport for RdmaHandle {
    fn info(&self) -> FileInfo {
        RdmaHandle::info(self).clone()
    }

    fn report(&self) -> ResumeReport {
        RdmaHandle::report(self)
    }

    fn handle(&self) -> u64 {
        RdmaHandle::handle(self)
    }

    async fn read_to(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut Sink<'_>,
    ) -> Result<u64, DataError> {
        RdmaHandle::read_to(self, offset, len, sink).await
    }

    async fn write_from(&mut self, offset: u64, fill: &mut Fill<'_>) -> Result<u64, DataError> {
        RdmaHandle::write_from(self, offset, fill).await
    }

    async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DataError> {
        RdmaHandle::write_at(self, offset, data).await
    }

    async fn flush(&mut self) -> Result<(), DataError> {
        RdmaHandle::flush(self).await
    }
}
