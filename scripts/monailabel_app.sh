#!/usr/bin/env bash
# Lay out MONAI Label's `monaibundle` app with an exported BLO-SAM task bundle and start the server.
#
#   scripts/monailabel_app.sh <task bundle folder> <studies folder> [port] [work folder]
#
# <task bundle folder> is what `python scripts/export.py` writes (e.g. dist/lungs; `--untrained` for a
# task with no labels yet); its folder name becomes the model name. The app links to it, not a copy:
# Train (3D Slicer's button, or POST /train/<name>) writes the new weights into <task>/models/model.pt
# (plus <task>/eval and <task>/.cache), and the server uses them from the next request on.
# <studies folder> holds the images (PNG/JPEG, NIfTI); it must be writable: MONAI Label keeps its
# datastore index there and the submitted labels in <studies>/labels/final/.
# Everything else the server writes (the app copy, HOME, caches, logs) goes under [work folder]. Given,
# it is kept and reused; by default it is a new temporary folder, removed when the server stops
# (Ctrl-C, SIGTERM). After a `kill -9`, remove the leftovers: rm -rf "${TMPDIR:-/tmp}"/blosam-monailabel-*
#
# MONAI Label runs in its own environment (its numpy pin differs from the bundle's): set
# MONAILABEL_PYTHON to that environment's python (default: .monailabel-venv/bin/python, made by
#   python3 -m venv .monailabel-venv && the commands in docs/monailabel.md, step 1
# ). The server starts offline (no model zoo, no SAM2 download) with the task's trainer; set
# MONAILABEL_HOST=0.0.0.0 to listen beyond this machine (trusted networks only).
set -euo pipefail

task=$(cd "${1:?task bundle folder}" && pwd)
studies=$(cd "${2:?studies folder}" && pwd)
port=${3:-8000}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${MONAILABEL_PYTHON:-$here/.monailabel-venv/bin/python}
host=${MONAILABEL_HOST:-127.0.0.1}
name=$(basename "$task")

if [ ! -x "$python" ]; then
    echo "error: MONAI Label's python not found at $python; create .monailabel-venv (docs/monailabel.md, step 1) or set MONAILABEL_PYTHON" >&2
    exit 1
fi
if [ ! -f "$task/configs/inference.json" ]; then
    echo "error: $task is not a task bundle (no configs/inference.json); write one with python scripts/export.py" >&2
    exit 1
fi

if [ -n "${4:-}" ]; then
    mkdir -p "$4"
    work=$(cd "$4" && pwd)
    temporary=false
else
    work=$(mktemp -d -t blosam-monailabel-XXXXXX)
    temporary=true
fi
export HOME="$work/home" TMPDIR="$work/tmp" MPLCONFIGDIR="$work/mpl"
export MONAI_LABEL_DATASTORE_AUTO_RELOAD=false MONAI_LABEL_APP_DIR="$work/apps/monaibundle"
mkdir -p "$HOME" "$TMPDIR" "$MPLCONFIGDIR"

if [ ! -d "$work/apps/monaibundle" ]; then
    "$python" -m monailabel.main apps --download --name monaibundle --output "$work/apps" >/dev/null
fi
mkdir -p "$work/apps/monaibundle/model"
rm -rf "$work/apps/monaibundle/model/$name"
ln -s "$task" "$work/apps/monaibundle/model/$name"
models=$name
# The task's interactive model (a box or clicks with the fine-tuned decoder and its learnt prompt): a
# second model folder of links into the task, whose inference config is the task's interactive.json.
# Its name ends in "_deepgrow", which is how MONAI Label types a model as interactive (3D Slicer lists
# it under SmartEdit / Deepgrow); it shares the task's weights, so a training updates both.
if [ -f "$task/configs/interactive.json" ]; then
    edit="$work/apps/monaibundle/model/${name}_deepgrow"
    rm -rf "$edit"
    mkdir -p "$edit/configs"
    ln -s "$task/configs/interactive.json" "$edit/configs/inference.json"
    ln -s "$task/configs/interactive_metadata.json" "$edit/configs/metadata.json"
    ln -s "$task/models" "$edit/models"
    ln -s "$task/bundle" "$edit/bundle"
    models="$models,${name}_deepgrow"
fi

echo "MONAI Label app: $work/apps/monaibundle (models '$models', trainer '$name' -> $task); http://$host:$port" >&2
server=
stop() {
    trap - EXIT INT TERM
    if [ -n "$server" ]; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    if [ "$temporary" = true ]; then
        rm -rf "$work"
    fi
}
trap stop EXIT
trap 'stop; exit 143' TERM
trap 'stop; exit 130' INT
"$python" -m monailabel.main start_server --app "$work/apps/monaibundle" --studies "$studies" \
    --conf models "$models" --conf zoo_source local --conf sam2 false --conf skip_trainers false \
    --conf preload false --host "$host" --port "$port" &
server=$!
wait "$server"
