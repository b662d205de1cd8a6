//! Planned drain (claim 43), the IO half. The drained server (on an admin's `Drain`) connects
//! to its peer as a client with its `--peer-identity`, asks which files the peer lacks and
//! sends them, then sends its table in `Import` batches, its MAC key wrapped with the session's
//! key-wrap key. Only when the peer took everything does it start referring clients there; a
//! failure half-way leaves it serving as before.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use super::shared::{now_ms, Shared};
use super::ControlClient;
use crate::state::records::{FileRecord, OpenRecord};
use crate::state::{Export, Imported};
use crate::wire::{Message, MAX_CHUNK, MAX_DRAIN_ITEMS, MAX_INBOX_BATCH};
use crate::Error;

/// Encoded records per `Import` stay under this many bytes (the frame holds 64 KiB).
const IMPORT_BATCH_BYTES: usize = 40 * 1024;
/// Paths per `Missing` question.
const MISSING_BATCH: usize = 256;

/// Refuses files and opens from a server this one does not list in `--peers`.
pub(super) fn require_peer(shared: &Shared, client: &str) -> Result<(), Error> {
    require_listed(&shared.config.peers, client, || {
        format!("{client:?} is not a peer that may drain into this server (handoffd --peers)")
    })
}

/// Refuses a drain of this server by a client it does not list in `--admins`.
pub(super) fn require_admin(shared: &Shared, client: &str) -> Result<(), Error> {
    require_listed(&shared.config.admins, client, || {
        format!("client {client:?} is not an administrator of this server (handoffd --admins)")
    })
}

fn require_listed(list: &[String], client: &str, why: impl Fn() -> String) -> Result<(), Error> {
    if list.iter().any(|a| a == client) {
        Ok(())
    } else {
        Err(Error::denied(why()))
    }
}

/// Sends `msg` to the peer and expects `Done`.
async fn expect_done(to: &mut ControlClient, msg: &Message) -> Result<(), Error> {
    match to.request(msg).await? {
        Message::Done => Ok(()),
        other => Err(unexpected(msg, &other)),
    }
}

fn unexpected(asked: &Message, answer: &Message) -> Error {
    Error::Protocol(format!(
        "peer answered {:#04x} with {:#04x}",
        asked.kind(),
        answer.kind()
    ))
}

