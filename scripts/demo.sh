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

echo "== a CT phantom of a left temporal bone (0.3 mm, exact ground truth, preview PNG)"
"$COCHLEA" phantom --kind ct --seed 7 --spacing 0.3 --side left --out "$OUT" --preview --meshes
CASE="$OUT/phantom_ct_00007"

echo "== landmarks from the phantom's rough seed click (SMICNet, bundled smicnet-phantom weights, CPU)"
"$COCHLEA" landmarks "$CASE/phantom_ct_00007.nrrd" --seed "$CASE/phantom_ct_00007_seed.fcsv" --out "$OUT/landmarks" \
  --device cpu
"$COCHLEA" convert "$OUT/landmarks/landmarks.fcsv" "$OUT/landmarks/landmarks_ras.fcsv" --coordinate-system RAS
echo "   ground truth: $CASE/phantom_ct_00007_landmarks.fcsv; report: $OUT/landmarks/report.json"

echo "== the same with the 3D detector (bundled detector-phantom weights, CPU): seeded, then without any seed"
"$COCHLEA" landmarks "$CASE/phantom_ct_00007.nrrd" --method detector --seed "$CASE/phantom_ct_00007_seed.fcsv" \
  --out "$OUT/landmarks-detector" --device cpu
"$COCHLEA" landmarks "$CASE/phantom_ct_00007.nrrd" --method detector --out "$OUT/landmarks-seed-free" --device cpu
echo "   seed-free summary: $OUT/landmarks-seed-free/ears.json"

echo "== format conversions a researcher needs in batch"
"$COCHLEA" convert "$CASE/phantom_ct_00007.nrrd" "$OUT/volume.nii.gz"
"$COCHLEA" convert "$CASE/phantom_ct_00007_landmarks.fcsv" "$OUT/landmarks.mrk.json"
"$COCHLEA" convert "$CASE/phantom_ct_00007_landmarks.fcsv" "$OUT/landmarks_ras.fcsv" --coordinate-system RAS
"$COCHLEA" convert "$CASE/meshes/scala_tympani.vtk" "$OUT/scala_tympani.stl"

echo "== done: $OUT"
ls -1 "$OUT" "$CASE"
echo "Open $CASE/preview.png, or load $CASE/phantom_ct_00007.nrrd with $OUT/landmarks/landmarks.fcsv, the"
echo "probability_*.nrrd maps and the ground truth $CASE/phantom_ct_00007_landmarks.fcsv in Slicer."
