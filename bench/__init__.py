"""Benchmarks and checks that print tables (backbone speed, memory, LoRA rank, live stream, the GPU check, the
golden outputs); run each as a script from the repository root, e.g. `.venv/bin/python bench/backbone.py`.
Not shipped in the wheel; their kept results are in bench/results/."""
