//! The core under driven time: no sleeps, every deadline stepped explicitly.

use super::*;
use crate::state::records::FileRecord;
use crate::store::{MemoryStore, Store};

const T: u64 = 60_000;

fn config() -> CoreConfig {
    CoreConfig {
        durable_timeout_ms: T,
        grace_ms: 5_000,
        tombstone_ms: 3_600_000,
        quotas: Quotas::default(),
    }
}

fn fresh() -> (ServerCore, MemoryStore) {
    fresh_seeded(1)
}

/// A new server whose MAC key (and nonces) come from `seed`.
fn fresh_seeded(seed: u64) -> (ServerCore, MemoryStore) {
    let mut store = MemoryStore::default();
    let mut core = ServerCore::recover(config(), store.load().unwrap(), 0, seed);
    store.apply(&core.take_mutations()).unwrap();
    (core, store)
}

fn req(client: &str, mode: Mode, share: ShareMode, locks: &[(u64, u64)]) -> OpenRequest {
    OpenRequest {
        client: client.into(),
        path: "f".into(),
        file_id: 42,
        mode,
        share,
        locks: locks
            .iter()
            .map(|(o, l)| ByteRange::new(*o, *l).unwrap())
            .collect(),
        pid: 1000,
        truncate: false,
    }
}

