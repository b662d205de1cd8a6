//! Multichannel (claims 9–10): one QP per server endpoint (rxe0, rxe1, …), large reads
//! striped across them chunk by chunk and delivered in order; if a QP fails mid-transfer,
//! the chunks it had in flight are asked again on a surviving one.

use std::collections::VecDeque;
use std::net::SocketAddr;

use handoff_core::auth::Identity;
use handoff_core::Error;

use super::client::{Geometry, RdmaClient, CHUNK};
use crate::DataError;

fn all_failed() -> DataError {
    DataError::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "every RDMA path failed",
    ))
}

/// Per-QP accounting, for reports.
#[derive(Clone, Debug)]
pub struct QpReport {
    pub addr: SocketAddr,
    pub device: String,
    pub bytes: u64,
    pub failed: Option<String>,
}

pub struct MultiChannel {
    qps: Vec<Option<RdmaClient>>,
    reports: Vec<QpReport>,
    /// Every QP's (they connect asking the same request size).
    geometry: Geometry,
}

/// One chunk of a striped read, in delivery order.
struct Chunk {
    offset: u64,
    asked: u64,
    qp: usize,
    slot: usize,
    /// Bytes the server reported; None until its reply was taken.
    got: Option<u64>,
}

impl MultiChannel {
    /// Connects a QP to each address, asking `request` bytes per request (see
    /// [`RdmaClient::connect_sized`], also for `wants_direct`). Succeeds if at least one does
    /// (the others are reported as failed); the first error otherwise.
    pub fn connect(
        addrs: &[SocketAddr],
        identity: &Identity,
        key: &[u8],
        request: usize,
        wants_direct: bool,
    ) -> Result<Self, DataError> {
        let mut qps = Vec::new();
        let mut reports = Vec::new();
        let mut first_err = None;
        for addr in addrs {
            match RdmaClient::connect_sized(*addr, identity, key, request, wants_direct) {
                Ok(c) => {
                    reports.push(QpReport {
                        addr: *addr,
                        device: c.device.clone(),
                        bytes: 0,
                        failed: None,
                    });
                    qps.push(Some(c));
                }
                Err(e) => {
                    tracing::warn!(%addr, "RDMA path unavailable: {e}");
                    reports.push(QpReport {
                        addr: *addr,
                        device: "?".into(),
                        bytes: 0,
                        failed: Some(e.to_string()),
                    });
                    qps.push(None);
                    first_err.get_or_insert(e);
                }
            }
        }
        if qps.iter().all(Option::is_none) {
            return Err(first_err.expect("at least one address was tried"));
        }
        let geometry = qps
            .iter()
            .flatten()
            .next()
            .map_or(Geometry::new(CHUNK, false), RdmaClient::geometry);
        Ok(Self {
            qps,
            reports,
            geometry,
        })
    }

    /// The first live QP (for handle info, writes and direct mode).
    pub fn primary(&mut self) -> Result<&mut RdmaClient, DataError> {
        self.qps.iter_mut().flatten().next().ok_or_else(all_failed)
    }

    pub fn reports(&self) -> Vec<QpReport> {
        let mut r = self.reports.clone();
        for (rep, qp) in r.iter_mut().zip(&self.qps) {
            if let Some(q) = qp {
                rep.bytes = q.bytes;
            }
        }
        r
    }

    fn live(&self) -> Vec<usize> {
        (0..self.qps.len())
            .filter(|i| self.qps[*i].is_some())
            .collect()
    }

    fn fail(&mut self, qp: usize, e: &DataError) {
        if let Some(q) = self.qps[qp].take() {
            self.reports[qp].bytes = q.bytes;
        }
        self.reports[qp].failed = Some(e.to_string());
        tracing::warn!(addr = %self.reports[qp].addr, "RDMA path failed mid-transfer, continuing on the others: {e}");
    }

