//! Decodes arbitrary bytes as a message (deterministic CBOR) and, when that
//! succeeds, validates it against a profile: never a panic.
#![no_main]

use konvert_envelope::cbor;
use konvert_envelope::model::{Message, Timestamp};
use konvert_envelope::profile::Profile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = cbor::from_deterministic_slice::<Message>(data, 1 << 20) {
        let p = Profile::from_toml_str(include_str!("../../deploy/profiles/kz-by-2019.toml"), "kz-by-2019")
            .expect("profile");
        let _ = p.validate(&m, Timestamp::from_unix(1_795_341_600));
        let _ = m.attachments();
    }
    let _ = serde_json::from_slice::<Message>(data);
});
