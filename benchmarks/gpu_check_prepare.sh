#!/usr/bin/env bash
# Fetch the wheels the GPU check needs beyond what the GPU machine's image has.
#
#   benchmarks/gpu_check_prepare.sh                  # for the GPU machine (Python 3.12), into .whl/
#   benchmarks/gpu_check_prepare.sh --python 3.11    # for a dry run on this machine's Python
#
# The GPU machine reaches no package registry: these wheels travel with the
# working tree (carry: [".whl"], 64 MiB per call with the tree) and are
# installed there into /tmp/site by the device command in docs/benchmarks.md.
# Its image already has torch (CUDA), torchvision, tokenizers 0.23.2,
# safetensors 0.8.0, huggingface_hub 1.33.0, numpy, pillow, psutil, click,
# rich, regex, pyyaml, tqdm, typer, packaging, pytest and nvidia-ml-py. Its
# transformers (5.17.0) is older than pyproject.toml allows (its
# ColModernVBert processor crashed in a CPU try), but declares the same
# requirements as 5.24.0 but for huggingface_hub, which 1.33.0 meets. It
# lacks loguru and platformdirs. The list was built by trying: a venv with
# the image's versions, these wheels installed with the device command into
# a scratch folder, and the check's --smoke (docs/benchmarks.md); on the GPU
# machine the check's preflight names anything still missing, in seconds.
#
# Every wheel below is pure Python, so --python changes nothing today; it
# matters once a binary wheel joins the list (a cp312 build does not install
# on this machine's 3.11, so a dry run here needs --python 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

python_version=3.12
dest=.whl
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python_version=$2; shift 2 ;;
        --dest) dest=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set /p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

# name==version: what CI resolves from pyproject.toml's ranges (as of 2026-11-27).
WHEELS=(
    transformers==5.24.0
    loguru==0.7.3
    platformdirs==4.14.8
)

pip=(${PYTHON:-python3} -m pip)
rm -rf "$dest"  # one version of each: two would stop the whole install there
mkdir -p "$dest"
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dest" "${WHEELS[@]}"

mib() { awk -v b="$1" 'BEGIN { printf "%8.2f MiB", b / 1048576 }'; }
total=0
for wheel in "$dest"/*.whl; do
    size=$(stat -c %s "$wheel")
    total=$((total + size))
    echo "$(mib "$size")  $(basename "$wheel")"
done
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
echo "$(mib "$total")  in all ($(ls "$dest"/*.whl | wc -l) wheels), for Python $python_version"
echo "$(mib $((total + tree)))  with the working tree (the limit is 64 MiB per call)"
if [ $((total + tree)) -gt $((48 * 1048576)) ]; then
    echo "too large: keep the carried wheels and the tree well under 64 MiB" >&2
    exit 1
fi