fn denied(r: Result<impl std::fmt::Debug, CoreError>) -> Option<ResumeReport> {
    match r {
        Err(CoreError::Denied { report, .. }) => report,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn exclusive_open_denies_others_until_the_durable_timeout_then_grants() {
    let (mut core, _) = fresh();
    let t0 = 1_000;
    let g = core
        .open(req("c1", Mode::ReadWrite, ShareMode::NONE, &[]), t0)
        .unwrap();
    core.detach(g.handle, t0); // the CLI exits: channel gone
    assert_eq!(core.poll_timeout(), Some(t0 + T));

    core.handle_timeout(t0 + T - 1);
    denied(core.open(req("c2", Mode::Read, ShareMode::ALL, &[]), t0 + T - 1));

    core.handle_timeout(t0 + T);
    let g2 = core
        .open(req("c2", Mode::Read, ShareMode::ALL, &[]), t0 + T)
        .unwrap();

    // c1 comes back: told someone accessed (not changed) the file, but c2's open blocks the
    // exclusive re-grant.
    let report = denied(core.attach("c1", &g.sealed)).expect("report with the denial");
    assert!(report.accessed_by_other && !report.changed_by_other && !report.reopened);

    // Once c2 closes, c1 gets its open back and is still told.
    core.close("c2", &g2.sealed).unwrap();
    let a = core.attach("c1", &g.sealed).unwrap();
    assert!(a.report.accessed_by_other && a.report.reopened);
    // ... and the report was consumed.
    core.detach(a.handle, t0 + T + 5);
    let a = core.attach("c1", &g.sealed).unwrap();
    assert_eq!(a.report, ResumeReport::default());
}

#[test]
fn resume_within_the_timeout_reports_nothing_and_keeps_the_mode() {
    let (mut core, _) = fresh();
    let g = core
        .open(req("c1", Mode::Read, ShareMode::ALL, &[]), 10)
        .unwrap();
    core.detach(g.handle, 10);
    core.handle_timeout(10 + T - 1);
    let a = core.attach("c1", &g.sealed).unwrap();
    assert_eq!(a.report, ResumeReport::default());
    assert_eq!(a.mode, Mode::Read);
    // Attached: the deadline is gone, time passes freely.
    assert_eq!(core.poll_timeout(), None);
    core.handle_timeout(10 + 10 * T);
    assert!(core.attach("c1", &g.sealed).is_ok());
}

#[test]
fn a_write_by_another_client_is_reported_as_a_change() {
    let (mut core, _) = fresh();
    let g = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    core.detach(g.handle, 0);
    let g2 = core
        .open(req("c2", Mode::ReadWrite, ShareMode::ALL, &[]), 1)
        .unwrap();
    core.begin_io(g2.handle, IoKind::Write, ByteRange::new(0, 10))
        .unwrap();
    let a = core.attach("c1", &g.sealed).unwrap();
    assert!(a.report.accessed_by_other && a.report.changed_by_other && !a.report.reopened);
}

#[test]
fn locks_bind_other_opens_but_not_duplicates_of_the_holder() {
    let (mut core, _) = fresh();
    let g = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[(100, 50)]), 0)
        .unwrap();
    let dup = core.attach("c1", &g.sealed).unwrap();
    assert_eq!(dup.locks, vec![ByteRange::new(100, 50).unwrap()]);
    core.begin_io(dup.handle, IoKind::Write, ByteRange::new(120, 10))
        .unwrap();

    let other = core
        .open(req("c2", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    denied(core.begin_io(other.handle, IoKind::Read, ByteRange::new(149, 1)));
    denied(core.begin_io(other.handle, IoKind::Write, ByteRange::new(0, 101)));
    core.begin_io(other.handle, IoKind::Read, ByteRange::new(150, 1000))
        .unwrap();
    // A conflicting lock at open time is refused too.
    denied(core.open(req("c3", Mode::Read, ShareMode::ALL, &[(0, 120)]), 0));
    // Expiry of the holder releases its locks.
    core.detach(g.handle, 0);
    core.detach(dup.handle, 0);
    core.handle_timeout(T);
    core.begin_io(other.handle, IoKind::Read, ByteRange::new(100, 50))
        .unwrap();
}

#[test]
fn read_only_handles_cannot_write() {
    let (mut core, _) = fresh();
    let g = core
        .open(req("c1", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    let dup = core.attach("c1", &g.sealed).unwrap();
    denied(core.begin_io(dup.handle, IoKind::Write, ByteRange::new(0, 1)));
    core.begin_io(dup.handle, IoKind::Read, ByteRange::new(0, 1))
        .unwrap();
}

#[test]
fn keys_are_checked_before_use_and_bound_to_their_client() {
    let (mut core, _) = fresh();
    let g = core
        .open(req("c1", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    let passed = core.pass("c1", &g.sealed, "c2").unwrap();
    assert_eq!(core.inbox("c2"), vec![resume_key::sealed_to_token(&passed)]);
    assert!(core.attach("c2", &passed).is_ok());
    denied(core.attach("c3", &passed));
    denied(core.attach("c2", &g.sealed));
    let mut altered = passed;
    altered[12] ^= 1;
    assert!(matches!(
        core.attach("c2", &altered),
        Err(CoreError::NotFound(_))
    ));
    // After close, the key (and the inbox entry) is dead.
    core.close("c1", &g.sealed).unwrap();
    assert!(matches!(
        core.attach("c1", &g.sealed),
        Err(CoreError::NotFound(_))
    ));
    assert!(core.inbox("c2").is_empty());
}

#[test]
fn restart_keeps_opens_keys_and_locks_and_starts_a_grace_period() {
    let (mut core, mut store) = fresh();
    let g = core
        .open(req("c1", Mode::ReadWrite, ShareMode::NONE, &[(0, 10)]), 100)
        .unwrap();
    core.detach(g.handle, 100);
    store.apply(&core.take_mutations()).unwrap();
    drop(core);

    // "kill -9", then a restart at t=200.
    let mut core = ServerCore::recover(config(), store.load().unwrap(), 200, 2);
    assert!(
        core.take_mutations().is_empty(),
        "the MAC key is reused, not replaced"
    );
    assert!(matches!(
        core.open(req("c2", Mode::Read, ShareMode::ALL, &[]), 201),
        Err(CoreError::Grace { .. })
    ));
    // After grace, the recovered exclusive open still denies.
    denied(core.open(req("c2", Mode::Read, ShareMode::ALL, &[]), 200 + 5_000));
    // The durable window restarted with the server.
    assert_eq!(core.poll_timeout(), Some(200 + T));
    let a = core.attach("c1", &g.sealed).unwrap();
    assert_eq!(a.locks, vec![ByteRange::new(0, 10).unwrap()]);
    assert_eq!(a.report, ResumeReport::default());
}

#[test]
fn tombstones_are_forgotten_after_their_retention() {
    let (mut core, _) = fresh();
    let g = core
        .open(req("c1", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    core.detach(g.handle, 0);
    core.handle_timeout(T);
    assert_eq!(core.open_count(), 1);
    core.handle_timeout(T + 3_600_000);
    assert_eq!(core.open_count(), 0);
    assert!(matches!(
        core.attach("c1", &g.sealed),
        Err(CoreError::NotFound(_))
    ));
}

#[test]
fn direct_mode_is_for_lone_readers_and_conflicts_revoke_it() {
    let (mut core, _) = fresh();
    let reader = core
        .open(req("c1", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    let other_reader = core
        .open(req("c2", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    assert_eq!(
        core.direct_allowed(reader.handle, DirectAccess::Read),
        Ok(reader.slot)
    );
    assert!(
        core.take_revocations().is_empty(),
        "a second reader revokes nothing"
    );
    // A writer's open revokes every other open's direct access and keeps it from coming back.
    let writer = core
        .open(req("c3", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    let mut revoked = core.take_revocations();
    revoked.sort();
    assert_eq!(revoked, vec![reader.slot, other_reader.slot]);
    denied(core.direct_allowed(reader.handle, DirectAccess::Read));
    denied(core.direct_allowed(writer.handle, DirectAccess::Read));
    core.close("c3", &writer.sealed).unwrap();
    assert_eq!(core.take_revocations(), vec![writer.slot]);
    assert!(core
        .direct_allowed(reader.handle, DirectAccess::Read)
        .is_ok());
    // A lock by another open revokes too.
    core.lock(
        "c2",
        &other_reader.sealed,
        ByteRange::new(0, 1).unwrap(),
        true,
    )
    .unwrap();
    assert_eq!(core.take_revocations(), vec![reader.slot]);
    denied(core.direct_allowed(reader.handle, DirectAccess::Read));
    // Expiry of the holder itself revokes its own grant.
    core.lock(
        "c2",
        &other_reader.sealed,
        ByteRange::new(0, 1).unwrap(),
        false,
    )
    .unwrap();
    core.take_revocations();
    core.detach(reader.handle, 0);
    core.handle_timeout(T);
    assert!(core.take_revocations().contains(&reader.slot));
}

#[test]
fn direct_writes_are_for_a_lone_writer_and_any_other_open_revokes_them() {
    let (mut core, _) = fresh();
    let writer = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    let only = DirectAccess::Write;
    assert_eq!(core.direct_allowed(writer.handle, only), Ok(writer.slot));
    denied(core.direct_allowed(writer.handle, DirectAccess::Read));
    core.take_revocations();
    // Even a reader revokes a direct writer: the file is no longer the writer's alone.
    let reader = core
        .open(req("c2", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    assert_eq!(core.take_revocations(), vec![writer.slot]);
    denied(core.direct_allowed(writer.handle, only));
    denied(core.direct_allowed(reader.handle, only));
    // Once the reader is gone, the writer may have direct writes again.
    core.close("c2", &reader.sealed).unwrap();
    assert_eq!(core.direct_allowed(writer.handle, only), Ok(writer.slot));
    // A second reader of another file revokes nothing of this one.
    core.take_revocations();
    let mut elsewhere = req("c2", Mode::Read, ShareMode::ALL, &[]);
    elsewhere.file_id += 1;
    elsewhere.path = "other".into();
    core.open(elsewhere, 0).unwrap();
    assert!(core.take_revocations().is_empty());
}

#[test]
fn repeated_access_by_one_open_is_written_once_but_reported_after_anyone_looked() {
    let (mut core, _) = fresh();
    let a = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    let b = core
        .open(req("c2", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    core.take_mutations();
    core.begin_io(a.handle, IoKind::Read, ByteRange::new(0, 1))
        .unwrap();
    assert!(
        !core.take_mutations().is_empty(),
        "the first access is recorded"
    );
    for _ in 0..10 {
        core.begin_io(a.handle, IoKind::Read, ByteRange::new(0, 1))
            .unwrap();
    }
    assert!(
        core.take_mutations().is_empty(),
        "repeats change nothing observable"
    );
    core.begin_io(a.handle, IoKind::Write, ByteRange::new(0, 1))
        .unwrap();
    assert!(
        !core.take_mutations().is_empty(),
        "the first write is a change"
    );
    // b looks (resumes): a's next access must be visible to b's next resume.
    let rb = core.attach("c2", &b.sealed).unwrap();
    assert!(rb.report.accessed_by_other && rb.report.changed_by_other);
    let rb = core.attach("c2", &b.sealed).unwrap();
    assert_eq!(rb.report, ResumeReport::default());
    core.begin_io(a.handle, IoKind::Read, ByteRange::new(0, 1))
        .unwrap();
    let rb = core.attach("c2", &b.sealed).unwrap();
    assert!(rb.report.accessed_by_other && !rb.report.changed_by_other);
}

#[test]
fn unlock_splits_are_bounded_and_truncation_respects_others_locks() {
    let (mut core, _) = fresh();
    let g = core
        .open(
            req("c1", Mode::ReadWrite, ShareMode::ALL, &[(0, 10_000)]),
            0,
        )
        .unwrap();
    let mut refused = false;
    for i in 0..300u64 {
        match core.lock(
            "c1",
            &g.sealed,
            ByteRange::new(1 + 2 * i, 1).unwrap(),
            false,
        ) {
            Ok(()) => {}
            Err(CoreError::BadRequest(_)) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(refused, "splitting past the lock limit is refused");
    // Every record still encodes (the store never sees an oversize list).
    for m in core.take_mutations() {
        if let crate::store::Mutation::PutOpen(r) = m {
            r.encode().unwrap();
        }
    }
    let mut t = req("c2", Mode::ReadWrite, ShareMode::ALL, &[]);
    t.truncate = true;
    denied(core.open(t, 0));
}

#[test]
fn error_messages_are_cut_on_a_character_boundary() {
    let long = "é".repeat(800); // 1600 bytes, every other byte inside a character
    let e = crate::Error::not_found(long);
    let crate::wire::Message::Error { message, .. } = e.to_message() else {
        panic!()
    };
    assert!(message.len() <= 1000);
}

/// The constant-time share check gives the same answer as checking every open pairwise, for
/// every combination of up to three existing opens and a newcomer.
#[test]
fn share_counts_agree_with_pairwise_checks() {
    use super::open_table::ShareCounts;
    let kinds: Vec<(Mode, ShareMode)> = [Mode::Read, Mode::ReadWrite]
        .into_iter()
        .flat_map(|m| {
            [(false, false), (true, false), (false, true), (true, true)]
                .into_iter()
                .map(move |(read, write)| {
                    (
                        m,
                        ShareMode {
                            read,
                            write,
                            delete: false,
                        },
                    )
                })
        })
        .collect();
    let mut checked = 0;
    for n in 0..=3u32 {
        let combos = (kinds.len() as u32).pow(n);
        for c in 0..combos {
            let existing: Vec<(Mode, ShareMode)> = (0..n)
                .map(|i| kinds[((c / (kinds.len() as u32).pow(i)) % kinds.len() as u32) as usize])
                .collect();
            let mut counts = ShareCounts::default();
            for (m, s) in &existing {
                counts = counts.with(*m, *s);
            }
            for new in &kinds {
                let pairwise = existing.iter().all(|o| ShareMode::compatible(*new, *o));
                assert_eq!(
                    counts.admit(new.0, new.1),
                    pairwise,
                    "{existing:?} + {new:?}"
                );
                checked += 1;
            }
            if let Some(first) = existing.first() {
                // Removing one open from the counts matches checking the rest.
                let rest = counts.without(first.0, first.1);
                for new in &kinds {
                    let pairwise = existing[1..]
                        .iter()
                        .all(|o| ShareMode::compatible(*new, *o));
                    assert_eq!(rest.admit(new.0, new.1), pairwise);
                }
            }
        }
    }
    assert_eq!(checked, 8 * (1 + 8 + 64 + 512));
}

/// A server drains to a peer whose store, file ids, slots and MAC key all differ: the keys
/// clients hold resume there with the same rights, locks and report; the drained server
/// refers; a peer restart keeps it all.
#[test]
fn drained_opens_resume_on_the_peer_with_their_locks_and_report() {
    let (mut a, _) = fresh();
    let g = a
        .open(
            req("c1", Mode::ReadWrite, ShareMode::ALL, &[(0, 100)]),
            1_000,
        )
        .unwrap();
    a.detach(g.handle, 1_000);
    // Another client changes the file meanwhile (the holder should hear of it).
    let other = a
        .open(req("c2", Mode::ReadWrite, ShareMode::ALL, &[]), 2_000)
        .unwrap();
    a.begin_io(other.handle, IoKind::Write, ByteRange::new(500, 10))
        .unwrap();
    a.detach(other.handle, 2_000);
    let export = a.begin_drain("peer:1").unwrap();
    assert_eq!(export.records.len(), 2);
    // While draining, nothing may change here, and nobody is sent to the peer yet.
    assert!(matches!(
        a.open(req("c3", Mode::Read, ShareMode::ALL, &[]), 2_500),
        Err(CoreError::Draining { .. })
    ));

    let (mut b, mut b_store) = fresh_seeded(2);
    // The peer already serves an unrelated file, so its counters and slots differ.
    let mut unrelated = req("c9", Mode::Read, ShareMode::ALL, &[]);
    unrelated.file_id = 7;
    b.open(unrelated, 2_000).unwrap();
    let counters = |id: u64| export.counters.iter().find(|(f, _)| *f == id).unwrap().1;
    let opens = export
        .records
        .iter()
        .map(|r| Imported {
            record: r.clone(),
            counters: counters(r.file_id),
            local_file_id: 4242,
        })
        .collect();
    let summary = b.import(export.mac_key, opens, 3_000).unwrap();
    assert_eq!(summary.imported, 2);
    a.finish_drain();
    assert!(matches!(
        a.attach("c1", &g.sealed),
        Err(CoreError::Referred { peer }) if peer == "peer:1"
    ));
    b_store.apply(&b.take_mutations()).unwrap();

    // The lock travelled: another open asking for those bytes is denied on the peer.
    let mut conflicting = req("c3", Mode::Read, ShareMode::ALL, &[(50, 10)]);
    conflicting.file_id = 4242;
    denied(b.open(conflicting, 3_500));
    b.take_mutations();

    // A peer restarted from its store still knows the drained keys.
    let mut b = ServerCore::recover(config(), b_store.load().unwrap(), 4_000, 2);
    let att = b.attach("c1", &g.sealed).unwrap();
    assert!(att.report.changed_by_other, "{:?}", att.report);
    assert_eq!(att.locks, vec![ByteRange::new(0, 100).unwrap()]);
    assert_eq!(att.mode, Mode::ReadWrite);
    // Only its owner may use it, and a forged key is rejected before any lookup.
    assert!(matches!(
        b.attach("c2", &g.sealed),
        Err(CoreError::Denied { .. })
    ));
    let mut forged = g.sealed;
    forged[10] ^= 1;
    assert!(matches!(
        b.attach("c1", &forged),
        Err(CoreError::NotFound(_))
    ));
    // Closing on the peer forgets the alias: the key is dead everywhere.
    b.close("c1", &g.sealed).unwrap();
    assert!(matches!(
        b.attach("c1", &g.sealed),
        Err(CoreError::NotFound(_))
    ));
}

/// A drain is a durable intent: a server restarted mid-drain neither serves nor refers its
/// opens until it finishes, and a peer sent the same opens twice keeps the latest state.
#[test]
fn an_interrupted_drain_resumes_after_a_restart_and_a_resent_open_replaces_the_first() {
    let (mut a, mut a_store) = fresh();
    let g = a
        .open(
            req("c1", Mode::ReadWrite, ShareMode::ALL, &[(0, 10)]),
            1_000,
        )
        .unwrap();
    let first = a.begin_drain("peer:1").unwrap();
    a_store.apply(&a.take_mutations()).unwrap();

    // Crash here; the restarted server is still draining.
    let mut a = ServerCore::recover(config(), a_store.load().unwrap(), 2_000, 3);
    assert_eq!(a.draining(), Some("peer:1"));
    assert!(matches!(
        a.attach("c1", &g.sealed),
        Err(CoreError::Draining { .. })
    ));
    assert!(a.begin_drain("elsewhere:1").is_err());
    let again = a.begin_drain("peer:1").unwrap();

    let (mut b, _) = fresh_seeded(2);
    let imported = |e: &Export, locks: &[(u64, u64)]| {
        e.records
            .iter()
            .map(|r| {
                let mut record = r.clone();
                record.locks = locks
                    .iter()
                    .map(|(o, l)| ByteRange::new(*o, *l).unwrap())
                    .collect();
                Imported {
                    record,
                    counters: e.counters[0].1,
                    local_file_id: 99,
                }
            })
            .collect::<Vec<_>>()
    };
    b.import(first.mac_key, imported(&first, &[(0, 10)]), 3_000)
        .unwrap();
    // The second send carries what the origin holds now (here: a different lock).
    b.import(again.mac_key, imported(&again, &[(20, 5)]), 3_000)
        .unwrap();
    assert_eq!(b.open_count(), 1);
    let att = b.attach("c1", &g.sealed).unwrap();
    assert_eq!(att.locks, vec![ByteRange::new(20, 5).unwrap()]);

    a.finish_drain();
    a_store.apply(&a.take_mutations()).unwrap();
    let a = ServerCore::recover(config(), a_store.load().unwrap(), 4_000, 4);
    assert_eq!(a.draining(), None);
    assert_eq!(a.referral(), Some("peer:1"));
    assert_eq!(a.open_count(), 0);
}

#[test]
fn a_write_is_counted_when_it_lands_even_if_its_open_was_closed_meanwhile() {
    let (mut core, _) = fresh();
    let a = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    let b = core
        .open(req("c2", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    core.attach("c2", &b.sealed).unwrap();
    // Checked, not counted: a write the file system then refuses changes nothing.
    let file_id = core
        .check_io(a.handle, IoKind::Write, ByteRange::new(0, 1))
        .unwrap();
    assert_eq!(
        core.attach("c2", &b.sealed).unwrap().report,
        ResumeReport::default()
    );
    // Its bytes land after its open was closed: the others are told all the same.
    core.close("c1", &a.sealed).unwrap();
    assert!(core.count_io(a.handle, IoKind::Write).is_err());
    core.count_change(file_id);
    let r = core.attach("c2", &b.sealed).unwrap().report;
    assert!(r.changed_by_other && r.accessed_by_other, "{r:?}");
}

fn with_quotas(quotas: Quotas) -> (ServerCore, MemoryStore) {
    let mut store = MemoryStore::default();
    let config = CoreConfig { quotas, ..config() };
    let mut core = ServerCore::recover(config, store.load().unwrap(), 0, 7);
    store.apply(&core.take_mutations()).unwrap();
    (core, store)
}

fn quota_message(r: Result<impl std::fmt::Debug, CoreError>) -> String {
    match r {
        Err(CoreError::Denied { message, .. }) if message.starts_with("quota:") => message,
        other => panic!("expected a quota denial, got {other:?}"),
    }
}

fn on_file(mut r: OpenRequest, file_id: u64) -> OpenRequest {
    r.file_id = file_id;
    r
}

#[test]
fn open_and_lock_quotas_bind_one_client_and_not_another() {
    let (mut core, _) = with_quotas(Quotas {
        max_client_opens: 2,
        max_client_locks: 3,
        max_inbox: 10,
    });
    let a1 = core
        .open(
            req("alice", Mode::Read, ShareMode::ALL, &[(0, 1), (5, 1)]),
            1,
        )
        .unwrap();
    core.open(on_file(req("alice", Mode::Read, ShareMode::ALL, &[]), 2), 1)
        .unwrap();
    let m = quota_message(core.open(on_file(req("alice", Mode::Read, ShareMode::ALL, &[]), 3), 1));
    assert!(m.contains("--max-client-opens 2"), "{m}");
    // bob is unaffected.
    core.open(on_file(req("bob", Mode::Read, ShareMode::ALL, &[]), 3), 1)
        .unwrap();
    // A third lock fits, a fourth does not; an unlock makes room.
    let r = |o| ByteRange::new(o, 1).unwrap();
    core.lock("alice", &a1.sealed, r(9), true).unwrap();
    let m = quota_message(core.lock("alice", &a1.sealed, r(20), true));
    assert!(m.contains("--max-client-locks 3"), "{m}");
    core.lock("alice", &a1.sealed, r(9), false).unwrap();
    core.lock("alice", &a1.sealed, r(20), true).unwrap();
    // Closing an open makes room for another.
    core.close("alice", &a1.sealed).unwrap();
    core.open(on_file(req("alice", Mode::Read, ShareMode::ALL, &[]), 4), 1)
        .unwrap();
}

#[test]
fn a_full_inbox_refuses_the_pass_and_keeps_every_key_it_holds() {
    let (mut core, mut store) = with_quotas(Quotas {
        max_inbox: 3,
        ..Quotas::default()
    });
    let mut passed = Vec::new();
    for f in 0..3 {
        let g = core
            .open(on_file(req("alice", Mode::Read, ShareMode::ALL, &[]), f), 1)
            .unwrap();
        passed.push(core.pass("alice", &g.sealed, "bob").unwrap());
    }
    let g = core
        .open(on_file(req("alice", Mode::Read, ShareMode::ALL, &[]), 9), 1)
        .unwrap();
    let m = quota_message(core.pass("alice", &g.sealed, "bob"));
    assert!(
        m.contains("bob's inbox holds 3") && m.contains("--max-inbox 3"),
        "{m}"
    );
    // The cap is per owner of the opens: carol's still go to bob (and leave with her open).
    let c = core
        .open(
            on_file(req("carol", Mode::Read, ShareMode::ALL, &[]), 20),
            1,
        )
        .unwrap();
    let from_carol = resume_key::sealed_to_token(&core.pass("carol", &c.sealed, "bob").unwrap());
    assert!(core.inbox("bob").contains(&from_carol));
    core.close("carol", &c.sealed).unwrap();
    assert!(!core.inbox("bob").contains(&from_carol));
    let tokens: Vec<String> = passed
        .iter()
        .map(|k| resume_key::sealed_to_token(k))
        .collect();
    assert_eq!(core.inbox("bob"), tokens, "nothing was evicted");
    // Paged, the same keys in the same order.
    let (first, next) = core.inbox_page("bob", 0, 2);
    let (rest, end) = core.inbox_page("bob", next, 2);
    assert_eq!([first, rest].concat(), tokens);
    assert_eq!(end, 0);
    // The inbox survives a restart, one stored record per key.
    store.apply(&core.take_mutations()).unwrap();
    let core2 = ServerCore::recover(config(), store.load().unwrap(), 5, 7);
    assert_eq!(core2.inbox("bob"), tokens);
    // A key whose open ends leaves the inbox (and the store), making room.
    let mut core = core2;
    core.close("bob", &passed[0]).unwrap();
    store.apply(&core.take_mutations()).unwrap();
    assert_eq!(core.inbox("bob"), tokens[1..].to_vec());
    assert_eq!(store.load().unwrap().inbox.len(), 2);
}

#[test]
fn an_inbox_stored_whole_by_an_older_version_is_rewritten_key_by_key() {
    let (mut core, mut store) = fresh();
    let g = core
        .open(req("alice", Mode::Read, ShareMode::ALL, &[]), 1)
        .unwrap();
    let live = resume_key::sealed_to_token(&core.pass("alice", &g.sealed, "bob").unwrap());
    store.apply(&core.take_mutations()).unwrap();
    let mut snap = store.load().unwrap();
    snap.inbox.clear();
    snap.legacy_inboxes = vec![("bob".into(), vec![live.clone(), "junk".into()])];
    let mut core = ServerCore::recover(config(), snap, 5, 1);
    assert_eq!(core.inbox("bob"), vec![live]);
    let m = core.take_mutations();
    assert!(m.contains(&crate::store::Mutation::DeleteLegacyInbox("bob".into())));
    assert_eq!(
        m.iter()
            .filter(|m| matches!(m, crate::store::Mutation::PutInboxKey(_)))
            .count(),
        1
    );
}

#[test]
fn expired_opens_are_remembered_up_to_the_open_quota_per_client() {
    let (mut core, _) = with_quotas(Quotas {
        max_client_opens: 2,
        ..Quotas::default()
    });
    let mut keys = Vec::new();
    for round in 0..3u64 {
        let t = 1 + round * 10 * T;
        for f in 0..2 {
            let g = core
                .open(
                    on_file(
                        req("alice", Mode::Read, ShareMode::ALL, &[]),
                        round * 10 + f,
                    ),
                    t,
                )
                .unwrap();
            core.detach(g.handle, t);
            keys.push(g.sealed);
        }
        core.handle_timeout(t + T);
    }
    // Six opens expired; all but the newest two were forgotten early (their holder hears
    // "unknown"), the two left can still be resumed and told.
    for k in &keys[..4] {
        assert!(matches!(
            core.attach("alice", k),
            Err(CoreError::NotFound(_))
        ));
    }
    let a = core.attach("alice", &keys[4]).unwrap();
    assert!(a.report.reopened);
}

#[test]
fn the_lock_count_follows_expiry_revival_and_close() {
    let (mut core, _) = with_quotas(Quotas {
        max_client_locks: 2,
        ..Quotas::default()
    });
    let two = [(0, 1), (10, 1)];
    let a = core
        .open(req("alice", Mode::Read, ShareMode::ALL, &two), 1)
        .unwrap();
    quota_message(core.open(
        on_file(req("alice", Mode::Read, ShareMode::ALL, &[(5, 1)]), 2),
        1,
    ));
    // Expired: its locks are released and no longer counted.
    core.detach(a.handle, 1);
    core.handle_timeout(1 + T);
    let b = core
        .open(
            on_file(req("alice", Mode::Read, ShareMode::ALL, &two), 2),
            1 + T,
        )
        .unwrap();
    // Revived: counted again (4 > 2: a resume is not refused for the quota).
    core.attach("alice", &a.sealed).unwrap();
    quota_message(core.lock("alice", &b.sealed, ByteRange::new(50, 1).unwrap(), true));
    // Closed: nothing left counted.
    core.close("alice", &a.sealed).unwrap();
    core.close("alice", &b.sealed).unwrap();
    core.open(
        on_file(req("alice", Mode::Read, ShareMode::ALL, &two), 3),
        2 + T,
    )
    .unwrap();
}

#[test]
fn an_unconfirmed_batch_is_taken_back_and_a_confirmed_one_stands() {
    let t0 = 1_000;
    let exclusive = |client| req(client, Mode::ReadWrite, ShareMode::NONE, &[]);
    // Confirmed: the exclusive open stands and denies another client.
    let (mut core, mut store) = fresh();
    let from = core.checkpoint();
    core.open(exclusive("c1"), t0).unwrap();
    let ready = core.ready();
    assert!(
        !ready.mutations.is_empty(),
        "an open is written to the store"
    );
    store.apply(&ready.mutations).unwrap();
    core.advance(from, Persisted::Confirmed, t0);
    denied(core.open(exclusive("c2"), t0));

    // Unconfirmed: the open (and its handle) made in the batch are taken back, and the
    // taking back is itself written; another client is granted as if it never happened.
    let (mut core, _) = fresh();
    let from = core.checkpoint();
    let ghost = core.open(exclusive("c1"), t0).unwrap();
    let _unwritten = core.ready();
    core.advance(from, Persisted::Unconfirmed, t0);
    let undone = core.ready();
    assert!(
        !undone.mutations.is_empty(),
        "forgetting the open is written once the store is back"
    );
    assert!(core.handle_record(ghost.handle).is_none());
    core.open(exclusive("c2"), t0)
        .expect("the unconfirmed open no longer denies anyone");
}

#[test]
fn removing_a_file_waits_for_other_clients_opens_that_do_not_share_delete() {
    let (mut core, _) = fresh();
    let t0 = 1_000;
    // Nobody holds it: anyone may remove it.
    core.check_removable("c2", 42).unwrap();
    let g = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[]), t0)
        .unwrap();
    // c1's own open does not stand in c1's way; c2 is refused and told who holds it.
    core.check_removable("c1", 42).unwrap();
    match core.check_removable("c2", 42) {
        Err(CoreError::Denied { message, .. }) => {
            assert!(message.contains("client c1"), "{message}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    // A durable open (its channel gone) still holds the file until its timeout.
    core.detach(g.handle, t0);
    denied(core.check_removable("c2", 42));
    core.handle_timeout(t0 + T);
    core.check_removable("c2", 42).unwrap();
    // An open that shares delete lets others remove the file.
    core.open(req("c3", Mode::Read, ShareMode::POSIX, &[]), t0 + T)
        .unwrap();
    core.check_removable("c2", 42).unwrap();
}

#[test]
fn truncating_by_path_waits_for_other_clients_that_deny_writing_or_lock_the_tail() {
    let (mut core, _) = fresh();
    let t0 = 1_000;
    let g = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[(100, 10)]), t0)
        .unwrap();
    // The lock covers bytes 100..110: cutting to 200 removes none of them, to 105 some.
    core.check_truncatable("c2", 42, 200).unwrap();
    match core.check_truncatable("c2", 42, 105) {
        Err(CoreError::Denied { message, .. }) => {
            assert!(message.contains("client c1"), "{message}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    // The holder itself may.
    core.check_truncatable("c1", 42, 0).unwrap();
    core.close("c1", &g.sealed).unwrap();
    // A reader that does not share writing keeps others from changing the size.
    core.open(req("c3", Mode::Read, "r".parse().unwrap(), &[]), t0)
        .unwrap();
    denied(core.check_truncatable("c2", 42, 200));
}

#[test]
fn an_administrator_lists_opens_and_closes_them_and_the_holder_is_told_why() {
    let (mut core, _) = fresh();
    let t0 = 1_000;
    let a = core
        .open(
            req("alice", Mode::ReadWrite, ShareMode::NONE, &[(0, 10)]),
            t0,
        )
        .unwrap();
    core.detach(a.handle, t0);
    let mut other = req("carol", Mode::Read, ShareMode::ALL, &[]);
    other.path = "g".into();
    other.file_id = 43;
    let c = core.open(other, t0).unwrap();

    let (all, next) = core.admin_opens(0, |_| true);
    assert_eq!(next, 0);
    assert_eq!(all.len(), 2);
    let alice = &all[0];
    assert_eq!(
        (
            alice.owner.as_str(),
            alice.path.as_str(),
            alice.state,
            alice.deadline_ms
        ),
        ("alice", "f", OpenState::Durable, t0 + T)
    );
    assert_eq!(alice.locks, [ByteRange::new(0, 10).unwrap()]);
    assert_eq!(all[1].state, OpenState::Connected);
    // Pages: one at a time when only one fits.
    let (page, next) = core.admin_opens(0, |_| false);
    assert_eq!((page.len(), next), (1, all[0].slot));
    let (page, next) = core.admin_opens(next, |_| false);
    assert_eq!((page[0].slot, next), (all[1].slot, 0));

    // Closing alice's open releases the file at once; her key is refused, saying why.
    denied(core.open(req("bob", Mode::Read, ShareMode::ALL, &[]), t0 + 1));
    let n = core
        .admin_close(&CloseTarget::Client("alice".into()), t0 + 2)
        .unwrap();
    assert_eq!(n, 1);
    core.open(req("bob", Mode::Read, ShareMode::ALL, &[]), t0 + 3)
        .expect("granted at once");
    match core.attach("alice", &a.sealed) {
        Err(CoreError::NotFound(why)) => assert!(why.contains("an administrator closed"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A handle still attached is refused the same way; by path closes carol's.
    core.admin_close(&CloseTarget::Path("/g".into()), t0 + 4)
        .unwrap();
    match core.check_io(c.handle, IoKind::Read, None) {
        Err(CoreError::NotFound(why)) => assert!(why.contains("an administrator closed"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Nothing to close is an error, as is a forged key.
    assert!(matches!(
        core.admin_close(&CloseTarget::Client("alice".into()), t0 + 5),
        Err(CoreError::NotFound(_))
    ));
    let mut forged = a.sealed;
    forged[5] ^= 1;
    assert!(core
        .admin_close(&CloseTarget::Key(forged.to_vec()), t0 + 5)
        .is_err());
}

/// c1 opens file 42 read-write, then c2 read-only, both sharing everything, at t = 0.
fn writer_and_reader(core: &mut ServerCore) -> (Granted, Granted) {
    let w = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    let r = core
        .open(req("c2", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    (w, r)
}

/// Whether `mutations` delete file `id`'s record.
fn deletes_file(mutations: &[crate::store::Mutation], id: u64) -> bool {
    mutations
        .iter()
        .any(|m| matches!(m, crate::store::Mutation::DeleteFile(f) if *f == id))
}

/// A crash ("kill -9": the store keeps what was committed) and a restart at `now`.
fn crash(store: &mut MemoryStore, now: u64) -> ServerCore {
    let mut core = ServerCore::recover(config(), store.load().unwrap(), now, 7);
    store.apply(&core.take_mutations()).unwrap();
    core
}

#[test]
fn a_crash_before_a_landed_writes_count_is_committed_still_reports_the_change() {
    let (mut core, mut store) = fresh();
    let (a, b) = writer_and_reader(&mut core);
    core.attach("c2", &b.sealed).unwrap();
    store.apply(&core.take_mutations()).unwrap();

    // c1's write is checked, its bytes reach the file, it is counted: and the server dies
    // before that count's commit.
    core.check_io(a.handle, IoKind::Write, ByteRange::new(0, 1))
        .unwrap();
    core.count_io(a.handle, IoKind::Write).unwrap();
    drop(core);
    let mut core = crash(&mut store, 100);
    let r = core.attach("c2", &b.sealed).unwrap().report;
    assert!(r.changed_by_other && r.accessed_by_other, "{r:?}");
    store.apply(&core.take_mutations()).unwrap();

    // Once more after the restart: c2 has looked again, c1 resumes and writes, and the
    // server dies before the count is written.
    let a2 = core.attach("c1", &a.sealed).unwrap();
    store.apply(&core.take_mutations()).unwrap();
    core.count_io(a2.handle, IoKind::Write).unwrap();
    drop(core);
    let mut core = crash(&mut store, 200);
    let r = core.attach("c2", &b.sealed).unwrap().report;
    assert!(r.changed_by_other, "{r:?}");
}

#[test]
fn a_write_landing_after_its_open_closed_is_reported_after_a_crash_too() {
    let (mut core, mut store) = fresh();
    let (a, b) = writer_and_reader(&mut core);
    let file_id = core
        .check_io(a.handle, IoKind::Write, ByteRange::new(0, 1))
        .unwrap();
    core.close("c1", &a.sealed).unwrap();
    // A first write lands and is counted; c2 looks (both committed). A second write that
    // was on its way lands, and the server dies before its count is written.
    core.count_change(file_id);
    core.attach("c2", &b.sealed).unwrap();
    store.apply(&core.take_mutations()).unwrap();
    core.count_change(file_id);
    drop(core);
    let mut core = crash(&mut store, 100);
    let r = core.attach("c2", &b.sealed).unwrap().report;
    assert!(r.changed_by_other, "{r:?}");
}

#[test]
fn after_a_crash_a_lone_writer_and_readers_alone_are_told_nothing() {
    // A lone writer: nobody else to tell, so no mark, and nothing false after a crash.
    let (mut core, mut store) = fresh();
    let a = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    core.count_io(a.handle, IoKind::Write).unwrap();
    store.apply(&core.take_mutations()).unwrap();
    core.count_io(a.handle, IoKind::Write).unwrap();
    drop(core);
    let mut core = crash(&mut store, 100);
    assert_eq!(
        core.attach("c1", &a.sealed).unwrap().report,
        ResumeReport::default()
    );

    // Two readers: nothing can change the file, so no mark either.
    let (mut core, mut store) = fresh();
    let r1 = core
        .open(req("c1", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    let r2 = core
        .open(req("c2", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    core.attach("c1", &r1.sealed).unwrap();
    store.apply(&core.take_mutations()).unwrap();
    drop(core);
    let mut core = crash(&mut store, 100);
    for (client, g) in [("c1", &r1), ("c2", &r2)] {
        let r = core.attach(client, &g.sealed).unwrap().report;
        assert!(!r.changed_by_other, "{client}: {r:?}");
    }
}

#[test]
fn file_records_from_before_the_change_mark_still_decode() {
    let rec = FileRecord {
        access_seq: 3,
        version: 2,
        change_mark: 5,
    };
    assert_eq!(FileRecord::decode(&rec.encode()).unwrap(), rec);
    let old = [3u64.to_be_bytes(), 2u64.to_be_bytes()].concat();
    let decoded = FileRecord::decode(&old).unwrap();
    assert_eq!((decoded.version, decoded.change_mark), (2, 0));
    assert_eq!(decoded.recovered(), decoded, "no mark: the counters stand");
    assert!(FileRecord::decode(&old[..12]).is_err());
    assert!(FileRecord::decode(&[0; 25]).is_err());
    let r = rec.recovered();
    assert_eq!((r.access_seq, r.version), (4, 5));
}

#[test]
fn a_write_on_its_way_from_a_closed_open_is_reported_to_a_later_open_after_a_crash() {
    let (mut core, mut store) = fresh();
    let a = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    let (slot, file_id) = core.begin_write(a.handle, ByteRange::new(0, 1)).unwrap();
    // c1 closes while its write is on the way, and c2 opens the file: committed.
    core.close("c1", &a.sealed).unwrap();
    let b = core
        .open(req("c2", Mode::Read, ShareMode::ALL, &[]), 1)
        .unwrap();
    store.apply(&core.take_mutations()).unwrap();
    // The bytes land and are counted, and the server dies before that is written.
    assert!(core.count_io(a.handle, IoKind::Write).is_err());
    core.count_change(file_id);
    core.end_write(slot, file_id);
    drop(core);
    let mut core = crash(&mut store, 100);
    let r = core.attach("c2", &b.sealed).unwrap().report;
    assert!(r.changed_by_other, "{r:?}");

    // With nobody else: the file's state goes once the write is over, not before.
    let (mut core, _) = fresh();
    let a = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    let (slot, file_id) = core.begin_write(a.handle, ByteRange::new(0, 1)).unwrap();
    core.close("c1", &a.sealed).unwrap();
    assert!(!deletes_file(&core.take_mutations(), file_id));
    core.count_change(file_id);
    core.end_write(slot, file_id);
    assert!(deletes_file(&core.take_mutations(), file_id));
}

#[test]
fn lowered_change_marks_make_the_restart_exact_and_stay_down() {
    let (mut core, mut store) = fresh();
    let (a, b) = writer_and_reader(&mut core);
    core.count_io(a.handle, IoKind::Write).unwrap();
    core.attach("c2", &b.sealed).unwrap(); // c2 has seen the write
    core.lower_change_marks();
    // A read after the lowering writes the counters again, without holding the mark.
    core.count_io(b.handle, IoKind::Read).unwrap();
    store.apply(&core.take_mutations()).unwrap();
    drop(core);
    let mut core = crash(&mut store, 100);
    let r = core.attach("c2", &b.sealed).unwrap().report;
    assert_eq!(r, ResumeReport::default());
    let r = core.attach("c1", &a.sealed).unwrap().report;
    assert!(r.accessed_by_other && !r.changed_by_other, "{r:?}");
}

#[test]
fn a_mark_held_before_a_truncation_by_path_reports_it_after_a_crash() {
    // Readers only: no mark of their own. The server holds one before it cuts the file by
    // path, and dies after the cut, before the count is written.
    let (mut core, mut store) = fresh();
    let r1 = core
        .open(req("c1", Mode::Read, ShareMode::ALL, &[]), 0)
        .unwrap();
    core.begin_file_change(42);
    store.apply(&core.take_mutations()).unwrap();
    core.count_change(42);
    drop(core);
    let mut core = crash(&mut store, 100);
    let r = core.attach("c1", &r1.sealed).unwrap().report;
    assert!(r.changed_by_other, "{r:?}");
}

#[test]
fn a_mark_comes_down_once_no_write_can_land_unseen_and_writes_leave_nothing_behind() {
    let (mut core, mut store) = fresh();
    let (w, r) = writer_and_reader(&mut core);
    let (slot, file_id) = core.begin_write(w.handle, ByteRange::new(0, 1)).unwrap();
    core.count_io(w.handle, IoKind::Write).unwrap();
    core.end_write(slot, file_id);
    core.close("c1", &w.sealed).unwrap();
    // The reader looks (its read writes the counters): the writer is gone and nothing is on
    // its way, so the mark comes down, and a crash now tells the reader nothing.
    core.count_io(r.handle, IoKind::Read).unwrap();
    store.apply(&core.take_mutations()).unwrap();
    drop(core);
    let mut core = crash(&mut store, 100);
    assert_eq!(
        core.attach("c2", &r.sealed).unwrap().report,
        ResumeReport::default()
    );
    // The last open gone, the file's record goes too: no write kept it.
    core.close("c2", &r.sealed).unwrap();
    assert!(deletes_file(&core.take_mutations(), file_id));
}

#[test]
fn writes_on_their_way_when_their_open_expires_keep_the_mark_held() {
    let (mut core, mut store) = fresh();
    let (w, r) = writer_and_reader(&mut core);
    core.count_io(w.handle, IoKind::Write).unwrap();
    let (slot, file_id) = core.begin_write(w.handle, ByteRange::new(0, 1)).unwrap();
    // The writer's channel goes with its READ still posted, and it expires before the
    // connection's teardown counts the write.
    core.detach(w.handle, 0);
    core.handle_timeout(T);
    core.count_io(r.handle, IoKind::Read).unwrap();
    store.apply(&core.take_mutations()).unwrap();
    core.count_write(slot, file_id);
    core.end_write(slot, file_id);
    drop(core);
    let mut core = crash(&mut store, T + 100);
    let rep = core.attach("c2", &r.sealed).unwrap().report;
    assert!(rep.changed_by_other, "{rep:?}");
}

#[test]
fn an_open_with_truncation_holds_the_mark_until_its_cut_is_counted() {
    let (mut core, mut store) = fresh();
    let mut truncating = req("c1", Mode::ReadWrite, ShareMode::ALL, &[]);
    truncating.truncate = true;
    let w = core.open(truncating, 0).unwrap();
    // Closed (say, by an administrator) before its cut; a reader opens meanwhile.
    core.close("c1", &w.sealed).unwrap();
    let r = core
        .open(req("c2", Mode::Read, ShareMode::ALL, &[]), 1)
        .unwrap();
    store.apply(&core.take_mutations()).unwrap();
    // The cut lands and is counted; the server dies before that is written.
    core.count_change(42);
    core.end_write(NO_SLOT, 42);
    // Ended, the cut keeps nothing: the last close drops the file's record (not written:
    // the crash comes first).
    core.close("c2", &r.sealed).unwrap();
    assert!(deletes_file(&core.take_mutations(), 42));
    drop(core);
    let mut core = crash(&mut store, 100);
    let rep = core.attach("c2", &r.sealed).unwrap().report;
    assert!(rep.changed_by_other, "{rep:?}");
}

#[test]
fn a_write_landing_after_anothers_change_does_not_hide_it() {
    let (mut core, _) = fresh();
    let a = core
        .open(req("c1", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    let b = core
        .open(req("c2", Mode::ReadWrite, ShareMode::ALL, &[]), 0)
        .unwrap();
    core.attach("c1", &a.sealed).unwrap();
    let (slot, file_id) = core.begin_write(a.handle, ByteRange::new(0, 1)).unwrap();
    // c2 writes while c1's bytes are on their way (c1's channel may be gone by now).
    core.count_io(b.handle, IoKind::Write).unwrap();
    core.count_write(slot, file_id);
    core.end_write(slot, file_id);
    let r = core.attach("c1", &a.sealed).unwrap().report;
    assert!(r.changed_by_other && r.accessed_by_other, "{r:?}");
    // Its own write alone is no news to it.
    let a2 = core.attach("c1", &a.sealed).unwrap();
    core.count_io(a2.handle, IoKind::Write).unwrap();
    assert_eq!(
        core.attach("c1", &a.sealed).unwrap().report,
        ResumeReport::default()
    );
}
