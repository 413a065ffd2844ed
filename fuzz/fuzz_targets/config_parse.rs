//! `llmwatch::config::parse` on arbitrary text: never a panic, no unbounded allocation, and
//! every rejection says something. (llmwatch/tests/fuzz_corpus.rs replays the corpus on stable.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = llmwatch::config::parse(text) {
        assert!(!e.to_string().is_empty(), "empty error for {text:?}");
        assert!(
            !e.problems().is_empty(),
            "an invalid file names its problems: {e}"
        );
    }
});
