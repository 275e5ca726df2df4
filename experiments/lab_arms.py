"""The method lab's experiment, defined: its arms (preset and overrides each), the reference arms paired
differences are taken against, the reference rows, and the evaluation's fixed settings (NFEs, noise seed, defect
grid, rollout length). Read by the runner (lab_experiment.py), the tables (lab_tables.py) and the SC-triplet
diagnosis (lab_sc_triplets.py); knows nothing of running, evaluating or printing.
"""

REFERENCE = {"causal": "dmd", "bidirectional": "bidir-dmd"}   # the arm paired differences are taken against
REFERENCE_OF = {"salt-exact": "dmd-exact",   # arms paired with another arm than their kind's (same real score)
                "salt-sym": "salt",          # the symmetric SC head-to-head against released Salt
                "salt-sym2": "salt"}
EVAL_NFE = (4, 2)
EVAL_SEED = 1234           # paired noise: every arm's students of one training seed sample from eval_seed(seed)
DEFECT_GRID = 8
LENGTH_FACTOR = 3          # drift: a 3×-length rolling-cache rollout
EXACT = dict(teacher="exact")   # the exact real score; critic_init is the teacher file (set in arm_overrides)
# The λ arms keep their students at every 100 updates, for the mechanism over training (lab_sc_mechanism.py).
MILESTONES = {"checkpoint_keep_every": 100}
# arm -> (preset, overrides). The λ_SC dose response is sc0, sc-dmd (0.2, the preset), sc2, sc20 on the single K = 8;
# sc2-sym is sc2 with L_SC's gradient through both branches (the paper's reading) instead of the released stop-grad.
# sc20-low tests the account of the λ response (docs/method_lab.md): sc20 with SC at the two lowest exits only.
ARMS = {
    "dmd": ("lab-dmd", {}),
    "sc-dmd": ("lab-sc-dmd", {**MILESTONES}),
    "salt": ("lab-salt", {}),
    "bidir-dmd": ("lab-bidir-dmd", {}),
    "bidir-sc-dmd": ("lab-bidir-sc-dmd", {}),
    "sc0": ("lab-sc-dmd", {"sc_weight": 0.0, **MILESTONES}),
    "sc2": ("lab-sc-dmd", {"sc_weight": 2.0, **MILESTONES}),
    "sc20": ("lab-sc-dmd", {"sc_weight": 20.0, **MILESTONES}),
    "sc2-sym": ("lab-sc-dmd", {"sc_weight": 2.0, "sc_symmetric": True, **MILESTONES}),   # grad through both branches
    "sc20-low": ("lab-sc-dmd", {"sc_weight": 20.0, "sc_exit_sigma_max": 0.7, **MILESTONES}),   # σ_s 0.643, 0.5
    "dmd-exact": ("lab-dmd", EXACT),
    "salt-exact": ("lab-salt", EXACT),
    "salt-sym": ("lab-salt-sym", {}),   # released Salt with the symmetric SC (issue 27's head-to-head)
    # the same at λ_SC 2, where the symmetric form lowered the defect on the single K = 8 (sc2-sym) and λ 0.2's SC
    # gradient, 0.3 % of DMD's, leaves the two forms nearly equal
    "salt-sym2": ("lab-salt-sym", {"sc_weight": 2.0}),
}
# Measured as soon as each run finishes (its checkpoints may not outlive the session; experiments/lab_keep.py):
# the SC-triplet defects (lab_sc_triplets.py) of these arms, and the SC target against the exact map
# (lab_sc_mechanism.py) of the λ arms at their milestones and end, at these settings.
TRIPLET_ARMS = ("dmd", "sc0", "sc-dmd", "sc2", "sc20", "sc2-sym", "sc20-low", "salt", "bidir-dmd", "bidir-sc-dmd")
MECHANISM_ARMS = ("sc0", "sc-dmd", "sc2", "sc20", "sc2-sym", "sc20-low")
MECHANISM = dict(clips=16, flow_steps=32, at_updates=(100, 200))
# The arms whose per-update SC/DMD gradient probes are tabulated (lab_grad_probes.py): their metrics are kept.
PROBE_ARMS = ("sc-dmd", "sc2", "sc20", "sc2-sym", "sc20-low", "salt", "salt-sym", "salt-sym2")
# The arms the five paper claims need run first, every seed, before the dose response and the exact-score pair.
CLAIM_ARMS = ("dmd", "salt", "sc-dmd", "bidir-dmd", "bidir-sc-dmd")
# Reference rows on the same captions and noise: the learned teacher and the exact one, 40 Euler steps.
REFERENCES = ("teacher", "exact")
REFERENCE_STEPS = 40
# 3: each training seed samples its own evaluation noise (eval_seed); 2: one noise (EVAL_SEED) for every seed, so
# the intervals over seeds left out the clips' own sampling variance; 2 and 3: switch and drift are per-boundary
# switch rates (1 stored "ever switched")
EVAL_VERSION = 3
ODE_INITS = {"causal": "ode-causal", "bidirectional": "ode-bidir"}


def eval_seed(seed: int) -> int:
    """The noise seed a training seed's students are evaluated on: the same for every arm at that seed (paired
    differences), another for every seed, so the per-seed values are independent draws of training and evaluation
    noise together and a t interval over seeds covers both. Seed 0 keeps EVAL_SEED (the references' noise)."""
    return EVAL_SEED + int(seed)


def student_kind(arm: str) -> str:
    """"causal" or "bidirectional": the student an arm trains (its preset's, unless overridden)."""
    from comfyui_salt.training.distill_config import get_preset
    preset, over = ARMS[arm]
    return over.get("student_kind", get_preset(preset).student_kind)
