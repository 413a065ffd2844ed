//! A mapping of a weight file is judged on the pages the process touched, not on the length it
//! mapped: a header lookup through mmap (safetensors `safe_open` listing tensor names) is no
//! bulk read; touching every page is, with the touched bytes within 5% of the file size.
//! Real processes mapping a real file, the real agent (root).
use std::path::PathBuf;

use llmwatch_e2e::{Agent, TempDir, Tool, Value, bytes_until_exit, is, secs, write_safetensors};

const FDTOOL: &str = env!("CARGO_BIN_EXE_fdtool");
const SIZE: u64 = 64 * 1024 * 1024 + 12_345;

fn model(tag: &str) -> (TempDir, PathBuf, u64) {
    let dir = TempDir::new(tag);
    let path = dir.path().join("model.safetensors");
    let ino = write_safetensors(&path, SIZE as usize);
    (dir, path, ino)
}

fn touch_of(ino: u64, pid: u32) -> impl Fn(&Value) -> bool {
    move |v: &Value| is(v, "file_touch", pid) && v["file"]["ino"] == ino
}

fn bulk_read_of(pid: u32) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["rule"] == "weight.bulk_read" && v["process"]["pid"] == pid
}

fn within_5_percent(touched: u64) -> bool {
    touched.abs_diff(SIZE) * 20 <= SIZE
}

#[test]
fn a_header_lookup_through_mmap_is_not_a_bulk_read() {
    let (dir, path, ino) = model("touch-header");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let mut tool = Tool::spawn(FDTOOL, &["mmap-header", path.to_str().unwrap()]);
    tool.expect("header_bytes");
    let pid = tool.pid();
    tool.finish();
    let (touched, touches) = bytes_until_exit(&mut agent, pid, touch_of(ino, pid));
    // Mapped whole, touched a page: the kernel maps a fault-around window of small pages or,
    // where the page cache holds the file in 2 MiB folios and the mapping is PMD-aligned (ext4
    // on 6.18 after a fresh write: one 8-byte read shows `Rss: 2048 kB` in smaps), one PMD.
    // Either is far below the 64 MiB a bulk read would touch.
    const ONE_PMD: u64 = 2 << 20;
    assert!(
        touched <= ONE_PMD,
        "a header read touched {touched} bytes: {touches:#?}"
    );
    let mmap = agent
        .collect_for(secs(0), |v| is(v, "file_mmap", pid))
        .into_iter()
        .next()
        .expect("the mapping is reported");
    assert_eq!(mmap["len"], SIZE, "the mapped length is kept: {mmap}");
    // The process's exit was judged after everything it did: no bulk read alert before it.
    let alerts = agent.collect_for(secs(0), bulk_read_of(pid));
    assert!(alerts.is_empty(), "{alerts:#?}");
}

/// The paths for a process that stays alive while mapped: this kernel's choice, and smaps
/// samples alone (what kernels without the filemap fault tracepoints use), forced.
const TOUCH_PATHS: [&[&str]; 2] = [&[], &["--mmap-touch", "smaps"]];

#[test]
fn touching_every_page_of_a_mapping_is_a_bulk_read() {
    for opts in TOUCH_PATHS {
        touch_all(opts);
    }
}

