#!/usr/bin/env bash
# Issue 27: the method lab's claims re-run at 8 seeds (t intervals over seeds), resumable: run it again after any
# stop and it continues where it stopped (the teacher job, the export and every arm × seed resume or are skipped).
# Order: the learned lab teacher (8,000 steps, ~2.3 h on one core), then at 300 updates × 8 seeds the claim arms and
# the symmetric-SC arms (56 runs × 10-17 min, two at a time: ~6 h of the two cores; the runner does the claim arms
# first) and the λ_SC dose response with its per-update SC/DMD gradient cosine (sc0, sc2, sc20, sc2-sym: ~4 h more),
# then which defect SC lowers (experiments/lab_sc_triplets.py, ~0.5 h) and the mechanism table of the λ arms
# (experiments/lab_sc_mechanism.py), then dmd, salt and salt-sym continued to
# 1,000 updates, then dmd and salt (8 seeds) to 2,000 and on to 3,000. The exact-real-score pair (dmd-exact,
# salt-exact) runs at 300 updates after the mechanism tables. Hours of the two cores (measured: 3.5-4 s per update
# with two one-thread jobs): the 300-update stage ~14, the triplets and the mechanism 1, 1,000 updates ~9, 2,000 ~8.5,
# 3,000 ~8.5.
# Usage (from the repository root):
#   [WORKERS=1] nohup bash experiments/lab_8seeds.sh > runs/lab-8seeds.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -m comfyui_salt teacher --world lab:default --mode bidirectional --eval-cfg 1 \
    --threads 1 --total-steps 8000 --checkpoint-every 100 --eval-every 500 --out runs/lab-teacher
[ -f runs/lab_teacher.safetensors ] || \
    $PY -m comfyui_salt export-teacher --run runs/lab-teacher --out runs/lab_teacher.safetensors
$PY experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp8 \
    --arms dmd,salt,sc-dmd,bidir-dmd,bidir-sc-dmd,salt-sym,salt-sym2,sc0,sc2,sc20,sc2-sym --seeds 8 --updates 300 \
    --workers "${WORKERS:-2}"
# which defect SC lowers: the SC arms and their references on the triplets L_SC trains and on defect8's (the
# dose-response table, t intervals over seeds); each run's measurement is cached in its folder, so two processes
# fill them (~40 s each on one core), then the table is printed from them and the measurements are kept beside the
# evaluations
TRIP="$PY experiments/lab_sc_triplets.py --out runs/lab-exp8 --threads 1"
$TRIP --arms dmd,sc0,sc-dmd,sc2,salt > /dev/null & half=$!
$TRIP --arms sc20,sc2-sym,bidir-dmd,bidir-sc-dmd > /dev/null || { kill "$half"; exit 1; }
wait "$half"                                        # its exit status: a failed half stops the pipeline (set -e)
{ echo "Command: \`$TRIP --table --export experiments/results/lab-exp8\`" \
       "($(date -u +%F), $(git rev-parse --short HEAD))"
  echo; $TRIP --table --export experiments/results/lab-exp8; } > experiments/results/lab_sc_triplets_8seeds.md.tmp
mv experiments/results/lab_sc_triplets_8seeds.md.tmp experiments/results/lab_sc_triplets_8seeds.md
# the mechanism of the λ response: the SC target against the exact map per triplet, for the λ arms, after 100, 200
# and 300 updates (their milestone checkpoints; docs/method_lab.md)
MECH="$PY experiments/lab_sc_mechanism.py --clips 16 --flow-steps 32 --threads 1 --at-updates 100,200"
MECH_WARM="$MECH --runs"
MECH="$MECH --runs runs/lab-exp8/ode-causal"
MECH="$MECH $(echo runs/lab-exp8/{sc0,sc-dmd,sc2,sc20,sc2-sym}/seed{0..7})"   # sc-dmd (λ 0.2): no milestones
# each run's measurements are cached in its folder: fill the caches on both cores (seeds 0-3 and 4-7, ~30 s each
# on one core), then the command below prints the table from them
$MECH_WARM runs/lab-exp8/{sc0,sc-dmd,sc2,sc20,sc2-sym}/seed{0..3} > /dev/null & half=$!
$MECH_WARM runs/lab-exp8/{sc0,sc-dmd,sc2,sc20,sc2-sym}/seed{4..7} > /dev/null || { kill "$half"; exit 1; }
wait "$half"
{ echo "Command: \`$MECH\` ($(date -u +%F), $(git rev-parse --short HEAD))"; echo; $MECH; } \
    > experiments/results/lab_sc_mechanism_8seeds.md.tmp
mv experiments/results/lab_sc_mechanism_8seeds.md.tmp experiments/results/lab_sc_mechanism_8seeds.md
# the same arms' per-update SC/DMD gradient probes over training (from metrics.jsonl; seconds)
PROBES="$PY experiments/lab_grad_probes.py --out runs/lab-exp8 --arms sc-dmd,sc2,sc20,sc2-sym,salt,salt-sym,salt-sym2"
{ echo "Command: \`$PROBES\` ($(date -u +%F), $(git rev-parse --short HEAD))"; echo; $PROBES; } \
    > experiments/results/lab_grad_probes_8seeds.md
# the exact-real-score pair at 300 updates, 8 seeds (16 runs, ~2.5 h of the two cores)
$PY experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp8 \
    --arms dmd-exact,salt-exact --seeds 8 --updates 300 --workers "${WORKERS:-2}"
# the 300-update evaluations kept in the repository, and the verdicts so far (rewritten after each budget)
$PY experiments/lab_experiment.py --out runs/lab-exp8 --table --compact --export experiments/results/lab-exp8
$PY experiments/lab_verdicts.py --write experiments/results/lab_verdicts_8seeds.md
$PY experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp8-long \
    --extend-from runs/lab-exp8 --arms dmd,salt,salt-sym --seeds 8 --updates 1000 --workers "${WORKERS:-2}"
$PY experiments/lab_experiment.py --out runs/lab-exp8-long --table --compact \
    --export experiments/results/lab-exp8-long \
    --compare-to runs/lab-exp8
$PY experiments/lab_verdicts.py --write experiments/results/lab_verdicts_8seeds.md
# the longer budgets for the DMD vs Salt pair (issue 27), every one at 8 seeds: 2,000 updates continued from the
# 1,000-update runs, then 3,000 continued from those (~8.5 h of both cores each; rerun to resume)
$PY experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp8-2k \
    --extend-from runs/lab-exp8-long --arms dmd,salt --seeds 8 --updates 2000 --workers "${WORKERS:-2}"
$PY experiments/lab_experiment.py --out runs/lab-exp8-2k --table --compact --export experiments/results/lab-exp8-2k \
    --compare-to runs/lab-exp8-long
$PY experiments/lab_verdicts.py --write experiments/results/lab_verdicts_8seeds.md
$PY experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp8-3k \
    --extend-from runs/lab-exp8-2k --arms dmd,salt --seeds 8 --updates 3000 --workers "${WORKERS:-2}"
$PY experiments/lab_experiment.py --out runs/lab-exp8-3k --table --compact --export experiments/results/lab-exp8-3k \
    --compare-to runs/lab-exp8-2k
# the verdicts at every budget, in one file, from the kept exports (the one command: experiments/lab_verdicts.py)
$PY experiments/lab_verdicts.py --write experiments/results/lab_verdicts_8seeds.md
