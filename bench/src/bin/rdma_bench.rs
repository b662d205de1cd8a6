//! One side of the RDMA comparison: connects once (like perftest), then times `--total`
//! bytes of reads or writes issued in `--block`-byte calls through handoff's RDMA client, and
//! prints one JSON line. Run inside the rxe guest by bench/rdma-guest.sh.
//!
//!   rdma_bench --server ADDR --identity FILE --key KEY --op read|write|direct --block N --total N

use std::time::Instant;

use anyhow::{bail, Context, Result};
use handoff::{Channel, Client, Identity};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut server = String::new();
    let mut identity = String::new();
    let mut key = String::new();
    let mut op = "read".to_string();
    let mut block: u64 = 1 << 20;
    let mut total: u64 = 256 << 20;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => server = val()?,
            "--identity" => identity = val()?,
            "--key" => key = val()?,
            "--op" => op = val()?,
            "--block" => block = val()?.parse()?,
            "--total" => total = val()?.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    let id = Identity::parse(&std::fs::read_to_string(&identity)?)?;
    let mut control = Client::connect(&server, &id).await?;
    let mut data = control
        .open_data(&key, Some(Channel::Rdma), op == "direct")
        .await?;
    drop(control);
    let size = data.info().size;
    anyhow::ensure!(size >= block, "file smaller than one block");
    let mut moved = 0u64;
    let mut offset = 0u64;
    let started = Instant::now();
    while moved < total {
        let n = match op.as_str() {
            "read" | "direct" => data.read_to(offset, block, &mut |_| Ok(())).await?,
            "write" => {
                let mut left = block as usize;
                data.write_from(offset, &mut |buf| {
                    let n = left.min(buf.len());
                    left -= n;
                    Ok(n)
                })
                .await?
            }
            other => bail!("unknown op {other}"),
        };
        moved += n;
        offset = (offset + block) % (size - block + 1);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "op": op, "block": block, "bytes": moved, "secs": secs, "mib_per_s": moved as f64 / (1 << 20) as f64 / secs })
    );
    Ok(())
}
