//! Generates the benchmark report from the runner's JSON: bench/results/results.{json,md},
//! the PNG plot, and the README section between the bench markers.
//!
//!   report [--in FILE]... [--out-dir bench/results] [--readme README.md | --no-readme]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use handoff_bench::report::{markdown, plot, splice_readme};
use handoff_bench::results::Run;

fn main() -> Result<()> {
    let mut inputs: Vec<PathBuf> = Vec::new();
    let mut out_dir = PathBuf::from("bench/results");
    let mut readme = Some(PathBuf::from("README.md"));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut val = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--in" => inputs.push(val()?.into()),
            "--out-dir" => out_dir = val()?.into(),
            "--readme" => readme = Some(val()?.into()),
            "--no-readme" => readme = None,
            "-h" | "--help" => {
                println!("report [--in target/bench-results/results.json]... [--out-dir bench/results] [--readme README.md | --no-readme]");
                return Ok(());
            }
            other => bail!("unknown option {other} (see --help)"),
        }
    }
    if inputs.is_empty() {
        inputs.push("target/bench-results/results.json".into());
    }
    let mut runs = Vec::new();
    for path in &inputs {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let run: Run =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if run.rows.is_empty() {
            bail!("{} has no rows", path.display());
        }
        runs.push(run);
    }
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&runs)? + "\n",
    )?;
    let png = "throughput.png";
    plot(&runs, &out_dir.join(png))?;
    let md = markdown(&runs, png);
    std::fs::write(out_dir.join("results.md"), &md)?;
    if let Some(readme) = readme {
        let text = std::fs::read_to_string(&readme)?;
        std::fs::write(&readme, splice_readme(&text, &md)?)?;
        eprintln!("report: updated {}", readme.display());
    }
    print!("{md}");
    Ok(())
}
