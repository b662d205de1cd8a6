//! The runner's suites. Each measures handoff next to its peer on the same machine in the
//! same run and appends rows.

pub mod clients;
pub mod many;
pub mod mount;
pub mod opens;
pub mod rdma;
pub mod stream;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use handoff::{Client, Identity, Mode, OpenOptions};
use rand::{RngCore, SeedableRng};

/// Interleaved trials of each row in a full run (the rdma and clients suites).
pub const TRIALS: usize = 3;

/// What every suite needs.
pub struct Ctx {
    /// Where handoffd and handoff were built (target/release).
    pub bin_dir: PathBuf,
    /// Scratch space for files, state and configs.
    pub work: PathBuf,
    /// Bytes per request to measure.
    pub sizes: Vec<u64>,
    /// Small totals and fewer points: keeps the runner from rotting, measures little.
    pub smoke: bool,
    /// Bytes per row, instead of [`Ctx::total_for`]'s choice.
    pub total: Option<u64>,
    pub identity: Identity,
    /// The identity as a clients file for handoffd.
    pub clients_file: PathBuf,
    /// RDMA interface IPs (one per NIC) and their rxe device names, in the same order.
    pub rdma_ips: Vec<String>,
    pub rdma_devices: Vec<String>,
    /// Concurrent clients for the clients suite.
    pub client_counts: Vec<u64>,
    /// Clients starting at once for the many suite (TCP, on the host).
    pub many_counts: Vec<u64>,
    /// Durable opens held for the opens suite.
    pub held: Vec<u64>,
}

impl Ctx {
    /// Bytes moved per row at `size`: enough requests to reach a steady rate, bounded so the
    /// whole run stays within minutes on an emulated guest.
    pub fn total_for(&self, size: u64) -> u64 {
        if let Some(total) = self.total {
            return total.max(size);
        }
        if self.smoke {
            return (16 << 20).max(size);
        }
        (size * 2048).clamp(16 << 20, 128 << 20).max(size)
    }

    /// Bytes per row for TCP/TLS on loopback, which runs on the host's real CPUs: larger, so
    /// connection setup and timer resolution do not weigh on the big sizes.
    pub fn stream_total_for(&self, size: u64) -> u64 {
        if self.smoke {
            return (16 << 20).max(size);
        }
        (size * 4096).clamp(32 << 20, 1 << 30).max(size)
    }

    pub fn rt(&self) -> Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?)
    }

    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }
}

/// Writes `bytes` of seeded random data to `path` (kept if already that size).
pub fn make_file(path: &Path, bytes: u64) -> Result<()> {
    if path.metadata().is_ok_and(|m| m.len() == bytes) {
        return Ok(());
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(bytes);
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        rng.fill_bytes(&mut block[..n]);
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Opens `path` on `client`, read-only or read-write, sharing everything; returns the key.
pub async fn open_key(client: &mut Client, path: &str, mode: Mode) -> Result<String> {
    let opts = OpenOptions {
        mode,
        ..OpenOptions::default()
    };
    Ok(client.open(path, &opts).await?.token)
}

/// `1048576` → "1 MiB".
pub fn size_label(size: u64) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}
