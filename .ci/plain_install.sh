#!/usr/bin/env bash
# A plain install runs: `pip install -c requirements.txt .` into a fresh venv (torch's closure linked in, see
# torch_overlay.py), then `topgap --help`, `topgap train --help` and a one-epoch train on a tiny synthetic set,
# outside the checkout so that nothing is imported from the source tree.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m venv "$work/venv"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
python "$repo/.ci/torch_overlay.py" "$site"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check -c "$repo/requirements.txt" "$repo" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
cd "$work"
bin="$work/venv/bin"
"$bin/python" -c 'import topgap, sys; assert "gradio" not in sys.modules; print("import topgap:", topgap.__file__)'
"$bin/topgap" --help > /dev/null
"$bin/topgap" train --help > /dev/null
"$bin/topgap" synth data --n-train 8 --n-val 4 --n-test 4 --size 32 > /dev/null
"$bin/topgap" train --data data --out family --backbone resnet18 --image-size 32 --k 4 --baseline --epochs 1 \
    --batch-size 4 --workers 0 --fpn-channels 8 > /dev/null
"$bin/topgap" info family/k4 > /dev/null
test -f family/baseline/model.safetensors
echo "plain install: topgap --help, topgap train --help and a one-epoch train ran from a fresh venv"
