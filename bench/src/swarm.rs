//! Many clients at once: each a task of one tokio runtime with its own control connection,
//! open and data channel, as the ranks of a job start together. Used by the clients
//! benchmark and by the 1 000-client end-to-end test (`tests/many_clients.rs`, which includes
//! this file).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use handoff::{Channel, Client, DataHandle, Identity, OpenOptions};

/// One client of the swarm.
pub struct Member {
    pub control: Client,
    pub data: DataHandle,
    pub token: String,
    /// From connecting to holding the data channel.
    pub joined_in: Duration,
    /// The open request alone.
    pub open_latency: Duration,
}

/// Runs `f` for every item at once (one task each, all on the calling thread: a data
/// handle's sink need not be `Send`) and gives back the results in the items' order; fails
/// naming how many failed and the first failure.
pub async fn all<I, T, F, Fut>(items: Vec<I>, f: F) -> Result<Vec<T>>
where
    F: Fn(usize, I) -> Fut,
    Fut: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    let local = tokio::task::LocalSet::new();
    local.run_until(all_local(items, f)).await
}

async fn all_local<I, T, F, Fut>(items: Vec<I>, f: F) -> Result<Vec<T>>
where
    F: Fn(usize, I) -> Fut,
    Fut: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    let n = items.len();
    let mut set = tokio::task::JoinSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let task = f(i, item);
        set.spawn_local(async move { (i, task.await) });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut failed: Vec<(usize, anyhow::Error)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(v))) => out[i] = Some(v),
            Ok((i, Err(e))) => failed.push((i, e)),
            Err(e) => failed.push((usize::MAX, e.into())),
        }
    }
    if let Some((i, e)) = failed.iter().min_by_key(|(i, _)| *i) {
        bail!("{} of {n} clients failed; client {i}: {e:#}", failed.len());
    }
    Ok(out.into_iter().flatten().collect())
}

/// `n` clients (taking the identities in turn) each connect to `addr`, open `path` with
/// `opts` and attach a data channel over `channel`, all at once.
pub async fn join(
    addr: &str,
    identities: &[Identity],
    n: usize,
    path: &str,
    opts: &OpenOptions,
    channel: Channel,
) -> Result<Vec<Member>> {
    all((0..n).collect(), |i, _| {
        let (addr, path, opts) = (addr.to_owned(), path.to_owned(), opts.clone());
        let identity = identities[i % identities.len()].clone();
        async move {
            let start = Instant::now();
            let mut control = Client::connect(&addr, &identity).await?;
            let t = Instant::now();
            let token = control.open(&path, &opts).await?.token;
            let open_latency = t.elapsed();
            let data = control.open_data(&token, Some(channel), false).await?;
            Ok(Member {
                control,
                data,
                token,
                joined_in: start.elapsed(),
                open_latency,
            })
        }
    })
    .await
}

/// Every member reads `len` bytes at `offset(i)` at once, in requests of at most `block`;
/// returns the members (in order) with what each read.
pub async fn read_each(
    members: Vec<Member>,
    offset: impl Fn(usize) -> u64,
    len: u64,
    block: u64,
) -> Result<Vec<(Member, Vec<u8>)>> {
    all(members, |i, mut m| {
        let at = offset(i);
        async move {
            let mut got = Vec::with_capacity(len as usize);
            while (got.len() as u64) < len {
                let want = block.min(len - got.len() as u64);
                let n = m
                    .data
                    .read_to(at + got.len() as u64, want, &mut |chunk| {
                        got.extend_from_slice(chunk);
                        Ok(())
                    })
                    .await?;
                if n == 0 {
                    bail!("end of file after {} bytes", got.len());
                }
            }
            Ok((m, got))
        }
    })
    .await
}

/// The `p`-th percentile (0–100) of `samples`.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let i = ((samples.len() - 1) as f64 * p / 100.0).round() as usize;
    samples[i]
}