    /// Striped read of up to `len` bytes at `offset`, delivered to `sink` in order. Small
    /// requests go several to a message, as on one QP: a message's requests all go to one QP,
    /// and the next message to the next.
    pub fn read_to(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut crate::Sink<'_>,
    ) -> Result<u64, DataError> {
        if self.live().len() <= 1 {
            return self.primary()?.read_to(offset, len, sink);
        }
        let request = self.geometry.request;
        // Each QP's own: its server said whether it takes several requests to a message (an
        // older one does not), so servers of two versions can serve one read.
        let geometry: Vec<Geometry> = self
            .qps
            .iter()
            .map(|q| q.as_ref().map_or(self.geometry, RdmaClient::geometry))
            .collect();
        let mut order: VecDeque<Chunk> = VecDeque::new();
        // Per QP: free slots, and the messages whose replies are due, FIFO, each with its
        // chunks (by sequence number).
        let mut free: Vec<Vec<usize>> = geometry
            .iter()
            .map(|g| (0..g.slots()).rev().collect())
            .collect();
        let mut due: Vec<VecDeque<Vec<u64>>> = vec![VecDeque::new(); self.qps.len()];
        let in_flight = |due: &VecDeque<Vec<u64>>| due.iter().map(Vec::len).sum::<usize>();
        let mut first_seq = 0u64; // sequence number of order[0]
        let mut issued = 0u64;
        let mut delivered = 0u64;
        let mut eof = false;
        let mut turn = 0usize;
        loop {
            // Issue new messages round-robin while QPs have room in their normal depth.
            while !eof && issued < len {
                let live = self.live();
                if live.is_empty() {
                    break;
                }
                let qp = live[turn % live.len()];
                turn += 1;
                // Room for a whole message (or for all that is left): after a failover has put
                // single requests on a QP, it goes back to whole messages.
                let left = (len - issued).div_ceil(request as u64);
                let fits = |q: usize| {
                    let g = geometry[q];
                    let room = g
                        .depth
                        .saturating_sub(in_flight(&due[q]))
                        .min(free[q].len());
                    let want = (g.batch as u64).min(left) as usize;
                    (room >= want).then_some(want)
                };
                let Some(take) = fits(qp) else {
                    if live.iter().all(|q| fits(*q).is_none()) {
                        break;
                    }
                    continue;
                };
                let mut items = Vec::new();
                while items.len() < take && issued < len {
                    let slot = free[qp].pop().expect("room counted it");
                    let n = (len - issued).min(request as u64);
                    items.push((slot, offset + issued, n));
                    issued += n;
                }
                let sent = self.qps[qp].as_mut().expect("live").request_reads(&items);
                // Recorded either way: if the message could not be sent, its chunks move to
                // the other QPs with the failed one's.
                let mut seqs = Vec::new();
                for (slot, at, n) in items {
                    seqs.push(first_seq + order.len() as u64);
                    order.push_back(Chunk {
                        offset: at,
                        asked: n,
                        qp,
                        slot,
                        got: None,
                    });
                }
                due[qp].push_back(seqs);
                if let Err(e) = sent {
                    self.reissue(qp, &e, &mut order, first_seq, &mut free, &mut due)?;
                }
            }
            let Some(front) = order.front() else { break };
            if let Some(n) = front.got {
                let c = order.pop_front().expect("front exists");
                first_seq += 1;
                free[c.qp].push(c.slot);
                if eof {
                    continue; // asked past a short chunk: dropped, never delivered after a gap
                }
                let q = self.qps[c.qp].as_ref().ok_or_else(all_failed)?;
                sink(q.slot_bytes(c.slot, n as usize))?;
                delivered += n;
                if n < c.asked {
                    eof = true;
                }
                continue;
            }
            // Take the next reply on the QP the front chunk waits for.
            let qp = front.qp;
            self.take_reply(qp, &mut order, first_seq, &mut free, &mut due)?;
        }
        if !eof && issued < len && self.live().is_empty() {
            return Err(all_failed());
        }
        Ok(delivered)
    }

