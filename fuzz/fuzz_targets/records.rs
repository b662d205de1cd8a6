//! Stored open records: anything that decodes must re-encode and decode equal.
#![no_main]

use handoff_core::state::records::OpenRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rec) = OpenRecord::decode(data) else {
        return;
    };
    let bytes = rec.encode().expect("a decoded record must re-encode");
    let again = OpenRecord::decode(&bytes).expect("a re-encoded record must decode");
    assert_eq!(again, rec);
    // Strict codec: the canonical encoding is the input itself.
    assert_eq!(bytes, data);
});
