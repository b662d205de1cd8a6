//! A TCP/TLS duplicate handle that resumes by itself: when its connection breaks (the server
//! died, failed over to its passive peer, was fenced or drained), it connects again through
//! the control channel — to whichever listed server answers now — presents its resume key for
//! a new duplicate handle, and carries on where it was. A server's refusal (denied, locked,
//! store unavailable) is not a broken connection and comes back as is.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use handoff_core::state::CoreError;
use handoff_core::wire::ErrorCode;
use handoff_core::Error;
use handoff_datapath::tcp::{DataClient, Transport};
use handoff_datapath::DataError;

use crate::{Client, Identity};

/// How long a broken data channel keeps trying to resume: a failover takes the active's
/// lease TTL (5 s by default) and the new active's first moments.
pub const RESUME_WAIT: Duration = Duration::from_secs(60);
/// Reconnections one operation may make before its error is returned.
const MAX_RESUMES_PER_OP: u32 = 3;

pub struct StreamHandle {
    pub client: DataClient,
    resume: Option<Resume>,
    /// Times the connection broke and the handle resumed by key.
    pub reconnects: u32,
}

/// What a handle needs to resume: where to ask, as whom, and its key.
pub(crate) struct Resume {
    pub servers: String,
    pub identity: Identity,
    pub token: String,
    pub transport: Transport,
}

/// The connection itself broke (as opposed to the server refusing the request).
fn broken(e: &DataError) -> bool {
    match e {
        DataError::Io(_) => true,
        DataError::Control(c) => matches!(
            c,
            Error::Io(_) | Error::Closed | Error::Unreachable(_) | Error::Referred(_)
        ),
        _ => false,
    }
}

/// Worth trying again while resuming: nobody answered yet, or the new active is still
/// starting (grace, store catching up, draining).
fn transient(e: &DataError) -> bool {
    broken(e) || matches!(e.code(), ErrorCode::Unavailable | ErrorCode::Grace)
}

impl Deref for StreamHandle {
    type Target = DataClient;
    fn deref(&self) -> &DataClient {
        &self.client
    }
}

impl DerefMut for StreamHandle {
    fn deref_mut(&mut self) -> &mut DataClient {
        &mut self.client
    }
}

impl StreamHandle {
    pub(crate) fn new(client: DataClient, resume: Option<Resume>) -> Self {
        Self {
            client,
            resume,
            reconnects: 0,
        }
    }

    /// Whether to resume after `e` (and resumes): false means return `e`.
    async fn recover(&mut self, e: &DataError, resumed: &mut u32) -> Result<bool, DataError> {
        let Some(resume) = &self.resume else {
            return Ok(false);
        };
        if !broken(e) || *resumed >= MAX_RESUMES_PER_OP {
            return Ok(false);
        }
        *resumed += 1;
        tracing::warn!("data channel broke ({e}); resuming by key");
        let started = Instant::now();
        loop {
            let attempt = async {
                let mut c = Client::connect(&resume.servers, &resume.identity).await?;
                c.attach(&resume.token, resume.transport).await
            }
            .await;
            match attempt {
                // The open expired while the channel was down and another client changed the
                // file meanwhile: carrying on would mix its bytes with ours unannounced.
                Ok(client) if client.report.reopened && client.report.changed_by_other => {
                    tracing::warn!(
                        report = ?client.report,
                        "not resumed: the open had expired and another client changed the file"
                    );
                    return Err(Error::Core(CoreError::Denied {
                        message: "the open expired while the data channel was down and another \
                                  client changed the file meanwhile; not resumed"
                            .into(),
                        report: Some(client.report),
                    })
                    .into());
                }
                Ok(client) => {
                    tracing::info!(
                        handle = client.handle,
                        "data channel resumed after {:?}",
                        started.elapsed()
                    );
                    self.client = client;
                    self.reconnects += 1;
                    return Ok(true);
                }
                Err(err) if transient(&err) && started.elapsed() < RESUME_WAIT => {
                    tracing::debug!("resume attempt failed: {err}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    pub async fn read_to(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut handoff_datapath::Sink<'_>,
    ) -> Result<u64, DataError> {
        let mut delivered = 0u64;
        let mut resumed = 0;
        loop {
            let mut sink_failed = false;
            let r = self
                .client
                .read_to(offset + delivered, len - delivered, &mut |chunk| {
                    sink(chunk).inspect_err(|_| sink_failed = true)?;
                    delivered += chunk.len() as u64;
                    Ok(())
                })
                .await;
            match r {
                Ok(_) => return Ok(delivered),
                Err(e) if !sink_failed && self.recover(&e, &mut resumed).await? => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DataError> {
        let mut resumed = 0;
        loop {
            // Rewriting the same bytes at the same offset is harmless, so a write the broken
            // connection may or may not have finished is simply sent again.
            match self.client.write_at(offset, data).await {
                Ok(()) => return Ok(()),
                Err(e) if self.recover(&e, &mut resumed).await? => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn flush(&mut self) -> Result<(), DataError> {
        let mut resumed = 0;
        loop {
            match self.client.flush().await {
                Ok(()) => return Ok(()),
                Err(e) if self.recover(&e, &mut resumed).await? => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
