//! `llmwatch::replay::replay` with the default rules on an arbitrary recording: never a panic,
//! no unbounded allocation. (llmwatch/tests/fuzz_corpus.rs replays the corpus on stable.)
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use llmwatch::config::Config;

fn config() -> Arc<Config> {
    static CFG: OnceLock<Arc<Config>> = OnceLock::new();
    CFG.get_or_init(|| Arc::new(llmwatch::config::parse("").expect("the defaults parse")))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let stats = llmwatch::replay::replay(data, config(), |a| {
        serde_json::to_string(a).expect("an incident message serializes");
    })
    .expect("reading from memory cannot fail");
    assert!(stats.errors.len() as u64 <= stats.bad_lines);
});
