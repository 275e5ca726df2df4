"""The experiments behind the docs' results: the toy-world distillation runner and the method lab (exact
Gaussian-mixture teacher), run as scripts from the repository root, e.g. `.venv/bin/python
experiments/lab_experiment.py --help`. Not shipped in the wheel; their kept results are in experiments/results/."""