    /// Takes the next reply on `qp` and records it on its chunks; a failed path's chunks go
    /// to the others.
    fn take_reply(
        &mut self,
        qp: usize,
        order: &mut VecDeque<Chunk>,
        first_seq: u64,
        free: &mut [Vec<usize>],
        due: &mut [VecDeque<Vec<u64>>],
    ) -> Result<(), DataError> {
        let Some(seqs) = due[qp].pop_front() else {
            return Err(DataError::Io(std::io::Error::other(
                "striped read lost track of a chunk",
            )));
        };
        match self.qps[qp]
            .as_mut()
            .expect("live")
            .expect_reads(seqs.len())
        {
            Ok(lens) => {
                for (seq, n) in seqs.into_iter().zip(lens) {
                    let idx = (seq - first_seq) as usize;
                    if let Some(c) = order.get_mut(idx) {
                        if n > c.asked {
                            return Err(DataError::Control(Error::Protocol(format!(
                                "server announced {n} bytes for a read of at most {}",
                                c.asked
                            ))));
                        }
                        c.got = Some(n);
                    }
                    if let Some(q) = self.qps[qp].as_mut() {
                        q.bytes += n;
                    }
                }
                Ok(())
            }
            Err(e) if e.is_remote_error() => {
                // Every QP still owes replies to messages sent after this one: each takes
                // them, or is dropped (a reply left behind would answer the next call).
                for (q, owed) in due.iter().enumerate() {
                    if let Some(Err(lost)) = self.qps[q].as_mut().map(|p| p.drain(owed.len())) {
                        self.fail(q, &lost);
                    }
                }
                Err(e)
            }
            Err(e) => {
                due[qp].push_front(seqs);
                self.reissue(qp, &e, order, first_seq, free, due)
            }
        }
    }

    /// Moves every chunk still due on failed QP `qp` to surviving QPs.
    fn reissue(
        &mut self,
        qp: usize,
        e: &DataError,
        order: &mut VecDeque<Chunk>,
        first_seq: u64,
        free: &mut [Vec<usize>],
        due: &mut [VecDeque<Vec<u64>>],
    ) -> Result<(), DataError> {
        self.fail(qp, e);
        // Everything on the failed QP is lost with its buffers: chunks still due and chunks
        // whose bytes arrived but were not delivered yet.
        due[qp].clear();
        let stranded: Vec<u64> = order
            .iter()
            .enumerate()
            .filter(|(_, c)| c.qp == qp)
            .map(|(i, _)| first_seq + i as u64)
            .collect();
        // Asked again on the QP with the most free slots, a message at a time.
        let mut stranded = stranded.into_iter().peekable();
        while stranded.peek().is_some() {
            let live = self.live();
            let Some(&to) = live.iter().max_by_key(|q| free[**q].len()) else {
                return Err(DataError::Io(std::io::Error::other(format!(
                    "every RDMA path failed; last: {e}"
                ))));
            };
            let batch = self.qps[to].as_ref().map_or(1, |q| q.geometry().batch);
            let (mut items, mut seqs) = (Vec::new(), Vec::new());
            while seqs.len() < batch {
                let Some(seq) = stranded.next() else { break };
                let Some(slot) = free[to].pop() else {
                    return Err(DataError::Io(std::io::Error::other(
                        "no free slot to take over a failed path's chunk",
                    )));
                };
                let c = &mut order[(seq - first_seq) as usize];
                c.qp = to;
                c.slot = slot;
                c.got = None;
                items.push((slot, c.offset, c.asked));
                seqs.push(seq);
            }
            self.qps[to].as_mut().expect("live").request_reads(&items)?;
            // Replies on `to` come after everything already due there.
            due[to].push_back(seqs);
        }
        Ok(())
    }
}
