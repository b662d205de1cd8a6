//! Printed tokens and sealed resume keys from untrusted input.
#![no_main]

use handoff_core::state::resume_key::{token_to_sealed, SEALED_LEN};
use handoff_core::state::KeySealer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sealer = KeySealer::new([7u8; 32]);

    let token = String::from_utf8_lossy(data);
    if let Ok(sealed) = token_to_sealed(&token) {
        assert_eq!(sealed.len(), SEALED_LEN);
        let _ = sealer.open(&sealed);
    }

    if let Ok(key) = sealer.open(data) {
        let resealed = sealer.seal(&key);
        assert_eq!(&resealed[..], &data[..SEALED_LEN], "re-sealing an opened key changed it");
    }
});
