//! `ls`, `stat`, `mkdir`, `rm`, `rmdir`, `mv`: the namespace beneath the server's root, with
//! output shaped like the local tools' (and `--json` for scripts).

use anyhow::Context;
use handoff::{Client, DirEntry, FileAttr, FileKind, Timestamp};
use serde_json::json;

/// `ls [-l] PATH`: a directory's entries one a line (a file: itself), or long lines with
/// type, permissions, links, size and modification time.
pub async fn ls(client: &mut Client, path: &str, long: bool, json: bool) -> anyhow::Result<()> {
    let attr = client
        .stat(path)
        .await
        .with_context(|| format!("ls {path}"))?;
    let entries = if attr.kind == FileKind::Directory {
        client
            .list(path)
            .await
            .with_context(|| format!("ls {path}"))?
    } else {
        let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path);
        vec![DirEntry {
            name: name.to_owned(),
            attr,
        }]
    };
    if json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| attr_json(Some(&e.name), &e.attr))
            .collect();
        say!("{}", json!({ "entries": list }));
        return Ok(());
    }
    let width = entries
        .iter()
        .map(|e| e.attr.size.to_string().len())
        .max()
        .unwrap_or(1);
    for e in &entries {
        if long {
            say!(
                "{} {:>3} {:>width$} {} {}",
                mode_string(&e.attr),
                e.attr.nlink,
                e.attr.size,
                format_time(e.attr.mtime),
                e.name
            );
        } else {
            say!("{}", e.name);
        }
    }
    Ok(())
}

/// `stat PATH`: every attribute, as `stat(1)` lays them out (no owner: see the README).
pub async fn stat(client: &mut Client, path: &str, json: bool) -> anyhow::Result<()> {
    let a = client
        .stat(path)
        .await
        .with_context(|| format!("stat {path}"))?;
    if json {
        say!("{}", attr_json(None, &a));
        return Ok(());
    }
    say!("  File: {path}");
    say!(
        "  Size: {:<15} Blocks: {:<10} {}",
        a.size,
        a.blocks,
        kind_name(a.kind)
    );
    say!("Inode: {:<15} Links: {}", a.ino, a.nlink);
    say!("Access: ({:04o}/{})", a.perm, mode_string(&a));
    say!("Access: {}", format_time_precise(a.atime));
    say!("Modify: {}", format_time_precise(a.mtime));
    say!("Change: {}", format_time_precise(a.ctime));
    Ok(())
}

fn attr_json(name: Option<&str>, a: &FileAttr) -> serde_json::Value {
    let t = |t: Timestamp| t.secs as f64 + f64::from(t.nanos) / 1e9;
    let mut v = json!({
        "kind": kind_name(a.kind),
        "perm": format!("{:04o}", a.perm),
        "size": a.size,
        "blocks": a.blocks,
        "nlink": a.nlink,
        "ino": a.ino,
        "atime": t(a.atime),
        "mtime": t(a.mtime),
        "ctime": t(a.ctime),
    });
    if let Some(name) = name {
        v["name"] = json!(name);
    }
    v
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "regular file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symbolic link",
        FileKind::Other => "other",
        FileKind::Unknown(_) => "unknown",
    }
}

/// `drwxr-xr-x`, as `ls -l` prints it.
fn mode_string(a: &FileAttr) -> String {
    let kind = match a.kind {
        FileKind::File => '-',
        FileKind::Directory => 'd',
        FileKind::Symlink => 'l',
        FileKind::Other | FileKind::Unknown(_) => '?',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6, 3, 0] {
        let bits = (a.perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// UTC calendar date and time of `t` (no time zone database is needed).
fn civil(t: Timestamp) -> (i64, u32, u32, u32, u32, u32) {
    let days = t.secs.div_euclid(86_400);
    let rem = t.secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem / 60 % 60, rem % 60)
}

pub fn format_time(t: Timestamp) -> String {
    let (y, mo, d, h, mi, _) = civil(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

pub fn format_time_precise(t: Timestamp) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!(
        "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{:09} +0000",
        t.nanos
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates_match_known_instants() {
        let t = |secs| Timestamp { secs, nanos: 0 };
        assert_eq!(civil(t(0)), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(t(951_782_400)), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(t(1_795_740_330)), (2026, 11, 27, 0, 45, 30));
        assert_eq!(civil(t(-1)), (1969, 12, 31, 23, 59, 59));
    }
}
