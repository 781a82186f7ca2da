#!/usr/bin/env bash
# Issue 11's million-token run, one command, resumable: eval/million.sh [extra CasMillion options]
#   (options given first win: eval/million.sh --tokens 300000 for a smaller run)
#   ≥ 1,000,000 stories260K tokens from ../shared/datasets (SQuALITY train, then the L-Eval files), split at sentence ends
#   into documents of ≤ 384 tokens → the collection `million` in eval/million/data → CAS training of every document
#   (CasTrainer: distractor mixing, B = 20 resident, rotation through the budget manager) → the gRPC service → 200
#   questions through a gRPC client with cartridges and with RAG. Writes eval/reports/MILLION_RUN.md and
#   eval/million/run.log (progress). Rerun after an interruption (Ctrl+C, kill -9, reboot): ingestion skips what is
#   there, training resumes its job from the last rotation. Projected wall time: eval/reports/MILLION.md (hours).
# Run from anywhere. Needs ../shared/models/stories260K and ../shared/datasets beside the repository.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f CasService.sln ] || { echo "million.sh: cannot find the repository root" >&2; exit 1; }
mkdir -p eval/million
dotnet build eval/CasMillion -c Release -nologo -v q >/dev/null
# The recipe: 8 probes per chunk x 1 epoch (8 gold examples per document), lighter than cas collection train's default:
# this run measures the system at a million tokens (time per stage, store, budget, query path), not answer quality
# (cas eval collection does that on smaller collections); 32 x 2 is projected in eval/reports/MILLION.md.
dotnet eval/CasMillion/bin/Release/net10.0/CasMillion.dll "$@" --probes 8 --epochs 1 --tokens 1000000 --data-dir eval/million/data \
  --report eval/reports/MILLION_RUN.md 2> >(tee -a eval/million/run.log >&2)
