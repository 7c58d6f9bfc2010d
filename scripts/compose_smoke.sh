#!/usr/bin/env bash
# Compose smoke test: the documented docker-compose path, for real, on the CPU image.
#
#   bash scripts/compose_smoke.sh            # as root (CI runs it from .ci/run)
#
# 1. installs docker.io, docker-compose, debootstrap and iptables (apt) when missing;
# 2. starts dockerd by hand unless an engine already answers (then it is used and left running);
# 3. builds the local base images (docker/build-base.sh) when missing, then the compose images
#    with the classic builder (DOCKER_BUILDKIT=0: Debian's docker.io has no buildx);
# 4. checks that a model which cannot load stops the container at once (exit 2, reason in the log);
# 5. `up -d` with a generated env file (random API key and Orthanc password, free 127.0.0.1 ports),
#    waits until msdn is healthy, POSTs the sample series with the key (and once without: 401),
#    stores the sample in the compose Orthanc and segments it through /v1/pacs/segment (the SEG
#    must land in Orthanc);
# 6. `down -v`, stops the dockerd it started by PID and restores the network state it found
#    (iptables rules, bridges, ip_forward).
#
# Exit 0 with "SKIPPED: no docker engine" only when the engine itself cannot run here (dockerd does
# not start, or cannot start a container: missing kernel features or privileges). Any failure after
# that (build, health, request, SEG) exits non-zero. Timings go to stdout as a table.
#   SMOKE_GPU_IMAGE=1      also build the GPU image (--target gpu; pulls ~3 GB of CUDA wheels, not in CI),
#                          run scripts/check_gpu_libs.py inside it and check that MSDN_PROVIDERS=cuda
#                          without a GPU stops it with exit 2 and the reason
#   SMOKE_KEEP_DOCKERD=1   leave a dockerd this script started running (faster reruns by hand)
#   SMOKE_LOG_DIR=DIR      where dockerd's and the containers' logs go (default: a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROJECT=msdn-smoke
LOG_DIR=${SMOKE_LOG_DIR:-$(mktemp -d /tmp/msdn-compose-smoke.XXXXXX)}
mkdir -p "$LOG_DIR"
ENV_FILE=$LOG_DIR/smoke.env
PYTHON_IMAGE=${PYTHON_IMAGE:-msdn-local/python:3.11-slim-bookworm}
DEBIAN_IMAGE=${DEBIAN_IMAGE:-msdn-local/debian:bookworm-slim}
SERVICE_IMAGE=msdn/service:0.1.0
T0=$(date +%s)
TIMINGS=()
STARTED_DOCKERD_PID=
COMPOSE_UP=0
gpu_size=

log() { echo "[compose-smoke $(date +%H:%M:%S)] $*"; }
stamp() { TIMINGS+=("| $1 | $(($(date +%s) - $2)) s |"); }
fail() {
  echo "compose smoke: FAILED: $*" >&2
  exit 1
}

skip() {
  cat <<MSG

############################################################################
#  compose smoke test SKIPPED: no docker engine
#  $1
#  (dockerd log: $LOG_DIR/dockerd.log)
############################################################################
SKIPPED: no docker engine
MSG
  exit 0
}

net_snapshot() {  # net_snapshot FILE: the network state dockerd changes
  {
    echo "## ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
    ip -o link show | awk -F': ' '{print "## link " $2}' | sed 's/@.*//'
    iptables-save 2>/dev/null | sed -e '/^#/d' -e 's/\[[0-9]*:[0-9]*\]//' || true
  } > "$1"
}

restore_network() {
  local before=$LOG_DIR/net-before.txt
  [ -f "$before" ] || return 0
  # Bridges dockerd made (docker0, br-<id> of compose networks) that were not there before; their
  # veths went with the containers (other veths on the machine are not ours to touch).
  local link
  for link in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    if ! grep -qx "## link $link" "$before" && [[ $link == docker0 || $link == br-* ]]; then
      ip link delete "$link" 2>/dev/null || true
    fi
  done
  # iptables: back to the saved rules; tables that were empty before are flushed and their chains removed.
  local table
  for table in filter nat mangle raw; do
    if ! grep -q "^\*$table" "$before"; then
      iptables -t "$table" -F 2>/dev/null || true
      iptables -t "$table" -X 2>/dev/null || true
      # iptables-nft leaves the (now empty) table behind; nft, where installed, removes it.
      if command -v nft > /dev/null; then nft delete table ip "$table" 2>/dev/null || true; fi
    fi
  done
  if grep -q '^\*' "$before"; then
    grep -v '^## ' "$before" | iptables-restore || log "warning: iptables-restore failed"
  else
    iptables -P FORWARD ACCEPT 2>/dev/null || true
  fi
  sysctl -qw "net.ipv4.ip_forward=$(sed -n 's/^## ip_forward //p' "$before")" || true
  net_snapshot "$LOG_DIR/net-after.txt"
  # Empty built-in chains with ACCEPT policies are what "no rules" looks like once a table exists.
  if diff <(grep -v -E '^(\*|COMMIT|:(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ACCEPT)' "$before") \
    <(grep -v -E '^(\*|COMMIT|:(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ACCEPT)' "$LOG_DIR/net-after.txt") \
    > "$LOG_DIR/net-diff.txt"; then
    log "network state restored (ip_forward, links, iptables as before)"
  else
    log "warning: network state differs from before:"
    cat "$LOG_DIR/net-diff.txt"
  fi
}

