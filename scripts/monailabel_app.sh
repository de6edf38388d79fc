#!/usr/bin/env bash
# Lay out MONAI Label's `monaibundle` app with an exported BLO-SAM task bundle and start the server.
#
#   scripts/monailabel_app.sh <task bundle folder> <studies folder> [port] [work folder]
#
# <task bundle folder> is what `python scripts/export.py` writes (e.g. dist/kvasir_4shot); its folder
# name becomes the model name. <studies folder> holds the images to segment (PNG/JPEG, NIfTI); it
# must be writable (MONAI Label keeps its datastore index there). Everything else the server writes
# (the app copy, HOME, caches, logs) goes under [work folder] (default: a new temporary folder).
#
# MONAI Label runs in its own environment (its numpy pin differs from the bundle's): set
# MONAILABEL_PYTHON to that environment's python (default: .monailabel-venv/bin/python, made by
#   python3 -m venv .monailabel-venv && the commands in docs/monailabel.md, step 2
# ). The server starts offline: no model zoo, no SAM2 download, no trainers.
set -euo pipefail

task=$(cd "${1:?task bundle folder}" && pwd)
studies=$(cd "${2:?studies folder}" && pwd)
port=${3:-8000}
work=${4:-$(mktemp -d -t blosam-monailabel-XXXXXX)}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${MONAILABEL_PYTHON:-$here/.monailabel-venv/bin/python}
name=$(basename "$task")

mkdir -p "$work"
work=$(cd "$work" && pwd)
export HOME="$work/home" TMPDIR="$work/tmp" MPLCONFIGDIR="$work/mpl"
export MONAI_LABEL_DATASTORE_AUTO_RELOAD=false MONAI_LABEL_APP_DIR="$work/apps/monaibundle"
mkdir -p "$HOME" "$TMPDIR" "$MPLCONFIGDIR"

if [ ! -d "$work/apps/monaibundle" ]; then
    "$python" -m monailabel.main apps --download --name monaibundle --output "$work/apps" >/dev/null
fi
rm -rf "$work/apps/monaibundle/model/$name"
mkdir -p "$work/apps/monaibundle/model"
cp -r "$task" "$work/apps/monaibundle/model/$name"

echo "MONAI Label app: $work/apps/monaibundle (model '$name'); http://127.0.0.1:$port" >&2
exec "$python" -m monailabel.main start_server --app "$work/apps/monaibundle" --studies "$studies" \
    --conf models "$name" --conf zoo_source local --conf sam2 false --conf skip_trainers true \
    --conf preload false --host 127.0.0.1 --port "$port"
