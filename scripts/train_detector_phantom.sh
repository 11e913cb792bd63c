#!/usr/bin/env bash
# Reproduce the bundled `detector-phantom` 3D-detector weights: generate the phantoms and heads, then train.
#
# Runs on a CPU (this is how the bundled file was made: 2 cores, about 45 minutes) or a GPU (DEVICE=cuda).
#
# Environment:
#   PYTHON  interpreter (default: .venv/bin/python if present, else python3)
#   DEVICE  auto | cpu | cuda | cuda:N (default: auto)
#   JOBS    phantoms generated in parallel (default: nproc)
#   OUT     output folder (default: detector-phantom-training)
#
# Data (never the evaluation phantoms, whose seeds are below 100000):
#   * 64 temporal-bone phantoms, seeds 100000..100063 cycling (CT, left), (CT, right), (CBCT, left),
#     (CBCT, right), the generator's default draw of spacing (0.2-0.4 mm, anisotropic in 30 %), field of
#     view (34-48 mm) and pose (up to 30 deg). The first 32 are smicnet-phantom's training set.
#   * 28 head phantoms (seeds 200000..200027, CT and CBCT alternating, 0.8-1.0 mm): 14 whole heads with both
#     ears, 7 lateral crops with one ear, 7 low slabs; the list is drawn by numpy seed 5 below.
#
# Training (CochleaLandmarksLib/detector_training.py explains the method):
#   1. coarse and fine passes from the 64 phantoms: 1200 and 3000 steps, batch 6, AdamW lr 2e-3 with warm-up and
#      cosine decay, 15 % of the cases (10) held out; the weights with the smallest held-out landmark distance
#      are kept.
#   2. the global (seed-free) pass from the heads, 800 steps, keeping the local passes of step 1 (--base).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE="${DEVICE:-auto}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
OUT="${OUT:-detector-phantom-training}"
export PYTHONPATH="$PWD/CochleaCommon:$PWD/CochleaLandmarks${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT/data" "$OUT/heads"
OUT=$(cd "$OUT" && pwd)
COCHLEA=("$PYTHON" -m CochleaCommonLib.cli.main)

echo "== 64 training phantoms (seeds 100000..100063) into $OUT/data"
kinds=(ct ct cbct cbct)
sides=(left right left right)
for ((i = 0; i < 64; i++)); do
  echo "${kinds[i % 4]} ${sides[i % 4]} $((100000 + i))"
done | OMP_NUM_THREADS=1 xargs -P "$JOBS" -L 1 sh -c '
  [ -f "$1/phantom_$2_$4/case.json" ] && exit 0
  "$0" -m CochleaCommonLib.cli.main phantom -q --kind "$2" --side "$3" --seed "$4" --out "$1"
' "$PYTHON" "$OUT/data"

echo "== 28 head phantoms (seeds 200000..200027) into $OUT/heads"
"$PYTHON" - <<'PY' > "$OUT/heads.txt"
import numpy as np
rng = np.random.default_rng(5)
for i in range(28):
    kind = "ct" if i % 2 == 0 else "cbct"
    sp = float(rng.choice([0.8, 0.9, 1.0]))
    r = i % 4
    if r in (0, 1):  # whole head, both ears
        fov = (rng.uniform(190, 240), rng.uniform(200, 240), rng.uniform(120, 180))
        off = (0, rng.uniform(-15, 15), rng.uniform(-20, 20))
    elif r == 2:  # one side of the head, one ear
        fov = (rng.uniform(90, 130), rng.uniform(100, 150), rng.uniform(80, 120))
        off = (rng.choice([-1, 1]) * rng.uniform(45, 70), rng.uniform(-10, 10), rng.uniform(-10, 10))
    else:  # low, wide slab
        fov = (rng.uniform(150, 230), rng.uniform(100, 160), rng.uniform(60, 100))
        off = (0, rng.uniform(-40, 10), rng.uniform(-20, 20))
    print(kind, 200000 + i, sp, ",".join(f"{v:.0f}" for v in fov), ",".join(f"{v:.0f}" for v in off))
PY
OMP_NUM_THREADS=1 xargs -P "$JOBS" -L 1 sh -c '
  [ -f "$5/head_$1_$2/case.json" ] && exit 0
  "$0" -m CochleaCommonLib.cli.main phantom-head -q --kind "$1" --seed "$2" --spacing "$3" --fov "$4" --offset="$6" --out "$5"
' "$PYTHON" < <(awk -v out="$OUT/heads" '{print $1, $2, $3, $4, out, $5}' "$OUT/heads.txt")

echo "== training the coarse and fine passes on $DEVICE"
"${COCHLEA[@]}" train detector --data "$OUT/data" --out "$OUT/local" --model-id detector-phantom \
  --model-version 1.0 --stages coarse,fine --steps-coarse 1200 --steps-fine 3000 --batch-size 6 --lr 2e-3 \
  --val-fraction 0.15 --seed 0 --device "$DEVICE"

echo "== training the global (seed-free) pass on $DEVICE"
"${COCHLEA[@]}" train detector --heads "$OUT/heads" --base "$OUT/local/detector-phantom.pt" \
  --out "$OUT/model" --model-id detector-phantom --model-version 1.0 --stages global --steps-global 800 \
  --batch-size 6 --lr 2e-3 --val-fraction 0.15 --seed 0 --device "$DEVICE"

echo "== done: $OUT/model/detector-phantom.pt and its registry entry $OUT/model/detector-phantom.json."
echo "   To bundle: copy the .pt into CochleaCommon/Resources/Models/ and the entry into models.json."
