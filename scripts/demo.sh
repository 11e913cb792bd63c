#!/usr/bin/env bash
# Set everything up, then run the main job on a generated sample: a synthetic temporal-bone CT
# phantom with exact ground truth, converted between the formats a researcher uses, and a report
# of what this installation can do. Results land in demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${1:-demo-output}"
COCHLEA=.venv/bin/cochlea
mkdir -p "$OUT"

echo "== cochlea info"
"$COCHLEA" info

echo "== a CT phantom of a left temporal bone (0.3 mm, ground truth, preview PNG)"
"$COCHLEA" phantom --kind ct --seed 7 --spacing 0.3 --out "$OUT/phantom_ct" --preview

echo "== format conversions a researcher needs in batch"
"$COCHLEA" convert "$OUT/phantom_ct/volume.nrrd" "$OUT/volume.nii.gz"
"$COCHLEA" convert "$OUT/phantom_ct/landmarks.fcsv" "$OUT/landmarks.mrk.json"
"$COCHLEA" convert "$OUT/phantom_ct/landmarks.fcsv" "$OUT/landmarks_ras.fcsv" --coordinate-system RAS

echo "== done: $OUT"
ls -1 "$OUT" "$OUT/phantom_ct"
