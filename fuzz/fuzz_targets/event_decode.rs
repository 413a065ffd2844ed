//! `llmwatch::events::decode` on arbitrary ring-buffer records (truncated, oversized, garbage):
//! never a panic, and a decoded event always serializes. (llmwatch/tests/fuzz_corpus.rs replays
//! the corpus on stable.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match llmwatch::events::decode(data) {
        Ok(ev) => {
            serde_json::to_string(&ev).expect("a decoded event serializes");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
