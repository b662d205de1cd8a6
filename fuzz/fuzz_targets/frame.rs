//! Consecutive frames in a receive buffer: check → parse → decode, advancing frame by frame.
//! Nothing here may panic, whatever the bytes.
#![no_main]

use handoff_core::wire::{Frame, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some(n)) = Frame::check(buf) {
        assert!(n > 0 && n <= buf.len(), "check returned {n} for a buffer of {}", buf.len());
        let frame = Frame::parse(&buf[..n]).expect("a frame that check() measured must parse");
        let _ = Message::decode(frame.kind, frame.payload);
        buf = &buf[n..];
    }
});
