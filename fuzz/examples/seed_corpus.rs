//! Writes a small seed corpus for every fuzz target, built with the crate's own encoders:
//! `cargo run --release --example seed_corpus -- seeds` (from /work/main/fuzz).
//! The checked-in `seeds/` directory is its output; fuzz.sh passes it to libFuzzer read-only.

use std::fs;
use std::path::Path;

use bytes::BytesMut;
use handoff_core::state::records::{KeyGrant, OpenRecord, OpenStatus};
use handoff_core::state::{ByteRange, KeySealer, Mode, ResumeKey, ResumeReport, ShareMode};
use handoff_core::wire::{
    encode_frame, Endpoint, EndpointKind, ErrorCode, FileInfo, Message, OpenParams, Span, MAC_LEN,
};

fn messages() -> Vec<Message> {
    let range = ByteRange::new(5, 10).unwrap();
    let info = FileInfo { mode: Mode::ReadWrite, share: ShareMode::NONE, locks: vec![range], size: 99 };
    let report = ResumeReport { accessed_by_other: true, changed_by_other: false, reopened: true };
    vec![
        Message::Hello { version: 1, client: "c1".into(), client_nonce: [2; 32] },
        Message::Challenge { server_nonce: [1; 32], proof: [3; 32] },
        Message::Proof { proof: [3; 32] },
        Message::Welcome,
        Message::AuthFailed { message: "no".into() },
        Message::Open(OpenParams {
            path: "a/b".into(),
            mode: Mode::Read,
            share: ShareMode::ALL,
            locks: vec![range],
            create: true,
            truncate: false,
            pid: 7,
        }),
        Message::Close { key: vec![1, 2] },
        Message::Pass { key: vec![3], to: "c2".into() },
        Message::Inbox { after: 0 },
        Message::Endpoints,
        Message::Lock { key: vec![4], range, take: true },
        Message::Attach { key: vec![5] },
        Message::Read { offset: 1, len: 2 },
        Message::Write { offset: 3, len: 4 },
        Message::Flush,
        Message::Opened { key: vec![6], handle: 8, info: info.clone() },
        Message::Done,
        Message::Key { key: vec![7] },
        Message::Keys { keys: vec!["a".into(), "b".into()], next: 0 },
        Message::Goodbye { message: "idle".into() },
        Message::EndpointList {
            endpoints: vec![
                Endpoint { kind: EndpointKind::Tcp, addr: "0.0.0.0:1".into() },
                Endpoint { kind: EndpointKind::Tls, addr: "[::1]:2".into() },
            ],
            tls_fingerprint: Some([5; 32]),
        },
        Message::Attached { handle: 3, info, report },
        Message::ReadData { len: 10 },
        Message::Written { len: 11 },
        Message::RdmaReadMany {
            rkey: 4,
            items: vec![
                Span { offset: 0, len: 4096, addr: 1 << 20 },
                Span { offset: 4096, len: 4096, addr: (1 << 20) + 4096 },
            ],
        },
        Message::RdmaWriteMany { rkey: 5, items: vec![Span { offset: 9, len: 1, addr: 2 }] },
        Message::ReadMany { lens: vec![4096, 17, 0] },
        Message::Error {
            code: ErrorCode::Unknown(77),
            message: "x".into(),
            report: Some(report),
            retry_after_ms: 5,
        },
    ]
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(name), bytes).unwrap();
}

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "seeds".into());
    let dir = Path::new(&out);

    let mut stream = BytesMut::new();
    for (i, m) in messages().into_iter().enumerate() {
        let mut payload = BytesMut::new();
        m.encode(&mut payload).unwrap();
        let mut one = vec![m.kind()];
        one.extend_from_slice(&payload);
        write(dir, "message", &format!("{:02x}", m.kind()), &one);

        let mut frame = BytesMut::new();
        encode_frame(&mut frame, m.kind(), i as u64, &payload, &[0x5a; MAC_LEN]).unwrap();
        write(dir, "frame", &format!("{:02x}", m.kind()), &frame);
        stream.extend_from_slice(&frame);
    }
    write(dir, "frame", "stream", &stream);

    // The fuzz target opens with this same MAC key, so these seeds authenticate.
    let sealer = KeySealer::new([7u8; 32]);
    let key = ResumeKey { file_id: 11, opened_at: 1_700_000_000_000, pid: 4242, slot: 7, nonce: 99 };
    let sealed = sealer.seal(&key);
    write(dir, "resume_key", "sealed", &sealed);
    let mut padded = sealed.to_vec();
    padded.resize(56, 0);
    write(dir, "resume_key", "sealed_padded", &padded);
    write(dir, "resume_key", "token", sealer.to_token(&key).as_bytes());

    let rec = OpenRecord {
        slot: 3,
        file_id: 77,
        path: "a/b".into(),
        owner: "c1".into(),
        pid: 9,
        opened_at: 123,
        mode: Mode::ReadWrite,
        share: ShareMode::NONE,
        locks: vec![ByteRange::new(5, 10).unwrap()],
        seen_access: 4,
        seen_version: 2,
        status: OpenStatus::Expired,
        deadline: Some(0),
        grants: vec![KeyGrant { nonce: 1, client: "c2".into() }],
    };
    write(dir, "records", "expired", &rec.encode().unwrap());
    let live = OpenRecord { status: OpenStatus::Live, deadline: None, grants: vec![], ..rec };
    write(dir, "records", "live", &live.encode().unwrap());
    println!("seed corpus written to {}", dir.display());
}
