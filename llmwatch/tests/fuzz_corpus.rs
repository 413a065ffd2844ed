//! The fuzzers' inputs on stable, in every `cargo test`: each file of `fuzz/corpus/<target>`
//! (seeds and what the fuzzers kept) and of `fuzz/regressions/<target>` (inputs that once
//! crashed a fuzzer, named by the bug) goes through the same call as the fuzz target
//! (fuzz/fuzz_targets/<target>.rs), which must not panic and must stay within a memory bound,
//! measured by the counting allocator below. `cargo xtask fuzz` runs the fuzzers themselves.
//!
//! The event_decode seeds come from `regenerate_event_decode_seeds` (ignored; run it after a
//! record layout or a kind changes):
//! `cargo test -p llmwatch --test fuzz_corpus -- --ignored regenerate_event_decode_seeds`.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    io::{BufReader, Read},
    path::{Path, PathBuf},
    sync::Arc,
};

use llmwatch::{
    config::Config,
    events::{self, DecodeError},
};
use llmwatch_common::event::{self as raw, EventHeader, kind};

/// Counts the bytes live on each thread (tests run on threads of their own), and the peak.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed on to the system allocator unchanged; the counters are
// const-initialized thread locals without destructors, so touching them never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for alloc (a valid, non-zero layout) is passed on
        // unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for alloc_zeroed is passed on unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was allocated by System with this layout (every allocation goes through
        // it), as the caller guarantees for dealloc.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: ptr was allocated by System with layout, and the caller's contract for
        // realloc is passed on unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`; also returns the most bytes it had allocated at once (on this thread).
fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let v = f();
    (v, (PEAK.with(Cell::get) - start).max(0) as usize)
}

const MIB: usize = 1 << 20;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every input of a target: its corpus (which must not be empty, so nothing passes vacuously)
/// and its regressions (which may not exist yet).
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let read = |dir: PathBuf| -> Vec<(PathBuf, Vec<u8>)> {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect()
    };
    let corpus = read(fuzz_dir().join("corpus").join(target));
    assert!(
        corpus.len() >= 5,
        "fuzz/corpus/{target} has {} files; the corpus is committed with the fuzzers",
        corpus.len()
    );
    let mut all = corpus;
    all.extend(read(fuzz_dir().join("regressions").join(target)));
    all
}

fn default_config() -> Arc<Config> {
    Arc::new(llmwatch::config::parse("").unwrap())
}

// --- config_parse ------------------------------------------------------------------------

/// What fuzz_targets/config_parse.rs does with one input.
fn config_parse(data: &[u8]) {
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
}

#[test]
fn config_corpus_and_regressions_parse_without_panic_in_bounded_memory() {
    for (path, data) in inputs("config_parse") {
        let ((), peak) = peak_bytes(|| config_parse(&data));
        assert!(
            peak < 32 * MIB,
            "{}: parsing {} bytes peaked at {peak} bytes",
            path.display(),
            data.len()
        );
    }
}

#[test]
fn config_corpus_has_the_example_file_and_invalid_files() {
    let all = inputs("config_parse");
    let texts: Vec<&str> = all
        .iter()
        .filter_map(|(_, d)| std::str::from_utf8(d).ok())
        .collect();
    assert!(texts.iter().any(|t| llmwatch::config::parse(t).is_ok()));
    assert!(texts.iter().any(|t| llmwatch::config::parse(t).is_err()));
}

// --- event_decode ------------------------------------------------------------------------