cleanup() {
  local status=$?
  set +e
  if [ "$COMPOSE_UP" = 1 ]; then
    compose logs --no-color > "$LOG_DIR/compose.log" 2>&1
    if [ "$status" != 0 ]; then
      echo "---- last container logs ----"
      tail -n 60 "$LOG_DIR/compose.log"
    fi
    compose down -v --remove-orphans > "$LOG_DIR/down.log" 2>&1
  fi
  docker rm -f "$PROJECT-badmodel" > /dev/null 2>&1
  if [ -n "$STARTED_DOCKERD_PID" ] && [ "${SMOKE_KEEP_DOCKERD:-0}" != 1 ]; then
    log "stopping dockerd (pid $STARTED_DOCKERD_PID)"
    kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null; then
      log "dockerd did not stop in 30 s: SIGKILL"
      kill -KILL "$STARTED_DOCKERD_PID" 2>/dev/null
    fi
    restore_network
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'echo "compose smoke: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

compose() {
  DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0 docker-compose -p "$PROJECT" --env-file "$ENV_FILE" "$@"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- 1. tools --------------------------------------------------------------------------------
t=$(date +%s)
missing=()
for pair in dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap iptables:iptables curl:curl; do
  command -v "${pair%%:*}" > /dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -q > "$LOG_DIR/apt.log" 2>&1 || { cat "$LOG_DIR/apt.log"; fail "apt-get update"; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >> "$LOG_DIR/apt.log" 2>&1 || { tail -n 30 "$LOG_DIR/apt.log"; fail "apt-get install ${missing[*]}"; }
fi
stamp "tools (apt)" "$t"

# ---- 2. engine -------------------------------------------------------------------------------
t=$(date +%s)
if docker info > /dev/null 2>&1; then
  log "using the docker engine that is already running"
else
  [ "$(id -u)" = 0 ] || skip "not root: cannot start dockerd"
  net_snapshot "$LOG_DIR/net-before.txt"
  log "starting dockerd (log $LOG_DIR/dockerd.log)"
  dockerd > "$LOG_DIR/dockerd.log" 2>&1 &
  STARTED_DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    docker info > /dev/null 2>&1 && break
    kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  if ! docker info > /dev/null 2>&1; then
    tail -n 20 "$LOG_DIR/dockerd.log"
    skip "dockerd did not start (exit or no answer within 60 s; kernel features or privileges missing?)"
  fi
fi
stamp "engine start" "$t"

# ---- 3. images -------------------------------------------------------------------------------
t=$(date +%s)
if ! docker image inspect "$PYTHON_IMAGE" "$DEBIAN_IMAGE" > /dev/null 2>&1; then
  log "building the local base images (debootstrap)"
  ca_dir=
  compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null && ca_dir=/usr/local/share/ca-certificates
  EXTRA_CA_DIR=$ca_dir PYTHON_TAG=$PYTHON_IMAGE DEBIAN_TAG=$DEBIAN_IMAGE bash docker/build-base.sh \
    > "$LOG_DIR/build-base.log" 2>&1 || { tail -n 30 "$LOG_DIR/build-base.log"; fail "docker/build-base.sh"; }
fi
stamp "base images" "$t"
if ! docker run --rm --network none "$DEBIAN_IMAGE" true > "$LOG_DIR/probe.log" 2>&1; then
  cat "$LOG_DIR/probe.log"
  skip "the engine is up but cannot run a container (runtime, cgroups or mounts refused here)"
fi

KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
ORTHANC_PW=$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')
HTTP_PORT=$(free_port)
ORTHANC_PORT=$(free_port)
DICOM_PORT=$(free_port)
cat > "$ENV_FILE" <<ENV
MSDN_API_KEYS=["$KEY"]
ORTHANC_PASSWORD=$ORTHANC_PW
MSDN_MODEL_DIR=./models
MSDN_HTTP_PORT=$HTTP_PORT
ORTHANC_HTTP_PORT=$ORTHANC_PORT
ORTHANC_DICOM_PORT=$DICOM_PORT
PYTHON_IMAGE=$PYTHON_IMAGE
DEBIAN_IMAGE=$DEBIAN_IMAGE
ENV

# Leftovers of an interrupted earlier run.
compose down -v --remove-orphans > /dev/null 2>&1 || true
docker rm -f "$PROJECT-badmodel" "$PROJECT-gpu-nocuda" > /dev/null 2>&1 || true

t=$(date +%s)
log "docker-compose build (classic builder)"
compose build > "$LOG_DIR/build.log" 2>&1 || { tail -n 40 "$LOG_DIR/build.log"; fail "docker-compose build"; }
stamp "compose build" "$t"
size=$(docker image inspect --format '{{.Size}}' "$SERVICE_IMAGE")
log "service image $SERVICE_IMAGE: $((size / 1000000)) MB"

# ---- 4. a model that cannot load stops the container at once ----------------------------------
t=$(date +%s)
docker run -d --name "$PROJECT-badmodel" --read-only --tmpfs /tmp -v "$ROOT/models:/models:ro" \
  -e MSDN_MODEL_PATH=/models/no-such-model.onnx "$SERVICE_IMAGE" > /dev/null
code=$(timeout 120 docker wait "$PROJECT-badmodel") || fail "a missing model did not stop the container within 120 s"
docker logs "$PROJECT-badmodel" > "$LOG_DIR/badmodel.log" 2>&1
[ "$code" = 2 ] || { cat "$LOG_DIR/badmodel.log"; fail "a missing model: exit code $code, expected 2"; }
grep -q "no-such-model.onnx does not exist" "$LOG_DIR/badmodel.log" \
  || { cat "$LOG_DIR/badmodel.log"; fail "a missing model: the log does not say why"; }
docker rm "$PROJECT-badmodel" > /dev/null
stamp "bad model -> exit 2" "$t"

if [ "${SMOKE_GPU_IMAGE:-0}" = 1 ]; then
  t=$(date +%s)
  log "building the GPU image (target gpu)"
  DOCKER_BUILDKIT=0 docker build -f docker/Dockerfile --target gpu --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
    -t msdn/service-gpu:0.1.0 . > "$LOG_DIR/build-gpu.log" 2>&1 || { tail -n 40 "$LOG_DIR/build-gpu.log"; fail "GPU image build"; }
  gpu_size=$(docker image inspect --format '{{.Size}}' msdn/service-gpu:0.1.0)
  log "GPU image msdn/service-gpu:0.1.0: $((gpu_size / 1000000)) MB"
  docker run --rm --read-only --entrypoint python -v "$ROOT/scripts:/scripts:ro" msdn/service-gpu:0.1.0 \
    /scripts/check_gpu_libs.py | tee "$LOG_DIR/gpu-libs.txt" || fail "CUDA provider libraries in the GPU image"
  docker run --name "$PROJECT-gpu-nocuda" --read-only --tmpfs /tmp -v "$ROOT/models:/models:ro" \
    -e MSDN_PROVIDERS=cuda msdn/service-gpu:0.1.0 > "$LOG_DIR/gpu-nocuda.log" 2>&1 && code=0 || code=$?
  docker rm "$PROJECT-gpu-nocuda" > /dev/null
  [ "$code" = 2 ] && grep -q "asks for cuda but it cannot run here" "$LOG_DIR/gpu-nocuda.log" \
    || { cat "$LOG_DIR/gpu-nocuda.log"; fail "GPU image with MSDN_PROVIDERS=cuda and no GPU: exit $code"; }
  stamp "GPU image: build, libraries, no silent CPU" "$t"
fi

# ---- 5. up, healthy, requests ----------------------------------------------------------------
t=$(date +%s)
COMPOSE_UP=1
compose up -d > "$LOG_DIR/up.log" 2>&1 || { cat "$LOG_DIR/up.log"; fail "docker-compose up"; }
msdn_id=$(compose ps -q msdn)
[ -n "$msdn_id" ] || fail "no msdn container"
health=
for _ in $(seq 1 180); do
  health=$(docker inspect --format '{{.State.Health.Status}}' "$msdn_id" 2>/dev/null || echo gone)
  [ "$health" = healthy ] && break
  state=$(docker inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$msdn_id" 2>/dev/null || echo gone)
  case $state in exited* | dead* | gone) fail "msdn container stopped ($state)" ;; esac
  sleep 1
done
[ "$health" = healthy ] || fail "msdn not healthy after 180 s (last: $health)"
stamp "up -> msdn healthy" "$t"

t=$(date +%s)
URL=http://127.0.0.1:$HTTP_PORT
files=()
for f in samples/chest_case/*.dcm; do files+=(-F "dicom=@$f"); done
status=$(curl -s -o /dev/null -w '%{http_code}' "${files[@]}" "$URL/segment")
[ "$status" = 401 ] || fail "POST /segment without the key answered $status, expected 401"
curl -sS -f -H "X-API-Key: $KEY" "${files[@]}" -F reference=@samples/chest_case_mask.nii.gz \
  -F 'boxes=[{"box": [96, 136, 27, 106, 145, 38]}, {"box": [29, 92, 12, 46, 102, 29]}]' \
  "$URL/segment" -o "$LOG_DIR/segment.json" || fail "POST /segment with the key"
python3 - "$LOG_DIR/segment.json" <<'PY' || fail "POST /segment answer"
import json, sys
answer = json.load(open(sys.argv[1]))
dice = answer["metrics"]["overall"]["dice"]
print(f"[compose-smoke] /segment: Dice {dice:.3f} against the sample's reference mask")
assert dice > 0.3, dice  # the committed default model scores 0.60 with the two box prompts; a broken path ~0
PY
curl -sS -f -H "X-API-Key: $KEY" "$URL/v1/model" -o "$LOG_DIR/model.json" || fail "GET /v1/model"
python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print("[compose-smoke] /v1/model:", m["file"], m["providers"], m.get("precision"))' "$LOG_DIR/model.json"
stamp "POST /segment (sample, key)" "$t"

t=$(date +%s)
ORTHANC=http://127.0.0.1:$ORTHANC_PORT
for f in samples/chest_case/*.dcm; do
  curl -sS -f -u "msdn:$ORTHANC_PW" -X POST -H 'Content-Type: application/dicom' --data-binary "@$f" \
    "$ORTHANC/instances" -o "$LOG_DIR/stored.json" || fail "storing $f in Orthanc"
done
# The study and series UIDs, as Orthanc read them from the files (stdlib only: no pydicom needed).
orthanc_tag() {  # orthanc_tag LEVEL ORTHANC_ID TAG
  curl -sS -f -u "msdn:$ORTHANC_PW" "$ORTHANC/$1/$2" \
    | python3 -c "import json, sys; print(json.load(sys.stdin)['MainDicomTags']['$3'])"
}
read -r study_id series_id < <(python3 -c 'import json, sys; a = json.load(open(sys.argv[1])); print(a["ParentStudy"], a["ParentSeries"])' "$LOG_DIR/stored.json")
study=$(orthanc_tag studies "$study_id" StudyInstanceUID) || fail "reading the study UID from Orthanc"
series=$(orthanc_tag series "$series_id" SeriesInstanceUID) || fail "reading the series UID from Orthanc"
curl -sS -f -H "X-API-Key: $KEY" -H 'Content-Type: application/json' "$URL/v1/pacs/segment" \
  -d "{\"study_uid\": \"$study\", \"series_uid\": \"$series\", \"store_result\": true, \"format\": \"json\"}" \
  -o "$LOG_DIR/pacs_segment.json" || fail "POST /v1/pacs/segment"
seg_series=$(python3 -c 'import json, sys; a = json.load(open(sys.argv[1])); assert a["stored"] and a["instances"] == 40, a; print(a["seg_series_uid"])' "$LOG_DIR/pacs_segment.json") \
  || fail "POST /v1/pacs/segment answer: $(cat "$LOG_DIR/pacs_segment.json")"
curl -sS -f -u "msdn:$ORTHANC_PW" -X POST -H 'Content-Type: application/json' "$ORTHANC/tools/find" \
  -d "{\"Level\": \"Series\", \"Query\": {\"SeriesInstanceUID\": \"$seg_series\", \"Modality\": \"SEG\"}}" \
  -o "$LOG_DIR/orthanc_find.json" || fail "Orthanc /tools/find"
python3 -c 'import json, sys; assert len(json.load(open(sys.argv[1]))) == 1' "$LOG_DIR/orthanc_find.json" \
  || fail "the SEG series $seg_series is not in Orthanc"
log "/v1/pacs/segment: SEG series $seg_series stored in the compose Orthanc"
stamp "PACS segment + SEG in Orthanc" "$t"

compose logs --no-color > "$LOG_DIR/compose.log" 2>&1 || true
grep -qE "INFO service\.model: model .+ loaded from /models/" "$LOG_DIR/compose.log" || fail "the service's own log lines are not in the container log"
t=$(date +%s)
compose down -v --remove-orphans > "$LOG_DIR/down.log" 2>&1 || { cat "$LOG_DIR/down.log"; fail "docker-compose down -v"; }
COMPOSE_UP=0
stamp "down -v" "$t"

stamp "total" "$T0"
echo
echo "| compose smoke step | time |"
echo "| --- | --- |"
printf '%s\n' "${TIMINGS[@]}"
echo
echo "compose smoke: PASSED (service image $((size / 1000000)) MB${gpu_size:+, GPU image $((gpu_size / 1000000)) MB}; logs in $LOG_DIR)"
