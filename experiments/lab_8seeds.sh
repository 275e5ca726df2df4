#!/usr/bin/env bash
# Issue 27: the method lab's claims re-run at 8 seeds (t intervals over seeds), resumable: run it again after any
# stop and it continues where it stopped (every arm × seed resumes or is skipped), on this machine or on a new one:
# each run that finishes is measured and kept in the repository at once (experiments/lab_keep.py; commit
# experiments/results before the session ends), and a new machine starts from what is kept there (the lab teacher,
# the ODE inits, every finished run).
# Order: the learned lab teacher (kept: experiments/results/lab_teacher.safetensors; trained again only where
# missing: 8,000 steps, ~1.4 h of one core), then at 300 updates × 8 seeds the claim arms and the symmetric-SC arms
# and the λ_SC dose response with its per-update SC/DMD gradient cosine (sc0, sc2, sc20, sc2-sym; the runner does the
# claim arms first), the SC-triplet and mechanism tables from each run's measurements, the exact-real-score pair
# (dmd-exact, salt-exact), then dmd and salt to 2,000 updates (evaluated at 1,000 too) and salt-sym to 1,000. Hours
# of one core (measured: 3.5-4 s per update with two one-thread jobs): a 300-update run 0.3, 1,000 updates 1,
# 2,000 updates 2.
# Usage (from the repository root):
#   [WORKERS=1] [FIRST=arm:seed,...] nohup bash experiments/lab_8seeds.sh > runs/lab-8seeds.log 2>&1 &
# (FIRST: the 300-update runs to do before the others, e.g. FIRST=salt-sym:3,salt-sym2:3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
KEPT=experiments/results   # what the repository keeps (experiments/lab_keep.py): a new machine starts from it
mkdir -p runs
if [ ! -f runs/lab_teacher.safetensors ] && [ -f $KEPT/lab_teacher.safetensors ]; then
    cp $KEPT/lab_teacher.safetensors runs/lab_teacher.safetensors
fi
if [ ! -f runs/lab_teacher.safetensors ]; then
    $PY -m comfyui_salt teacher --world lab:default --mode bidirectional --eval-cfg 1 \
        --threads 1 --total-steps 8000 --checkpoint-every 100 --eval-every 500 --out runs/lab-teacher
    $PY -m comfyui_salt export-teacher --run runs/lab-teacher --out runs/lab_teacher.safetensors
fi
$PY experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp8 \
    --keep $KEPT/lab-exp8 --first "${FIRST:-}" --seeds 8 --updates 300 --workers "${WORKERS:-2}" \
    --arms dmd,salt,sc-dmd,bidir-dmd,bidir-sc-dmd,salt-sym,salt-sym2,sc0,sc2,sc20,sc2-sym
# which defect SC lowers (the SC arms and their references on the triplets L_SC trains and on defect8's: the
# dose-response table, t intervals over seeds) and the mechanism of the λ response (the SC target against the exact
# map per triplet, after 100, 200 and 300 updates): each run was measured as it finished (lab_experiment.py
# measure_finished; runs kept from an earlier machine bring their measurements), so these print from the caches
TRIP="$PY experiments/lab_sc_triplets.py --out runs/lab-exp8 --threads 1"
{ echo "Command: \`$TRIP --table --export $KEPT/lab-exp8\`" \
       "($(date -u +%F), $(git rev-parse --short HEAD))"
  echo; $TRIP --table --export $KEPT/lab-exp8; } > $KEPT/lab_sc_triplets_8seeds.md.tmp
mv $KEPT/lab_sc_triplets_8seeds.md.tmp $KEPT/lab_sc_triplets_8seeds.md
MECH="$PY experiments/lab_sc_mechanism.py --clips 16 --flow-steps 32 --threads 1 --at-updates 100,200"
MECH="$MECH --runs runs/lab-exp8/ode-causal $(echo runs/lab-exp8/{sc0,sc-dmd,sc2,sc20,sc2-sym}/seed{0..7})"
{ echo "Command: \`$MECH\` ($(date -u +%F), $(git rev-parse --short HEAD))"; echo; $MECH; } \
    > $KEPT/lab_sc_mechanism_8seeds.md.tmp
mv $KEPT/lab_sc_mechanism_8seeds.md.tmp $KEPT/lab_sc_mechanism_8seeds.md
# the same arms' per-update SC/DMD gradient probes over training (from metrics.jsonl; seconds)
PROBES="$PY experiments/lab_grad_probes.py --out runs/lab-exp8 --arms sc-dmd,sc2,sc20,sc2-sym,salt,salt-sym,salt-sym2"
{ echo "Command: \`$PROBES\` ($(date -u +%F), $(git rev-parse --short HEAD))"; echo; $PROBES; } \
    > $KEPT/lab_grad_probes_8seeds.md
# the exact-real-score pair at 300 updates, 8 seeds (16 runs, ~2.5 h of the two cores)
$PY experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp8 \
    --keep $KEPT/lab-exp8 --arms dmd-exact,salt-exact --seeds 8 --updates 300 --workers "${WORKERS:-2}"
# the 300-update evaluations kept in the repository, and the verdicts so far (rewritten after each budget)
$PY experiments/lab_experiment.py --out runs/lab-exp8 --table --compact --export $KEPT/lab-exp8
$PY experiments/lab_verdicts.py --write $KEPT/lab_verdicts_8seeds.md
# dmd and salt to 2,000 updates, each run also evaluated after 1,000 (its milestone checkpoint, as the 1,000-update
# result: the same run, distillation has no learning-rate schedule), then salt-sym to 1,000. 2,000 is the longest
# budget the CPU allows: a run must finish on the machine it started on (a session's machine lasts 3 h; 2,000
# updates take 1.7-2 h of one core, 3,000 would take 2.6-3 h).
$PY experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp8-2k \
    --keep $KEPT/lab-exp8-2k --extend-from runs/lab-exp8 --arms dmd,salt --seeds 8 --updates 2000 \
    --set checkpoint_keep_every=1000 --milestone 1000:runs/lab-exp8-long:$KEPT/lab-exp8-long \
    --workers "${WORKERS:-2}"
$PY experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp8-long \
    --keep $KEPT/lab-exp8-long --extend-from runs/lab-exp8 --arms dmd,salt,salt-sym --seeds 8 --updates 1000 \
    --workers "${WORKERS:-2}"
$PY experiments/lab_experiment.py --out runs/lab-exp8-long --table --compact --export $KEPT/lab-exp8-long \
    --compare-to runs/lab-exp8
$PY experiments/lab_experiment.py --out runs/lab-exp8-2k --table --compact --export $KEPT/lab-exp8-2k \
    --compare-to runs/lab-exp8-long
# the verdicts at every budget, in one file, from the kept exports (the one command: experiments/lab_verdicts.py)
$PY experiments/lab_verdicts.py --write $KEPT/lab_verdicts_8seeds.md
