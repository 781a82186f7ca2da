#!/usr/bin/env bash
# eval/reports/DATASET_EVAL.md: `cas eval collection --dataset` on small real slices of ../shared/datasets with
# stories260K. One command, from the repository root:
#   eval/dataset_eval.sh          # DOCS=2 documents of QuALITY (L-Eval) and of SQuALITY train; PROBES=4 EPOCHS=1 (a light
#                                 # training recipe); DATA=/tmp/cas-dataset-eval; further arguments go to the command
# The command splits the stories into parts that fit the model, puts them into a collection in DATA (idempotent), trains
# the missing cartridges with CasTrainer (resumable: rerun after an interruption), then asks every question that fits the
# model's context in each mode and writes the report and its PNGs into eval/reports.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCS=${DOCS:-2}; PROBES=${PROBES:-4}; EPOCHS=${EPOCHS:-1}; DATA=${DATA:-/tmp/cas-dataset-eval}
SHARED=../shared/datasets
[ -d "$SHARED" ] || { echo "error: $SHARED is not there (it holds the L-Eval and SQuALITY files)." >&2; exit 2; }
./cas eval collection --dataset "$SHARED/leval/closed/quality.jsonl,$SHARED/squality/train.jsonl" --max-documents "$DOCS" \
  --data-dir "$DATA" --train-probes "$PROBES" --train-epochs "$EPOCHS" --max-tokens 48 --depths 1,2,4 --ks 1,2,4 \
  --report eval/reports "$@"
{ echo; echo "Regenerate: \`eval/dataset_eval.sh\` (DOCS=$DOCS PROBES=$PROBES EPOCHS=$EPOCHS; the collection and its cartridges are kept in $DATA, so a rerun only evaluates)."; } >> eval/reports/DATASET_EVAL.md
