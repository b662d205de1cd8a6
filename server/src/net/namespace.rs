//! The namespace requests of the control channel: stat, list, mkdir, remove, rename,
//! truncate. The file system work runs off the lock ([`Shared::fs`], see
//! [`super::namespace_fs`]); the core decides whether another client's open stands in the
//! way (SMB's delete sharing: an open that does not share delete keeps others from removing
//! or renaming its file; the requester's own opens never do).
//!
//! Between the core's check and the change there is a moment in which another client may
//! open the file; that open then holds a file that has just lost its name, as on a local file
//! system, and the check never lets a change through past an open that was there before it.

use super::shared::Shared;
use crate::wire::{Message, LIST_PAGE};
use crate::Error;

/// Answers one namespace request of `client`.
pub async fn request(shared: &Shared, client: &str, msg: Message) -> Result<Message, Error> {
    // A drained (or draining) server has handed its files to a peer: changes go there.
    shared.peek(|core| core.check_referral())?;
    let client = client.to_owned();
    match msg {
        Message::Stat { path } => {
            let attr = shared.fs(move |s| s.config.root.stat(&path)).await?;
            Ok(Message::Attributes { attr })
        }
        Message::List { path, after } => {
            let (entries, next) = shared
                .fs(move |s| s.config.root.list(&path, &after, LIST_PAGE))
                .await?;
            Ok(Message::Entries { entries, next })
        }
        Message::MakeDir { path, parents } => {
            shared
                .fs(move |s| {
                    s.writable()?;
                    s.config.root.make_dir(&path, parents)
                })
                .await?;
            Ok(Message::Done)
        }
        Message::Remove { path, dir } => {
            shared
                .fs(move |s| {
                    s.writable()?;
                    let target = s.config.root.target(&path)?;
                    s.check_removable(&client, &target)?;
                    s.config.root.remove(&path, &target, dir)
                })
                .await?;
            Ok(Message::Done)
        }
        Message::Rename { from, to } => {
            shared
                .fs(move |s| {
                    s.writable()?;
                    let root = &s.config.root;
                    let (source, dest) = (root.target(&from)?, root.target(&to)?);
                    s.check_removable(&client, &source)?;
                    s.check_removable(&client, &dest)?;
                    root.rename((&from, &source), (&to, &dest))
                })
                .await?;
            Ok(Message::Done)
        }
        Message::Truncate { path, size } => {
            // Opened, checked and cut in one trip off the async workers, as removals are.
            shared
                .fs(move |s| {
                    let opened = s.config.root.open_file(&path, true)?;
                    let file_id = opened.identity.file_id();
                    let from = size.min(opened.size);
                    // Direct grants on the file go before it is cut (see `revoke_file`), and
                    // the cut is on its way, with the file's change mark held durably: a
                    // crash after the cut and before its count is written still tells the
                    // file's opens (those that come meanwhile too).
                    let mut change = s.changing_file(file_id, None, |core| {
                        core.check_truncatable(&client, file_id, from)?;
                        core.revoke_file(file_id);
                        Ok(())
                    })?;
                    s.may_land()?;
                    change.may_have_landed();
                    let cut = opened
                        .file
                        .set_len(size)
                        .map_err(|e| Error::file_system("truncating the file", &e));
                    // Data channels drop their registered windows of files before their next
                    // request: windows mapped before the cut hold pages no longer in the file.
                    s.truncations
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // The file's opens are told it changed when they resume (a failed cut
                    // may have cut some); a grant taken again meanwhile is revoked too.
                    s.wrote(&mut change);
                    s.run_with(crate::net::Persist::Lazy, |core, _| {
                        core.revoke_file(file_id);
                        Ok(())
                    })?;
                    cut
                })
                .await?;
            Ok(Message::Done)
        }
        other => Err(Error::Protocol(format!(
            "{:#04x} is not a namespace request",
            other.kind()
        ))),
    }
}
