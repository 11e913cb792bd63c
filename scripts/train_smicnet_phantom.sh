#!/usr/bin/env bash
# Reproduce the bundled `smicnet-phantom` SMICNet weights: generate the training phantoms, then train.
#
# Runs here (.venv/bin/python) and on a bare GPU machine with only python3 + torch, numpy, matplotlib and
# SimpleITK: the packages are reached through PYTHONPATH (no pip install) and the CLI is run as a module.
#
# Environment:
#   PYTHON  interpreter (default: .venv/bin/python if present, else python3)
#   DEVICE  auto | cpu | cuda | cuda:N (default: auto)
#   JOBS    phantoms generated in parallel (default: nproc)
#   OUT     output folder (default: smicnet-phantom-training); phantoms in OUT/data, model in OUT/model
#   COUNT   number of training phantoms (default: 32)
#   TRAIN_ARGS  extra `cochlea train smicnet` options, appended (later options win; for smoke tests only)
#
# Data: COUNT cases cycling (CT, left), (CT, right), (CBCT, left), (CBCT, right); case seeds 100000 + i.
# Evaluation suites use seeds below 100000, so training and evaluation phantoms never coincide. Spacing
# and field of view are the phantom generator's default draw (0.2-0.4 mm, 34-48 mm), so the 0.3 mm
# resampling of training is exercised in both directions.
#
# Training settings (see CochleaLandmarksLib/smicnet_training.py for the method):
#   --epochs 60 --steps-per-epoch 200 --batch-size 128: at most 1.5 M augmented patches. 32 phantoms are
#     3x the authors' largest training set (11 volumes, 100 x 313 x 4 = 125 k patches); with the larger
#     batches a GPU handles easily, 60 epochs leave the cosine schedule room to settle and early stopping
#     (--patience 12 on the held-out cases' loss) ends the run once it does.
#   --lr 1e-3 (Adam, 1-epoch warm-up, cosine decay to 2e-5): the authors' rate; the warm-up protects the
#     freshly initialised BatchNorm statistics.
#   --val-fraction 0.2: 6 of 32 whole cases held out (never patches of training cases).
#   --val-samples 4096: a fixed validation set large enough for per-class F1 to +-1 %.
#   --seed 0: split, initialisation and sampling are reproducible (bit-exact on the same device type).
#   Background patches: 40 % on a 0.9-3.6 mm shell around the landmarks, 30 % on strong edges, 30 % uniform in
#     +-16 mm of the landmark centroid (the reach of the fast sweep). Without the edge share, the sweep found the
#     semicircular canals as a larger "Helicotrema" island than the real one in 12 of 24 evaluation phantoms.
#
# Reference run (one H100, `DEVICE=auto`, 5 min including the phantoms): 60 epochs, best epoch 50, held-out
# patch accuracy 0.991 (F1 Helicotrema 0.988, Modiolus base 0.990, Round Window 0.996, background 0.991).
# Fast-mode detection as it was then (21 mm cube, one view; today's figures are in the README) on 24
# evaluation phantoms (CT and CBCT, seeds 0-11): median error Helicotrema 0.73 mm, Modiolus base 0.22 mm,
# Round Window 0.14 mm; 1 gross (> 5 mm) Helicotrema miss. On a 2-core CPU a step took ~0.75 s with the reference forward (about 2.5 hours);
# training now runs SMICNet.fast_forward, about 0.24 s per step (about 50 minutes for the full run).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE="${DEVICE:-auto}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
OUT="${OUT:-smicnet-phantom-training}"
COUNT="${COUNT:-32}"
export PYTHONPATH="$PWD/CochleaCommon:$PWD/CochleaLandmarks${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA="$OUT/data"
mkdir -p "$DATA"

# SimpleITK (volume IO and resampling) is required. A bare machine without it can use a wheel placed in
# .whl/ (e.g. simpleitk-*-cp311-abi3-manylinux*.whl), unpacked into a private folder, never installed globally.
if ! "$PYTHON" -c "import SimpleITK" 2>/dev/null; then
  wheel=$(ls .whl/[Ss]imple[Ii][Tt][Kk]-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    echo "error: $PYTHON cannot import SimpleITK; install it or put a SimpleITK wheel into .whl/" >&2
    exit 2
  fi
  echo "== SimpleITK not installed: unpacking $wheel into $OUT/.pylib"
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$OUT/.pylib" "$wheel"
  export PYTHONPATH="$PYTHONPATH:$OUT/.pylib"
fi

echo "== $COUNT training phantoms (seeds 100000..$((100000 + COUNT - 1))) into $DATA, $JOBS at a time"
kinds=(ct ct cbct cbct)
sides=(left right left right)
for ((i = 0; i < COUNT; i++)); do
  echo "${kinds[i % 4]} ${sides[i % 4]} $((100000 + i))"
done | OMP_NUM_THREADS=1 xargs -P "$JOBS" -L 1 sh -c '
  [ -f "$1/phantom_$2_$4/case.json" ] && exit 0
  "$0" -m CochleaCommonLib.cli.main phantom -q --kind "$2" --side "$3" --seed "$4" --out "$1"
' "$PYTHON" "$DATA"

echo "== training smicnet-phantom on $DEVICE"
"$PYTHON" -m CochleaCommonLib.cli.main train smicnet --data "$DATA" --out "$OUT/model" \
  --model-id smicnet-phantom --model-version 1.0 \
  --epochs 60 --steps-per-epoch 200 --batch-size 128 --lr 1e-3 \
  --val-fraction 0.2 --val-samples 4096 --patience 12 --seed 0 --device "$DEVICE" ${TRAIN_ARGS:-}

echo "== done: $OUT/model/smicnet-phantom.pt, its registry entry $OUT/model/smicnet-phantom.json,"
echo "   history.csv and training_curves.png. To bundle: copy the .pt into CochleaCommon/Resources/Models/"
echo "   and add the .json entry to CochleaCommon/Resources/models.json."
