//! `--metrics-listen`: the HTTP endpoint Prometheus scrapes. A deliberately small HTTP/1.x
//! responder: `GET /metrics` answers the text exposition, anything else 404 (or 405 for a
//! method other than GET/HEAD), and every connection closes after one answer. What a peer
//! may cost is bounded: a few connections at once, a request head of 8 KiB read within 5 s,
//! an answer written within 10 s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::shared::Shared;

/// Scrapes served at once; more connections are closed unanswered.
const MAX_SCRAPES: usize = 8;
/// Of those, from one address: one peer holding idle connections cannot shut out the rest.
const MAX_SCRAPES_PER_ADDRESS: usize = 2;
const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the recorder's histograms are folded up between scrapes (the exporter's
/// buffers grow with every sample until then).
const UPKEEP: Duration = Duration::from_secs(5);

/// Connections from one address now, for [`MAX_SCRAPES_PER_ADDRESS`].
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`PerAddress`], given back on drop.
struct AddressSlot(Arc<PerAddress>, IpAddr);

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= MAX_SCRAPES_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), ip))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Serves scrapes; `serving` holds the server once it serves (a passive node of a group is
/// scraped before that, as not active).
pub async fn serve(
    listener: TcpListener,
    serving: Arc<OnceLock<Shared>>,
    handle: PrometheusHandle,
) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    let per_address = Arc::new(PerAddress::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, mostly: wait rather than spin.
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (Some(mine), Ok(slot)) = (
            per_address.take(peer.ip()),
            slots.clone().try_acquire_owned(),
        ) else {
            tracing::debug!(%peer, "metrics: too many scrapes at once; closing");
            continue;
        };
        let (serving, handle) = (serving.clone(), handle.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, serving, handle).await {
                tracing::debug!(%peer, "metrics scrape: {e}");
            }
            drop((slot, mine));
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    serving: Arc<OnceLock<Shared>>,
    handle: PrometheusHandle,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::other("no request head within 2 s"))??;
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body =
                tokio::task::spawn_blocking(move || super::metrics::scrape(serving.get(), &handle))
                    .await
                    .map_err(std::io::Error::other)?;
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "handoffd serves its metrics at /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics\n".to_owned(),
        ),
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        reply.extend_from_slice(body.as_bytes());
    }
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::other("the scraper read nothing for 10 s"))?
}

/// The request line and headers (up to the blank line), at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_HEAD {
            return Err(std::io::Error::other("request head over 8 KiB"));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
