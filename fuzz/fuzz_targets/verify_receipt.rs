//! Verifies arbitrary bytes as a delivery receipt: never a panic.
#![no_main]

use konvert_envelope::keys::SigningKey;
use konvert_envelope::receipt::Receipt;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    let key = KEY.get_or_init(SigningKey::generate);
    let _ = Receipt::verify(data, &key.verifying_key());
});
