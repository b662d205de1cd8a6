//! Criterion suites for the hot code that needs no device: frame encode/decode with the
//! session MAC, resume-key seal/verify, lock-table checks among 10^4 ranges, and open-table
//! work (resume-key lookup + attach) with 10^5 opens held.
//!
//!   cargo bench -p handoff-bench --bench core            (full)
//!   cargo bench -p handoff-bench --bench core -- --test  (each once: the CI smoke)

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use handoff_core::auth::{Session, SessionKeys, Side};
use handoff_core::state::{
    ByteRange, CoreConfig, KeySealer, LockTable, Mode, OpenRequest, Quotas, ResumeKey, ServerCore,
    ShareMode,
};
use handoff_core::store::Snapshot;
use handoff_core::wire::{encode_frame, Frame, Message};

fn frames(c: &mut Criterion) {
    let keys = SessionKeys::derive(&[1; 32], &[2; 32], &[3; 32]);
    let msg = Message::RdmaRead {
        offset: 1 << 30,
        len: 2 << 20,
        addr: 0x7f00_0000_0000,
        rkey: 77,
    };
    let mut g = c.benchmark_group("frame");
    g.bench_function("encode+seal RdmaRead", |b| {
        let mut tx = Session::new(keys.clone(), Side::Client);
        let (mut payload, mut out) = (BytesMut::new(), BytesMut::new());
        b.iter(|| {
            payload.clear();
            out.clear();
            msg.encode(&mut payload).unwrap();
            let (seq, mac) = tx.seal(msg.kind(), &payload);
            encode_frame(&mut out, msg.kind(), seq, &payload, &mac).unwrap();
            black_box(out.len())
        })
    });
    g.bench_function("check+open+decode RdmaRead", |b| {
        b.iter_batched(
            || {
                let mut tx = Session::new(keys.clone(), Side::Client);
                let mut payload = BytesMut::new();
                msg.encode(&mut payload).unwrap();
                let (seq, mac) = tx.seal(msg.kind(), &payload);
                let mut out = BytesMut::new();
                encode_frame(&mut out, msg.kind(), seq, &payload, &mac).unwrap();
                (out, Session::new(keys.clone(), Side::Server))
            },
            |(buf, mut rx)| {
                let n = Frame::check(&buf).unwrap().unwrap();
                let frame = Frame::parse(&buf[..n]).unwrap();
                rx.open(&frame).unwrap();
                black_box(Message::decode(frame.kind, frame.payload).unwrap())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn resume_keys(c: &mut Criterion) {
    let sealer = KeySealer::new([9; 32]);
    let key = ResumeKey {
        file_id: 42,
        opened_at: 1_700_000_000_000,
        pid: 4242,
        slot: 7,
        nonce: 99,
    };
    let sealed = sealer.seal(&key);
    let mut g = c.benchmark_group("resume_key");
    g.bench_function("seal", |b| {
        b.iter(|| black_box(sealer.seal(black_box(&key))))
    });
    g.bench_function("verify", |b| {
        b.iter(|| black_box(sealer.open(black_box(&sealed)).unwrap()))
    });
    let mut bad = sealed;
    bad[30] ^= 1;
    g.bench_function("reject altered", |b| {
        b.iter(|| black_box(sealer.open(black_box(&bad)).is_err()))
    });
    g.finish();
}

fn locks(c: &mut Criterion) {
    let mut table = LockTable::default();
    for i in 0..10_000u64 {
        table
            .lock((i % 64) as u32, ByteRange::new(i * 100, 50).unwrap())
            .unwrap();
    }
    let mut g = c.benchmark_group("lock_table_10k");
    let hit = ByteRange::new(500_010, 10).unwrap();
    let miss = ByteRange::new(500_060, 30).unwrap();
    g.bench_function("conflict (hit)", |b| {
        b.iter(|| black_box(table.conflict(1000, black_box(hit))))
    });
    g.bench_function("conflict (miss)", |b| {
        b.iter(|| black_box(table.conflict(1000, black_box(miss))))
    });
    g.finish();
}

fn open_table(c: &mut Criterion) {
    // One client holds all 100k opens here: past the default open quota.
    let config = CoreConfig {
        quotas: Quotas {
            max_client_opens: usize::MAX,
            ..Quotas::default()
        },
        ..CoreConfig::default()
    };
    let mut core = ServerCore::recover(config, Snapshot::default(), 0, 1);
    let mut keys = Vec::new();
    for i in 0..100_000u64 {
        let g = core
            .open(
                OpenRequest {
                    client: "c1".into(),
                    path: format!("f{i}"),
                    file_id: i,
                    mode: Mode::Read,
                    share: ShareMode::ALL,
                    locks: vec![],
                    pid: 1,
                    truncate: false,
                },
                1,
            )
            .unwrap();
        core.detach(g.handle, 1);
        keys.push(g.sealed);
    }
    let _ = core.ready();
    let mut g = c.benchmark_group("open_table_100k");
    let mut i = 0usize;
    g.bench_function("verify_key", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(core.verify_key("c1", &keys[i]).unwrap())
        })
    });
    g.bench_function("attach+detach", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            let a = core.attach("c1", &keys[i]).unwrap();
            core.detach(a.handle, 2);
            black_box(core.ready().mutations.len())
        })
    });
    g.bench_function("open+close (new file)", |b| {
        let mut n = 1_000_000u64;
        b.iter(|| {
            n += 1;
            let g = core
                .open(
                    OpenRequest {
                        client: "c2".into(),
                        path: "x".into(),
                        file_id: n,
                        mode: Mode::Read,
                        share: ShareMode::ALL,
                        locks: vec![],
                        pid: 2,
                        truncate: false,
                    },
                    3,
                )
                .unwrap();
            core.close("c2", &g.sealed).unwrap();
            black_box(core.ready().mutations.len())
        })
    });
    g.finish();
}

criterion_group!(benches, frames, resume_keys, locks, open_table);
criterion_main!(benches);