/// What fuzz_targets/event_decode.rs does with one input.
fn event_decode(data: &[u8]) -> Option<u32> {
    match events::decode(data) {
        Ok(ev) => {
            serde_json::to_string(&ev).expect("a decoded event serializes");
            Some(kind_of(data))
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

fn kind_of(record: &[u8]) -> u32 {
    u32::from_ne_bytes(record[16..20].try_into().unwrap())
}

#[test]
fn event_corpus_and_regressions_decode_without_panic_in_bounded_memory() {
    for (path, data) in inputs("event_decode") {
        let (_, peak) = peak_bytes(|| event_decode(&data));
        // The largest record holds a 256-byte path and 256 bytes of argv: a few KiB at most,
        // whatever the record's length.
        assert!(
            peak < 64 << 10,
            "{}: decoding peaked at {peak} bytes",
            path.display()
        );
    }
}

#[test]
fn event_corpus_has_a_record_of_every_kind_the_decoder_knows() {
    let decoded: Vec<u32> = inputs("event_decode")
        .iter()
        .filter_map(|(_, d)| event_decode(d))
        .collect();
    for k in 0..=kind::COUNT {
        if min_len(k).is_some() {
            assert!(
                decoded.contains(&k),
                "no seed decodes as kind {k}; regenerate: cargo test -p llmwatch --test fuzz_corpus \
                 -- --ignored regenerate_event_decode_seeds"
            );
        }
    }
}

fn header(k: u32) -> EventHeader {
    let mut comm = [0u8; raw::COMM_LEN];
    comm[..6].copy_from_slice(b"python");
    EventHeader {
        ts_ns: 11_639_712_570_344,
        cgroup_id: 1,
        kind: k,
        pid: 1150,
        tid: 1151,
        uid: 1000,
        gid: 1000,
        _pad: 0,
        comm,
    }
}

/// The shortest record of kind `k` that decodes (None: a kind the decoder does not know).
fn min_len(k: u32) -> Option<usize> {
    let mut buf = events::encode(&header(k));
    buf.resize(4096, 0);
    match events::decode(&buf) {
        Err(DecodeError::UnknownKind(_)) => None,
        Err(e) => panic!("a 4 KiB record of kind {k} does not decode: {e}"),
        Ok(_) => {
            (std::mem::size_of::<EventHeader>()..=buf.len()).find(|&n| events::decode(&buf[..n]).is_ok())
        }
    }
}

/// The event_decode seeds: for every kind the decoder knows, a record of exactly its size
/// (zero-filled, and 0xff-filled: no NUL in strings, huge lengths, unknown enum values), one
/// byte short, header only, and oversized with trailing garbage; a header of an unknown kind;
/// a few realistic records built from the structs; and the empty and 1-byte records.
fn event_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = vec![
        ("empty".to_string(), Vec::new()),
        ("one_byte".to_string(), vec![3]),
        (
            "unknown_kind".to_string(),
            events::encode(&header(kind::COUNT + 100)),
        ),
    ];
    for k in 0..=kind::COUNT {
        let Some(len) = min_len(k) else {
            continue;
        };
        let name = {
            let mut buf = events::encode(&header(k));
            buf.resize(len, 0);
            let ev = events::decode(&buf).unwrap();
            format!("kind{k:02}_{}", ev.kind.name())
        };
        let hdr = events::encode(&header(k));
        let mut zeros = hdr.clone();
        zeros.resize(len, 0);
        let mut ones = hdr.clone();
        ones.resize(len, 0xff);
        let mut oversized = zeros.clone();
        oversized.extend((0..100u8).map(|i| i.wrapping_mul(37)));
        seeds.push((format!("{name}_zeros"), zeros.clone()));
        seeds.push((format!("{name}_ff"), ones));
        seeds.push((format!("{name}_truncated"), zeros[..len - 1].to_vec()));
        seeds.push((format!("{name}_header_only"), hdr));
        seeds.push((format!("{name}_oversized"), oversized));
    }
    // Realistic records: strings, argv and addresses as the kernel writes them.
    let mut path = [0u8; raw::PATH_LEN];
    path[..25].copy_from_slice(b"/models/model.safetensors");
    let mut args = [0u8; raw::ARGS_LEN];
    let argv = b"curl\0-u\0user:pass\0--data-binary\0@-\0http://10.0.0.9:8000/upload\0";
    args[..argv.len()].copy_from_slice(argv);
    let mut filename = [0u8; raw::PATH_LEN];
    filename[..13].copy_from_slice(b"/usr/bin/curl");
    seeds.push((
        "real_proc_exec_curl".into(),
        events::encode(&raw::ProcExecEvent {
            hdr: header(kind::PROC_EXEC),
            ppid: 981,
            args_len: argv.len() as u32,
            filename,
            args,
        }),
    ));
    seeds.push((
        "real_file_read_close".into(),
        events::encode(&raw::FileReadEvent {
            hdr: header(kind::FILE_READ),
            file: raw::FileId {
                dev: 0x80_0001,
                _pad: 0,
                ino: 10_649_887,
            },
            bytes: 3 << 20,
            total: 3 << 20,
            fd: 3,
            syscall: llmwatch_common::syscalls::READ as u32,
            reason: raw::read_reason::CLOSE,
            _pad: 0,
            instance: 0xffff_8881_0000_0000,
        }),
    ));
    let mut v4 = [0u8; 16];
    v4[..4].copy_from_slice(&[10, 0, 0, 9]);
    seeds.push((
        "real_net_send_v4".into(),
        events::encode(&raw::NetSendEvent {
            hdr: header(kind::NET_SEND),
            addr: v4,
            family: libc::AF_INET as u16,
            port: 8000,
            protocol: 6,
            _pad: 0,
            bytes: 1 << 20,
            total: 1 << 20,
            reason: raw::read_reason::FIRST,
            _pad2: 0,
        }),
    ));
    seeds.push((
        "real_net_connect_v6".into(),
        events::encode(&raw::NetConnectEvent {
            hdr: header(kind::NET_CONNECT),
            addr: std::net::Ipv6Addr::LOCALHOST.octets(),
            family: libc::AF_INET6 as u16,
            port: 443,
            sock_type: 1,
            _pad: 0,
            fd: 5,
            ret: -115,
        }),
    ));
    seeds.push((
        "real_file_tamper_unlink".into(),
        events::encode(&raw::FileTamperEvent {
            hdr: header(kind::FILE_TAMPER),
            file: raw::FileId::default(),
            bytes: 0,
            op: raw::tamper_op::UNLINK,
            fd: -1,
            dirfd: libc::AT_FDCWD,
            syscall: llmwatch_common::syscalls::UNLINKAT as u32,
            path,
        }),
    ));
    seeds
}

/// The committed seeds are the ones the current record layouts produce. After a layout or kind
/// change, regenerate them: `LLMWATCH_REGENERATE_SEEDS=1 cargo test -p llmwatch --test
/// fuzz_corpus event_seeds`.
#[test]
fn event_seeds_are_current() {
    let dir = fuzz_dir().join("corpus/event_decode");
    let regenerate = std::env::var("LLMWATCH_REGENERATE_SEEDS").as_deref() == Ok("1");
    if regenerate {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in event_seeds() {
        let path = dir.join(&name);
        if regenerate {
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "fuzz seed {name} is missing or stale: LLMWATCH_REGENERATE_SEEDS=1 cargo test -p llmwatch \
             --test fuzz_corpus event_seeds"
        );
    }
}

// --- replay_reader -----------------------------------------------------------------------

/// What fuzz_targets/replay_reader.rs does with one input.
fn replay_reader(input: impl std::io::BufRead, cfg: Arc<Config>) -> llmwatch::replay::ReplayStats {
    let stats = llmwatch::replay::replay(input, cfg, |a| {
        serde_json::to_string(a).expect("an alert serializes");
    })
    .expect("reading from memory cannot fail");
    assert!(stats.errors.len() as u64 <= stats.bad_lines);
    stats
}

#[test]
fn replay_corpus_and_regressions_replay_without_panic_in_bounded_memory() {
    let cfg = default_config();
    let mut events = 0;
    for (path, data) in inputs("replay_reader") {
        let (stats, peak) = peak_bytes(|| replay_reader(&data[..], cfg.clone()));
        events += stats.events;
        assert!(
            peak < 8 * MIB + 64 * data.len(),
            "{}: replaying {} bytes peaked at {peak} bytes",
            path.display(),
            data.len()
        );
    }
    assert!(events > 0, "the replay corpus holds real events");
}

#[test]
fn replay_of_a_64_mib_line_without_newline_is_one_bad_line_in_bounded_memory() {
    let cfg = default_config();
    let endless = BufReader::new(std::io::repeat(b'{').take(64 * MIB as u64));
    let (stats, peak) = peak_bytes(|| replay_reader(endless, cfg));
    assert_eq!((stats.lines, stats.bad_lines), (0, 1), "{:?}", stats.errors);
    assert!(
        stats.errors[0].starts_with("line 1: longer than"),
        "{:?}",
        stats.errors
    );
    assert!(
        peak < 2 * llmwatch::replay::MAX_LINE + MIB,
        "a 64 MiB line peaked at {peak} bytes: it was buffered"
    );
}
