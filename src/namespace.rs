//! The namespace beneath the server's root, from the client: attributes, listings, and
//! making, removing, renaming and truncating by path.

use handoff_core::wire::{DirEntry, FileAttr, Message};
use handoff_core::Error;

use crate::client::unexpected;
use crate::Client;

impl Client {
    /// The attributes of `path` ("/" for the root).
    pub async fn stat(&mut self, path: &str) -> Result<FileAttr, Error> {
        match self
            .request(&Message::Stat {
                path: path.to_owned(),
            })
            .await?
        {
            Message::Attributes { attr } => Ok(attr),
            other => Err(unexpected(&other)),
        }
    }

    /// One page of the directory `path`: entries after the name `after` ("" from the start),
    /// sorted by name, and the name to pass for the next page ("" when this was the last).
    pub async fn list_page(
        &mut self,
        path: &str,
        after: &str,
    ) -> Result<(Vec<DirEntry>, String), Error> {
        match self
            .request(&Message::List {
                path: path.to_owned(),
                after: after.to_owned(),
            })
            .await?
        {
            Message::Entries { entries, next } => Ok((entries, next)),
            other => Err(unexpected(&other)),
        }
    }

    /// Every entry of the directory `path`, sorted by name (fetched a page at a time).
    pub async fn list(&mut self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let (entries, next) = self.list_page(path, &after).await?;
            all.extend(entries);
            // A cursor that does not move on would loop for ever: the server is wrong.
            if next.is_empty() || next <= after {
                return Ok(all);
            }
            after = next;
        }
    }

    /// Makes the directory `path`; with `parents`, its missing parents too, and an existing
    /// directory is no error.
    pub async fn make_dir(&mut self, path: &str, parents: bool) -> Result<(), Error> {
        self.expect_done(Message::MakeDir {
            path: path.to_owned(),
            parents,
        })
        .await
    }

    /// Removes the file (or link) `path`. Refused (denied, naming the holder) while another
    /// client's open of it does not share delete.
    pub async fn remove(&mut self, path: &str) -> Result<(), Error> {
        self.expect_done(Message::Remove {
            path: path.to_owned(),
            dir: false,
        })
        .await
    }

    /// Removes the empty directory `path`.
    pub async fn remove_dir(&mut self, path: &str) -> Result<(), Error> {
        self.expect_done(Message::Remove {
            path: path.to_owned(),
            dir: true,
        })
        .await
    }

    /// Renames `from` to `to`, replacing a file there. Refused while another client's open of
    /// either does not share delete.
    pub async fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        self.expect_done(Message::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        })
        .await
    }

    /// Sets the size of the regular file `path`. Refused while another client's open of it
    /// does not share write, or holds a lock on the bytes the change touches.
    pub async fn truncate(&mut self, path: &str, size: u64) -> Result<(), Error> {
        self.expect_done(Message::Truncate {
            path: path.to_owned(),
            size,
        })
        .await
    }
}