/// Carries on a drain that a restart interrupted, retrying every 5 s until the peer has
/// everything: until then requests about opens are told to retry (neither served here,
/// since the peer may hold them already, nor referred, since it may not).
pub async fn resume_drain(shared: Shared) {
    let Some(peer) = shared.draining() else {
        return;
    };
    tracing::warn!(peer, "a drain was interrupted by a restart; carrying it on");
    loop {
        match drain_to(&shared, peer.clone(), false).await {
            Ok(_) => return,
            Err(e) => tracing::warn!(peer, "drain not finished, retrying in 5 s: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}

/// Drains this server into `peer`; returns the `Drained` reply for the admin. If the
/// transfer fails, `abort` makes the server serve again (an admin's drain); otherwise it
/// stays draining (a resumed drain, which retries).
pub(super) async fn drain_to(shared: &Shared, peer: String, abort: bool) -> Result<Message, Error> {
    let identity = shared.config.peer_identity.clone().ok_or_else(|| {
        Error::bad_request(
            "this server has no identity to present to a peer: start it with --peer-identity FILE \
             (a client identity the peer lists in its --clients and --peers)",
        )
    })?;
    let Some(_running) = shared.drain_running() else {
        return Err(Error::bad_request(
            "a drain of this server is already running",
        ));
    };
    // The peer is asked first: one that does not answer (or refuses this server) fails the
    // drain before any write in flight is cut short.
    if let Err(e) = ControlClient::connect(&peer, &identity).await {
        let still = match shared.draining() {
            None => "this server serves as before",
            Some(_) => "this server keeps draining and tries again",
        };
        return Err(Error::Protocol(format!(
            "drain to {peer} failed, {still}: {e}"
        )));
    }
    // Whether this call starts the drain (else it carries on one a restart interrupted, or
    // is refused): only then does a failure give it up.
    let starts = shared.draining().is_none();
    // From here no byte of a file changes (a write in flight ends at its next piece).
    shared.freeze_bytes(true);
    let sent = async {
        let to = peer.clone();
        shared
            .run(move |core, _| Ok(core.begin_drain(&to)?))
            .await?;
        // Changes begun before are counted here as they end (as their opens' own): the
        // table and the counters are taken once they have.
        let ended = shared
            .writes_ended_off_runtime(super::shared::STOP_WRITES_WAIT)
            .await;
        if !ended {
            return Err(Error::Protocol(
                "writes were still in flight after 5 s; try the drain again".into(),
            ));
        }
        let to = peer.clone();
        let export = shared
            .run(move |core, _| Ok(core.begin_drain(&to)?))
            .await?;
        let opens = export.records.len() as u64;
        tracing::info!(peer, opens, "draining");
        let (files, bytes) = send(shared, &peer, &identity, &export).await?;
        Ok((opens, files, bytes))
    }
    .await;
    match sent {
        Ok((opens, files_sent, bytes_sent)) => {
            // If this cannot be recorded, the server stays "draining" (refusing, not
            // serving) rather than serve opens the peer now holds too.
            shared
                .run(|core, _| {
                    core.finish_drain();
                    Ok(())
                })
                .await
                .map_err(|e| {
                    Error::Protocol(format!(
                        "{peer} took the opens, but this server could not record the referral \
                         ({e}); it refuses requests until restarted"
                    ))
                })?;
            Ok(Message::Drained {
                opens,
                files_sent,
                bytes_sent,
            })
        }
        Err(e) => {
            let gave_up = abort && starts;
            if gave_up {
                tracing::warn!(peer, "drain failed, serving again: {e}");
                let _ = shared
                    .run(|core, _| {
                        core.abort_drain();
                        Ok(())
                    })
                    .await;
            }
            if shared.draining().is_none() {
                shared.freeze_bytes(false);
            }
            Err(Error::Protocol(match gave_up {
                true => format!("drain to {peer} failed, this server serves as before: {e}"),
                false => format!("drain to {peer} failed: {e}"),
            }))
        }
    }
}

/// Sends the files the peer lacks, then the table. Returns (files, bytes) sent.
async fn send(
    shared: &Shared,
    peer: &str,
    identity: &crate::auth::Identity,
    export: &Export,
) -> Result<(u64, u64), Error> {
    let mut to = ControlClient::connect(peer, identity).await?;
    let paths: Vec<String> = export
        .records
        .iter()
        .map(|r| r.path.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut missing = Vec::new();
    for batch in paths.chunks(MISSING_BATCH) {
        let ask = Message::Missing {
            paths: batch.to_vec(),
        };
        match to.request(&ask).await? {
            Message::Paths { paths } => missing.extend(paths),
            other => return Err(unexpected(&ask, &other)),
        }
    }
    let mut bytes = 0;
    for path in &missing {
        bytes += send_file(shared, &mut to, path).await?;
    }

    let mac_key = to.wrap_secret(&export.mac_key)?;
    let counters: BTreeMap<u64, FileRecord> = export.counters.iter().copied().collect();
    let mut batch: Vec<(Vec<u8>, &OpenRecord)> = Vec::new();
    let mut size = 0;
    for (i, rec) in export.records.iter().enumerate() {
        let encoded = rec.encode()?;
        // The record, and its path again among the counters.
        let len = encoded.len() + rec.path.len() + 24;
        batch.push((encoded, rec));
        size += len;
        let last = i + 1 == export.records.len();
        if last || size + len > IMPORT_BATCH_BYTES || batch.len() >= MAX_DRAIN_ITEMS / 2 {
            let msg = import_message(mac_key, std::mem::take(&mut batch), &counters);
            expect_done(&mut to, &msg).await?;
            size = 0;
        }
    }
    for (client, tokens) in &export.inboxes {
        for batch in tokens.chunks(MAX_INBOX_BATCH) {
            let msg = Message::ImportInbox {
                client: client.clone(),
                tokens: batch.to_vec(),
            };
            expect_done(&mut to, &msg).await?;
        }
    }
    Ok((missing.len() as u64, bytes))
}

/// One `Import`: the batch's encoded records, and the counters of the files they name.
fn import_message(
    mac_key: [u8; 32],
    batch: Vec<(Vec<u8>, &OpenRecord)>,
    counters: &BTreeMap<u64, FileRecord>,
) -> Message {
    let mut by_path = BTreeMap::new();
    let mut records = Vec::with_capacity(batch.len());
    for (encoded, r) in batch {
        let c = counters.get(&r.file_id).copied().unwrap_or_default();
        by_path.insert(r.path.clone(), (c.access_seq, c.version));
        records.push(encoded);
    }
    Message::Import {
        mac_key,
        records,
        counters: by_path.into_iter().map(|(p, (a, v))| (p, a, v)).collect(),
    }
}

async fn send_file(shared: &Shared, to: &mut ControlClient, path: &str) -> Result<u64, Error> {
    let p = path.to_owned();
    let mut file = shared
        .fs(move |s| Ok(s.config.root.open_file(&p, false)?.file))
        .await?;
    let mut offset = 0u64;
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let last = filled < buf.len();
        let msg = Message::FileChunk {
            path: path.to_owned(),
            offset,
            data: buf[..filled].to_vec(),
            last,
        };
        expect_done(to, &msg).await?;
        offset += filled as u64;
        if last {
            tracing::info!(path, bytes = offset, "sent a file the peer lacked");
            return Ok(offset);
        }
    }
}

/// Peer side: which of `paths` are not under this server's root.
pub(super) fn missing(shared: &Shared, paths: Vec<String>) -> Result<Message, Error> {
    let mut out = Vec::new();
    for p in paths {
        if !shared.config.root.exists(&p)? {
            out.push(p);
        }
    }
    Ok(Message::Paths { paths: out })
}

/// Peer side: one chunk of a file this server lacks. It is written beside the target and
/// linked into place when complete, so a half-sent file is never served; an existing file is
/// never overwritten.
pub(super) fn file_chunk(
    shared: &Shared,
    path: &str,
    offset: u64,
    data: &[u8],
    last: bool,
) -> Result<Message, Error> {
    shared.writable()?;
    use rustix::fs::{AtFlags, Mode, OFlags};
    let exists = || {
        Error::denied(format!(
            "{path} exists here already; a drain does not overwrite it"
        ))
    };
    // Everything happens relative to the target's directory, opened beneath the root: no
    // link can lead the write elsewhere.
    let (dir, name) = shared.config.root.parent_dir(path, offset == 0)?;
    match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => return Err(exists()),
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(std::io::Error::from(e).into()),
    }
    let part = std::path::PathBuf::from(format!(".{}.handoff-drain", name.display()));
    // Non-blocking and checked: a FIFO planted under the part's name must not hold a thread.
    let flags =
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = if offset == 0 {
        // A part left by an interrupted drain starts again.
        let _ = rustix::fs::unlinkat(&dir, &part, AtFlags::empty());
        rustix::fs::openat(
            &dir,
            &part,
            flags | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(0o666),
        )
    } else {
        rustix::fs::openat(&dir, &part, flags, Mode::empty())
    }
    .map_err(std::io::Error::from)?;
    let file = std::fs::File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(Error::denied(format!(
            "{path}: the partial file of a drain is not a regular file"
        )));
    }
    file.write_all_at(data, offset)?;
    if last {
        file.sync_all()?;
        // A link, unlike a rename, never replaces a file that appeared meanwhile.
        rustix::fs::linkat(&dir, &part, &dir, &name, AtFlags::empty()).map_err(|e| match e {
            rustix::io::Errno::EXIST => exists(),
            e => std::io::Error::from(e).into(),
        })?;
        rustix::fs::unlinkat(&dir, &part, AtFlags::empty()).map_err(std::io::Error::from)?;
        let d = rustix::fs::openat(
            &dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)?;
        rustix::fs::fsync(&d).map_err(std::io::Error::from)?;
    } else {
        (&file).flush()?;
    }
    Ok(Message::Done)
}

/// Peer side: merges a batch of drained opens (the MAC key already unwrapped).
pub(super) async fn import(
    shared: &Shared,
    mac_key: [u8; 32],
    records: Vec<Vec<u8>>,
    counters: Vec<(String, u64, u64)>,
) -> Result<Message, Error> {
    let counters: BTreeMap<String, FileRecord> = counters
        .into_iter()
        .map(|(p, access_seq, version)| {
            (
                p,
                FileRecord {
                    access_seq,
                    version,
                    change_mark: 0,
                },
            )
        })
        .collect();
    let mut decoded = Vec::with_capacity(records.len());
    for bytes in &records {
        decoded.push(OpenRecord::decode(bytes)?);
    }
    // Which file each path names here (opened beneath the root, off the async workers).
    let opens = shared
        .fs(move |s| {
            let mut opens = Vec::with_capacity(decoded.len());
            for record in decoded {
                let here = s.config.root.open_file(&record.path, false).map_err(|e| {
                    Error::not_found(format!(
                        "{e} (a drain sends missing files before the table)"
                    ))
                })?;
                opens.push(Imported {
                    counters: counters.get(&record.path).copied().unwrap_or_default(),
                    local_file_id: here.identity.file_id(),
                    record,
                });
            }
            Ok(opens)
        })
        .await?;
    let summary = shared
        .run(move |core, _| Ok(core.import(mac_key, opens, now_ms())?))
        .await?;
    tracing::info!(
        imported = summary.imported,
        conflicted = summary.conflicted,
        "merged opens from a drained server"
    );
    Ok(Message::Done)
}

/// A drain request: from an admin (`Drain`), or from the peer a server drains into.
pub(super) async fn request(shared: &Shared, client: &str, msg: Message) -> Result<Message, Error> {
    match msg {
        Message::Drain { to } => {
            require_admin(shared, client)?;
            drain_to(shared, to, true).await
        }
        Message::ImportInbox { client: to, tokens } => {
            require_peer(shared, client)?;
            shared
                .run(move |core, _| Ok(core.import_inbox(&to, tokens)?))
                .await?;
            Ok(Message::Done)
        }
        Message::Missing { paths } => {
            require_peer(shared, client)?;
            shared.fs(move |s| missing(s, paths)).await
        }
        Message::FileChunk {
            path,
            offset,
            data,
            last,
        } => {
            require_peer(shared, client)?;
            shared
                .fs(move |s| file_chunk(s, &path, offset, &data, last))
                .await
        }
        other => Err(Error::Protocol(format!(
            "{:#04x} is not a drain request",
            other.kind()
        ))),
    }
}
