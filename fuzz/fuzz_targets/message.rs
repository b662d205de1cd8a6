//! First byte = kind, rest = payload. A message that decodes must re-encode and decode equal.
#![no_main]

use bytes::BytesMut;
use handoff_core::wire::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    let Ok(msg) = Message::decode(kind, payload) else {
        return;
    };
    assert_eq!(msg.kind(), kind);
    let mut out = BytesMut::new();
    msg.encode(&mut out).expect("a decoded message must re-encode");
    let again = Message::decode(kind, &out).expect("a re-encoded message must decode");
    assert_eq!(again, msg);
    // Strict codec: the canonical encoding is the input itself.
    assert_eq!(&out[..], payload);
});
