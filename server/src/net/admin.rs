//! The administrator's requests on the control channel (clients in `--admins`): every open
//! with its holder and locks (`handoff admin opens`), and a forced close of the opens a key,
//! a client or a path names (`handoff admin close`).

use super::drain::require_admin;
use super::shared::Shared;
use crate::state::{CloseTarget, OpenSummary};
use crate::wire::{Message, ADMIN_PAGE};
use crate::Error;

/// Bytes of summaries one `OpenList` carries before the page ends: with the largest one
/// after it (a 4 KiB path, 256 locks, 64 holders) it still fits a frame.
const PAGE_BYTES: usize = 40 * 1024;

/// About how many bytes `o` takes on the wire.
fn wire_size(o: &OpenSummary) -> usize {
    40 + o.path.len()
        + o.owner.len()
        + o.holders.iter().map(|h| h.len() + 4).sum::<usize>()
        + 16 * o.locks.len()
}

pub(super) async fn request(shared: &Shared, client: &str, msg: Message) -> Result<Message, Error> {
    require_admin(shared, client)?;
    match msg {
        Message::AdminOpens { after } => {
            let after = u32::try_from(after).unwrap_or(u32::MAX);
            let (opens, next) = shared
                .blocking(move |s| {
                    let mut bytes = 0;
                    let mut count = 0;
                    Ok(s.peek(|core| {
                        core.admin_opens(after, |o| {
                            bytes += wire_size(o);
                            count += 1;
                            bytes <= PAGE_BYTES && count < ADMIN_PAGE
                        })
                    }))
                })
                .await?;
            Ok(Message::OpenList {
                opens,
                next: u64::from(next),
            })
        }
        Message::AdminClose {
            key,
            client: who,
            path,
        } => {
            let target = CloseTarget::from_fields(key, who, path).ok_or_else(|| {
                Error::bad_request("admin close names exactly one of a key, a client or a path")
            })?;
            // Named in the log without the key itself (a capability, even once closed).
            let named = match &target {
                CloseTarget::Key(_) => "the open of a key".to_owned(),
                CloseTarget::Client(c) => format!("client {c:?}'s opens"),
                CloseTarget::Path(p) => format!("the opens of {p}"),
            };
            let count = shared
                .run(move |core, now| Ok(core.admin_close(&target, now)?))
                .await?;
            tracing::warn!(
                admin = client,
                closed = count,
                "an administrator closed {named}"
            );
            Ok(Message::ClosedOpens {
                count: count as u64,
            })
        }
        other => Err(Error::Protocol(format!(
            "{:#04x} is not an admin request",
            other.kind()
        ))),
    }
}