fn touch_all(opts: &[&str]) {
    let (dir, path, ino) = model("touch-all");
    let mut agent = Agent::watching(&[dir.path()], opts);
    let mut tool = Tool::spawn(FDTOOL, &["mmap-all", path.to_str().unwrap(), "wait"]);
    tool.expect("touched");
    let pid = tool.pid();
    // Alive and mapped: seen touching while it runs (kernel fault counts, or smaps samples).
    let seen = agent.wait_for(secs(30), |v| {
        touch_of(ino, pid)(v) && v["total"].as_u64().is_some_and(within_5_percent)
    });
    assert!(
        seen.is_some(),
        "{opts:?}: no file_touch near the file size while mapped"
    );
    tool.finish();
    let (_, touches) = bytes_until_exit(&mut agent, pid, touch_of(ino, pid));
    let total = touches
        .iter()
        .chain(seen.iter())
        .map(|v| v["total"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(within_5_percent(total), "touched {total} of {SIZE}");
    assert!(total <= SIZE, "never more than the file: {total}");
    let alert = agent.wait_for(secs(5), bulk_read_of(pid));
    assert!(alert.is_some(), "touching every page is a bulk read");
}

/// A process that maps, touches every page and exits at once may be gone before a sample:
/// what the kernel counted of its faults is all there is. That count is a lower bound (a
/// fault that maps a whole large folio or a 2 MiB PMD counts as one page or not at all, see
/// `collector::mappings`); here it must show the process touching, never more than the file.
///
/// The agent also samples smaps on the poll tick after it sees the mapping, and when that
/// sample lands while the process is still alive it sees more than the kernel counted and is
/// reported instead (measured on 6.18 with ext4 large folios: about one run in three). Such a
/// run does not exercise the kernel's count, so the mapper is run again, up to `TRIES` times;
/// the test fails unless one run is reported by its faults.
#[test]
fn a_mapper_that_exits_at_once_is_seen_touching_by_its_faults() {
    const TRIES: usize = 8;
    let (dir, path, ino) = model("touch-quick");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let paths = agent.ready["data_paths"].clone();
    for attempt in 1..=TRIES {
        let mut tool = Tool::spawn(FDTOOL, &["mmap-all", path.to_str().unwrap()]);
        tool.expect("touched");
        let pid = tool.pid();
        tool.finish();
        let (touched, touches) = bytes_until_exit(&mut agent, pid, touch_of(ino, pid));
        assert!(touched > 0, "not seen touching (paths: {paths}): {touches:#?}");
        assert!(touched <= SIZE, "{touched}");
        if touches.iter().any(|v| v["source"] == "faults") {
            return;
        }
        eprintln!(
            "run {attempt}: an smaps sample saw the mapper alive ({touched} bytes) before the \
             kernel's count; running it again"
        );
    }
    panic!("in {TRIES} runs the kernel's fault count never reported the mapper (paths: {paths})");
}

#[test]
fn a_mapping_made_before_the_agent_started_is_followed() {
    for opts in TOUCH_PATHS {
        mapped_before(opts);
    }
}

fn mapped_before(opts: &[&str]) {
    let (dir, path, ino) = model("touch-before");
    let mut tool = Tool::spawn(FDTOOL, &["map-hold", path.to_str().unwrap()]);
    tool.expect("mapped");
    let mut agent = Agent::watching(&[dir.path()], opts);
    let seeded = &agent.ready["seeded"];
    assert!(seeded["mappings"].as_u64().unwrap() >= 1, "{seeded}");
    tool.step();
    tool.expect("touched");
    let pid = tool.pid();
    let seen = agent.wait_for(secs(30), |v| {
        touch_of(ino, pid)(v) && v["total"].as_u64().is_some_and(within_5_percent)
    });
    assert!(seen.is_some(), "{opts:?}: no file_touch near the file size");
    tool.finish();
}

/// A tmpfs mounted with `huge=always` keeps the file in 2 MiB folios and maps them as PMDs:
/// the layout large-folio page caches give weights on new kernels (ext4 since 6.16, XFS), made
/// certain. The filemap tracepoints never see a PMD being mapped; the page-table fexit
/// programs (the fast path) do. Unmounted on drop.
struct HugeTmpfs(TempDir);

impl HugeTmpfs {
    fn mount(tag: &str) -> HugeTmpfs {
        let dir = TempDir::new(tag);
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "huge=always,size=256M", "llmwatch-e2e-huge"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mount -t tmpfs -o huge=always on {:?}",
            dir.path()
        );
        HugeTmpfs(dir)
    }
}

impl Drop for HugeTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

/// The quick mapper again, on PMD-mapped pages: it touches all 64 MiB and is gone before any
/// smaps sample. Where the page-table hooks count (`data_paths.mmap_touch`), the kernel's
/// count is the whole file and the exit is a bulk read; on the tracepoint path the test says
/// how little the tracepoints saw (a known limit, README) and checks only that nothing is
/// overcounted.
#[test]
fn a_quick_mapper_of_pmd_mapped_pages_is_counted_whole_where_page_tables_are_hooked() {
    const TRIES: usize = 8;
    let fs = HugeTmpfs::mount("touch-huge");
    let path = fs.0.path().join("model.safetensors");
    let ino = write_safetensors(&path, SIZE as usize);
    let mut agent = Agent::watching(&[fs.0.path()], &[]);
    let how = agent.ready["data_paths"]["mmap_touch"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    // fexit on `do_set_pmd` counts each PMD as it is mapped, alone (before 6.6) or with
    // `set_pte_range`.
    let exact = how.contains("do_set_pmd");
    for attempt in 1..=TRIES {
        let mut tool = Tool::spawn(FDTOOL, &["mmap-all", path.to_str().unwrap(), "report-pmd"]);
        tool.expect("touched");
        let pmd_mapped: u64 = tool.expect("pmd_mapped").parse().unwrap();
        let pid = tool.pid();
        tool.finish();
        // The layout this test is about: most of the mapping in PMDs.
        assert!(
            pmd_mapped >= SIZE / 2,
            "only {pmd_mapped} bytes PMD-mapped on huge=always tmpfs"
        );
        let (touched, touches) = bytes_until_exit(&mut agent, pid, touch_of(ino, pid));
        assert!(touched <= SIZE, "never more than the file: {touched}");
        if !exact {
            eprintln!(
                "NOT counted whole on this kernel ({how}): the kernel's fault count saw {touched} \
                 of {SIZE} bytes of a PMD-mapped file touched end to end"
            );
            return;
        }
        let faults_total = touches
            .iter()
            .filter(|v| v["source"] == "faults")
            .filter_map(|v| v["total"].as_u64())
            .max();
        match faults_total {
            Some(total) => {
                assert!(
                    within_5_percent(total),
                    "the page-table hooks counted {total} of {SIZE}: {touches:#?}"
                );
                let alert = agent.wait_for(secs(5), bulk_read_of(pid));
                assert!(alert.is_some(), "touching every PMD-mapped page is a bulk read");
                return;
            }
            None => eprintln!("run {attempt}: an smaps sample saw the mapper first; running it again"),
        }
    }
    panic!("in {TRIES} runs the page-table hooks never reported the mapper ({how})");
}
