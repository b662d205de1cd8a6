//! `handoff admin`: what an administrator of a server (a client in its `--admins`) does:
//! a planned drain, the list of every open (`admin opens`, handoff's `smbstatus -L`), and a
//! forced close (`admin close`) of a key's open, a client's or a path's.

use anyhow::Context;
use handoff::{parse_key, Client, CloseTarget, OpenSummary, Timestamp};
use serde_json::json;

use crate::namespace::format_time;

pub async fn drain(client: &mut Client, server: &str, to: &str, json: bool) -> anyhow::Result<()> {
    let r = client
        .drain(to)
        .await
        .with_context(|| format!("drain {server} to {to}"))?;
    if json {
        say!(
            "{}",
            json!({ "drained_to": to, "opens": r.opens, "files_sent": r.files_sent, "bytes_sent": r.bytes_sent })
        );
    } else {
        say!(
            "drained {} opens to {to} (sent {} files the peer lacked, {} bytes); clients are referred there",
            r.opens, r.files_sent, r.bytes_sent
        );
    }
    Ok(())
}

fn deadline(o: &OpenSummary) -> Option<Timestamp> {
    (o.deadline_ms > 0).then(|| Timestamp {
        secs: (o.deadline_ms / 1000) as i64,
        nanos: (o.deadline_ms % 1000) as u32 * 1_000_000,
    })
}

fn locks(o: &OpenSummary) -> Vec<String> {
    o.locks
        .iter()
        .map(|r| format!("{}:{}", r.offset(), r.len()))
        .collect()
}

/// `admin opens`: one line per open (or a JSON array), by slot.
pub async fn opens(client: &mut Client, json: bool) -> anyhow::Result<()> {
    let opens = client.admin_opens().await.context("admin opens")?;
    if json {
        let list: Vec<serde_json::Value> = opens
            .iter()
            .map(|o| {
                json!({
                    "slot": o.slot,
                    "path": o.path,
                    "client": o.owner,
                    "holders": o.holders,
                    "mode": o.mode.to_string(),
                    "share": o.share.to_string(),
                    "locks": locks(o),
                    "channels": o.channels,
                    "state": o.state.name(),
                    "deadline_ms": (o.deadline_ms > 0).then_some(o.deadline_ms),
                })
            })
            .collect();
        say!("{}", json!({ "opens": list }));
        return Ok(());
    }
    say!(
        "{:>6}  {:<9}  {:<16}  {:<4}  {:<5}  {:>8}  {:<16}  {:<16}  PATH",
        "SLOT",
        "STATE",
        "CLIENT",
        "MODE",
        "SHARE",
        "CHANNELS",
        "UNTIL (UTC)",
        "LOCKS"
    );
    for o in &opens {
        let locks = locks(o);
        say!(
            "{:>6}  {:<9}  {:<16}  {:<4}  {:<5}  {:>8}  {:<16}  {:<16}  {}",
            o.slot,
            o.state.name(),
            o.owner,
            o.mode.to_string(),
            o.share.to_string(),
            o.channels,
            deadline(o).map_or("-".into(), format_time),
            if locks.is_empty() {
                "-".into()
            } else {
                locks.join(",")
            },
            o.path
        );
    }
    Ok(())
}

/// `admin close KEY | --client NAME | --path PATH`.
pub async fn close(
    client: &mut Client,
    key: Option<String>,
    holder: Option<String>,
    path: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let target = match (key, holder, path) {
        (Some(k), None, None) => CloseTarget::Key(parse_key(&k)?),
        (None, Some(c), None) => CloseTarget::Client(c),
        (None, None, Some(p)) => CloseTarget::Path(p),
        _ => unreachable!("clap requires exactly one"),
    };
    let n = client.admin_close(&target).await.context("admin close")?;
    if json {
        say!("{}", json!({ "closed": n }));
    } else {
        say!(
            "closed {n} open{}; their holders are told an administrator closed them",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
