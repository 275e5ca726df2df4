#!/usr/bin/env bash
# Issue 27: the 8-seed re-run's SC-triplet, mechanism and gradient-probe tables, printed from the measurements each
# run keeps (experiments/lab_experiment.py measure_finished), into experiments/results/lab_*_8seeds.md. Called by
# lab_8seeds.sh after its re-measure stage and at its end; run it alone for the tables of what has finished so far
# (each row says its seed count). Usage (from the repository root): bash experiments/lab_8seeds_tables.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
KEPT=experiments/results
trip="$PY experiments/lab_sc_triplets.py --out runs/lab-exp8 --also runs/lab-exp8-m --threads 1 --versus sc20"
{ echo "Command: \`$trip --table --export $KEPT/lab-exp8\` ($(date -u +%F), $(git rev-parse --short HEAD))"
  echo; $trip --table --export $KEPT/lab-exp8; } > $KEPT/lab_sc_triplets_8seeds.md.tmp
mv $KEPT/lab_sc_triplets_8seeds.md.tmp $KEPT/lab_sc_triplets_8seeds.md
mech="$PY experiments/lab_sc_mechanism.py --clips 16 --flow-steps 32 --threads 1 --at-updates 100,200"
mech="$mech --versus sc20"   # sc20-low, the test of the λ account, against sc20 (paired by seed)
mech="$mech --runs runs/lab-exp8/ode-causal"
mech="$mech $(echo runs/lab-exp8{,-m}/{sc0,sc-dmd,sc2,sc20,sc2-sym,sc20-low}/seed{0..7})"
{ echo "Command: \`$mech\` ($(date -u +%F), $(git rev-parse --short HEAD))"; echo; $mech; } \
    > $KEPT/lab_sc_mechanism_8seeds.md.tmp
mv $KEPT/lab_sc_mechanism_8seeds.md.tmp $KEPT/lab_sc_mechanism_8seeds.md
probes="$PY experiments/lab_grad_probes.py --out runs/lab-exp8 --also runs/lab-exp8-m"
{ echo "Command: \`$probes\` ($(date -u +%F), $(git rev-parse --short HEAD))"; echo; $probes; } \
    > $KEPT/lab_grad_probes_8seeds.md.tmp
mv $KEPT/lab_grad_probes_8seeds.md.tmp $KEPT/lab_grad_probes_8seeds.md
