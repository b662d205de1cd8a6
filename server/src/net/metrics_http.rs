//! `--metrics-listen`: the HTTP endpoint Prometheus scrapes. A deliberately small HTTP/1.x
//! responder: `GET /metrics` answers the text exposition, anything else 404 (or 405 for a
//! method other than GET/HEAD), and every connection closes after one answer. What a peer
//! may cost is bounded: a few connections at once, a request head of 8 KiB read within 5 s,
//! an answer written within 10 s.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::shared::Shared;

/// Scrapes served at once; more connections are closed unanswered.
const MAX_SCRAPES: usize = 8;
const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, shared: Shared, handle: PrometheusHandle) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many scrapes at once; closing");
            continue;
        };
        let (shared, handle) = (shared.clone(), handle.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, shared, handle).await {
                tracing::debug!(%peer, "metrics scrape: {e}");
            }
            drop(slot);
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    shared: Shared,
    handle: PrometheusHandle,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::other("no request head within 5 s"))??;
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body =
                tokio::task::spawn_blocking(move || super::metrics::scrape(&shared, &handle))
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
