//! The comparison runner: handoff next to the tools users already trust, on the same devices,
//! in the same run. bench/run.sh starts it inside one rxe guest boot; run by hand it measures
//! whatever this machine has (the rdma suite needs RDMA devices).
//!
//!   compare [--suites rdma,stream,clients,many,opens,mount] [--smoke] [--out FILE] ...  (see --help)

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use handoff::Identity;
use handoff_bench::process::{kill_survivors, survivors};
use handoff_bench::results::{machine, now_stamp, Row, Run};
use handoff_bench::suites::{self, Ctx};

const HELP: &str = "\
compare: handoff next to perftest and nginx, in one run; writes one JSON file of rows.

Usage: compare [OPTIONS]

Suites (--suites, comma separated; default all but mount):
  rdma     ib_write_bw / ib_read_bw vs handoff over RDMA (server-initiated, 2 NICs, direct)
  stream   handoff over TCP and TLS vs nginx (sendfile, TLS, WebDAV PUT) + curl, loopback
  clients  1, 4, 16, 64 concurrent clients reading one file (RDMA if there is a NIC, TCP)
  many     256 and 1000 clients starting at once over TCP: open p50/p99, aggregate read MiB/s,
           server CPU per GiB, RSS
  opens    opens/s and resumes/s with 10^3, 10^4, 10^5 durable opens held; RSS, store size
  mount    fio (bs=1M, O_DIRECT, QD1 and QD8) on `handoff mount` over RDMA vs the kernel's
           NFSv4.1 over RDMA, next to perftest; trials interleaved (rxe guest only: it
           reconfigures the machine's NFS server)

Options:
  --sizes LIST        bytes per request (default 4096,65536,1048576,16777216)
  --smoke             one size (1 MiB), small totals: checks the runner works, in seconds
  --total BYTES       bytes per RDMA row (default 2048 requests, 16..128 MiB): larger to
                      profile one case
  --runs N            runs per stream measurement, median kept (default 3; smoke 1)
  --clients LIST      concurrent clients (default 1,4,16,64)
  --many LIST         clients for the many suite (default 256,1000)
  --held LIST         durable opens held (default 1000,10000,100000)
  --rdma-ips LIST     IPs of the RDMA interfaces (default $HANDOFF_GUEST_IPS)
  --rdma-devices LIST their rxe devices (default $HANDOFF_RXE_DEVICES)
  --bin-dir DIR       where handoffd is built (default target/release)
  --work DIR          scratch space (default /tmp/handoff-bench)
  --out FILE          results (default target/bench-results/results.json)
";

fn list<T: std::str::FromStr>(v: &str) -> Result<Vec<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse::<T>()
                .with_context(|| format!("bad list item {s:?}"))
        })
        .collect()
}

fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The benchmark client's identity, and a clients file (mode 0600) listing it.
fn bench_identity(work: &std::path::Path) -> Result<(Identity, PathBuf)> {
    let identity = Identity::generate("bench", &mut rand::rngs::OsRng)?;
    let clients_file = work.join("clients");
    std::fs::write(&clients_file, identity.to_line())?;
    // Secrets: handoffd refuses a clients file others can read.
    std::fs::set_permissions(
        &clients_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    Ok((identity, clients_file))
}

/// Runs each suite in turn; returns the names of those that failed (the others' rows stand).
fn run_suites(ctx: &Ctx, runs: usize, suites: &[String], rows: &mut Vec<Row>) -> Vec<String> {
    let mut failed = Vec::new();
    for suite in suites {
        let started = Instant::now();
        eprintln!("== {suite}");
        let r = match suite.as_str() {
            "rdma" => suites::rdma::run(ctx, rows),
            "stream" => suites::stream::run(ctx, runs, rows),
            "clients" => suites::clients::run(ctx, rows),
            "many" => suites::many::run(ctx, rows),
            "opens" => suites::opens::run(ctx, rows),
            "mount" => suites::mount::run(ctx, rows),
            other => Err(anyhow::anyhow!("unknown suite {other} (see --help)")),
        };
        match r {
            Ok(()) => eprintln!(
                "== {suite} done in {:.0} s",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!("== {suite} FAILED: {e:#}");
                failed.push(suite.clone());
            }
        }
    }
    failed
}

fn main() -> Result<()> {
    let mut suites_wanted = vec!["rdma", "stream", "clients", "many", "opens"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    let mut sizes: Vec<u64> = vec![4 << 10, 64 << 10, 1 << 20, 16 << 20];
    let mut smoke = false;
    let mut runs: Option<usize> = None;
    let mut client_counts: Vec<u64> = vec![1, 4, 16, 64];
    let mut many_counts: Vec<u64> = vec![256, 1000];
    let mut held: Vec<u64> = vec![1_000, 10_000, 100_000];
    let mut rdma_ips = env_list("HANDOFF_GUEST_IPS");
    let mut rdma_devices = env_list("HANDOFF_RXE_DEVICES");
    let mut bin_dir = PathBuf::from("target/release");
    let mut work = PathBuf::from("/tmp/handoff-bench");
    let mut out = PathBuf::from("target/bench-results/results.json");
    let mut sizes_given = false;
    let mut total = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut val = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--suites" => suites_wanted = list(&val()?)?,
            "--sizes" => {
                sizes = list(&val()?)?;
                sizes_given = true;
            }
            "--smoke" => smoke = true,
            "--total" => total = Some(val()?.parse()?),
            "--runs" => runs = Some(val()?.parse()?),
            "--clients" => client_counts = list(&val()?)?,
            "--many" => many_counts = list(&val()?)?,
            "--held" => held = list(&val()?)?,
            "--rdma-ips" => rdma_ips = list(&val()?)?,
            "--rdma-devices" => rdma_devices = list(&val()?)?,
            "--bin-dir" => bin_dir = val()?.into(),
            "--work" => work = val()?.into(),
            "--out" => out = val()?.into(),
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            other => bail!("unknown option {other} (see --help)"),
        }
    }
    if smoke {
        if !sizes_given {
            sizes = vec![1 << 20];
        }
        client_counts = vec![2];
        many_counts = vec![16];
        held = vec![100];
    }
    if sizes.is_empty() || sizes.contains(&0) {
        bail!("--sizes needs positive byte counts");
    }
    std::fs::create_dir_all(&work)?;
    let work = work.canonicalize()?;
    let (identity, clients_file) = bench_identity(&work)?;
    let ctx = Ctx {
        bin_dir: bin_dir
            .canonicalize()
            .with_context(|| format!("{} (build with cargo build --release)", bin_dir.display()))?,
        work,
        sizes,
        smoke,
        total,
        identity,
        clients_file,
        rdma_ips,
        rdma_devices,
        client_counts,
        many_counts,
        held,
    };
    let runs = runs.unwrap_or(if smoke { 1 } else { 3 });
    let mut run = Run {
        date: now_stamp(),
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rows: Vec::new(),
    };
    let mut failed = run_suites(&ctx, runs, &suites_wanted, &mut run.rows);
    // Every peer is stopped by its process group when its suite ends; anything still alive
    // would skew whatever this machine measures next.
    let left = survivors();
    if !left.is_empty() {
        let named: Vec<String> = left.iter().map(|(p, c)| format!("{c} ({p})")).collect();
        eprintln!(
            "compare: still running after the suites, now killed: {}",
            named.join(", ")
        );
        kill_survivors(&left);
        failed.push(format!("cleanup (left running: {})", named.join(", ")));
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&run)? + "\n")?;
    eprintln!("compare: {} rows in {}", run.rows.len(), out.display());
    if !failed.is_empty() {
        bail!("suites failed: {}", failed.join(", "));
    }
    Ok(())
}
