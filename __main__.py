"""Command line: `python -m comfyui_salt <command> --help`.

Commands: `teacher` (toy teacher pre-training), `ode-init` (ODE-pair initialisation of a student), `distill`,
`export-teacher`, `export` (a student in another layout, or with `--lora` as a LoRA on its base for ComfyUI's
LoraLoaderModelOnly), `demo`. Every flag maps to a config field; the defaults are the config's defaults, so
`--help` documents them.

A front door: it builds the toy world's pieces for the jobs (comfyui_salt.toy.jobs) and, for `demo`, runs the
development harness (comfyui_salt.dev, present in a checkout, not in a built wheel).
"""
import argparse
import logging
import os
import sys

from .training.config_fields import add_config_flags, overrides_from_args


def export(args) -> str:
    """The `export` command: the student as a LoRA on --base (with its energy report), or in --layout."""
    from .weights.files import (COMFY_CONFIG_META, NESTED_LAYOUTS, TORCH_EXTS, check_output, file_metadata,
                                load_model, save_model, student_metadata)
    from .training.lora_export import export_lora, student_file
    from .salt_core.layouts import LAYOUTS
    from .salt_core.validate import check_choice
    if not args.lora:
        source = student_file(args.student)
        check_output(args.out, "--out", {"--student": source})
        # how the student generates goes with it (causal or bidirectional: Salt's and ComfyUI's loaders read it);
        # not its run id, which marks the run's own published student
        marks = {k: v for k, v in file_metadata(source).items() if k in ("teacher_mode", COMFY_CONFIG_META)}
        check_choice("--layout", args.layout, LAYOUTS, where="export")
        flat_torch = os.path.splitext(args.out)[1].lower() in TORCH_EXTS and args.layout not in NESTED_LAYOUTS
        if flat_torch and marks.get("teacher_mode") == student_metadata(False)["teacher_mode"]:
            raise ValueError(f"--out {args.out!r}: a flat torch file (--layout {args.layout}) has no place for how "
                             f"the student generates, and this bidirectional student would load as causal; write "
                             f".safetensors, or --layout self_forcing (its .pt carries it)")
        model, _ = load_model(source)
        save_model(model, args.out, layout=args.layout, extra_metadata=marks)
        return f"wrote {args.out} ({args.layout} layout)"
    if args.base is None:
        raise ValueError("export --lora: --base is required (the model the student was distilled from)")
    from .salt_core.lora import format_report
    from .salt_core.validate import check_device
    device = check_device("--device", args.device, where="export --lora")
    path, reports = export_lora(args.base, args.student, args.out, args.rank, diffs=not args.no_diffs,
                                dtype=args.dtype, device=device)
    return f"{format_report(reports, limit=12)}\nwrote {path}"


def _student_job_flags(parser: argparse.ArgumentParser, presets: dict, where: str) -> None:
    """The flags `distill` and `ode-init` share: the preset, the run folder, a step limit, the resume override."""
    parser.add_argument("--preset", required=True, metavar="PRESET",
                        help=f"one of {', '.join(presets)} ({where}); every config flag below overrides one of its "
                             f"fields")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, export/); rerun to "
                                                     "resume")
    parser.add_argument("--max-gen-steps", type=int, default=None,
                        help="stop when the run reaches this generator step, counted from its start (a resumed run "
                             "already past it stops at once); the schedule stays --gen-steps long")
    parser.add_argument("--allow-changed-settings", action="store_true",
                        help="resume a run folder whose checkpoints were made with other settings (listed in the "
                             "error without this flag); the restored optimizer state is kept")


def _load_demo():
    """`run_demo` of the development harness (dev/demo.py), or a SystemExit saying it ships only in a checkout."""
    dev = __package__ + ".dev"
    try:
        from .dev.demo import run_demo
    except ModuleNotFoundError as e:
        if e.name not in (dev, dev + ".demo"):
            raise
        raise SystemExit("demo: the development harness (dev/: the demo, the ComfyUI runner) is not part of an "
                         "installed wheel; run it from a checkout: clone https://github.com/salt-video/comfyui-salt, "
                         "then `bash .ci/setup && .venv/bin/python -m comfyui_salt demo`") from None
    return run_demo


def main(argv=None):
    from .training.teacher import TeacherConfig
    parser = argparse.ArgumentParser(prog="python -m comfyui_salt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("teacher", help="train the toy teacher (flow matching); resumes automatically")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl); rerun to resume")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (schedule unchanged)")
    p.add_argument("--export", default=None, help="also write the EMA teacher to this .safetensors path at the end")
    p.add_argument("--allow-changed-settings", action="store_true",
                   help="resume a run folder whose checkpoints were made with other settings (listed in the error "
                        "without this flag); the restored optimizer state is kept")
    add_config_flags(p, TeacherConfig)
    e = sub.add_parser("export-teacher", help="write the EMA weights of a teacher run's newest checkpoint")
    e.add_argument("--run", required=True, help="teacher run folder (the --out of `teacher`)")
    e.add_argument("--out", required=True, help="destination .safetensors (original Wan layout + config metadata)")
    e.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA (default) or the raw trained weights")
    x = sub.add_parser("export", help="write a student checkpoint in another layout, or (--lora) as a LoRA on its base")
    x.add_argument("--student", required=True, help="student checkpoint (any layout) or a distillation run folder")
    x.add_argument("--out", required=True, help="destination file (.safetensors for a LoRA)")
    x.add_argument("--lora", action="store_true",
                   help="write student - base as a LoRA (ComfyUI keys: diffusion_model.<module>.lora_up/lora_down/"
                        "alpha, .diff, .diff_b) for LoraLoaderModelOnly on the base Wan model")
    x.add_argument("--base", default=None, help="with --lora: the model the student was distilled from")
    x.add_argument("--rank", type=int, default=64, help="with --lora: rank of each linear layer's factors "
                                                       "(truncated SVD; >= the layer width keeps it exactly)")
    x.add_argument("--no-diffs", action="store_true", help="with --lora: leave out the full .diff / .diff_b of "
                                                           "biases, norms, modulation and the patch conv")
    x.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="bf16", help="with --lora: tensor dtype")
    x.add_argument("--device", default=None, help="with --lora: where the SVDs run (default: cuda if available; "
                                                  "on a CPU, Wan 1.3B takes tens of minutes)")
    x.add_argument("--layout", default="wan", help="without --lora: layout of the written student "
                                                   "(wan, comfyui, diffusers, self_forcing)")
    from .training.distill_config import DISTILL_PRESETS, RENAMED as DISTILL_RENAMED, DistillConfig
    from .training.ode_init_config import ODE_INIT_PRESETS, OdeInitConfig
    q = sub.add_parser("distill", help="DMD / SC-DMD / Salt distillation; resumes automatically")
    _student_job_flags(q, DISTILL_PRESETS, "training/distill_config.py DISTILL_PRESETS")
    add_config_flags(q, DistillConfig, renamed=DISTILL_RENAMED, presets=True)
    o = sub.add_parser("ode-init", help="ODE-pair initialisation of a student (the distillation's student_init); "
                                        "resumes automatically")
    _student_job_flags(o, ODE_INIT_PRESETS, "training/ode_init_config.py ODE_INIT_PRESETS")
    add_config_flags(o, OdeInitConfig, renamed=OdeInitConfig.RENAMED, presets=True)
    d = sub.add_parser("demo", help="the main job: toy-world generation, oracle metric table, preview GIF, workflow 1 in ComfyUI")
    d.add_argument("--out", default="out/demo", help="folder for preview.gif and salt_toy_streaming.webp")
    d.add_argument("--num-clips", type=int, default=16, help="prompts to generate per row")
    d.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    d.add_argument("--teacher", default=None, help="toy teacher .safetensors (default: the shipped asset)")
    d.add_argument("--student", default=None,
                   help="causal toy student .safetensors, e.g. a distill run's export/student.safetensors "
                        "(default: the shipped Salt toy student); also used by workflow 1")
    d.add_argument("--no-comfyui", action="store_true",
                   help="skip running workflows/salt_toy_streaming.json in a headless ComfyUI")
    d.add_argument("--comfyui", default=None, help="ComfyUI tree to boot (default .venv/comfyui, from .ci/setup)")
    args = parser.parse_args(argv)
    from .salt_core.validate import check_count
    from .training.config_fields import MAX_THREADS
    for flag in ("max_steps", "max_gen_steps", "num_clips", "threads"):
        if getattr(args, flag, None) is not None and not (flag == "threads" and args.command != "demo"):
            check_count(flag, getattr(args, flag), where=f"--{flag.replace('_', '-')}",
                        maximum=MAX_THREADS if flag == "threads" else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command in ("teacher", "distill", "ode-init"):
        from .training.loop import install_stop_handlers
        install_stop_handlers()   # Ctrl-C / kill: finish the step, save, exit; rerun to resume

    if args.command == "teacher":
        from .toy.jobs import teacher_world, toy_evaluator
        from .training.teacher import train_teacher
        cfg = TeacherConfig(**overrides_from_args(args, TeacherConfig))
        if args.export:
            from .weights.files import check_output
            check_output(args.export, "--export")           # before hours of training, not after
        model = train_teacher(cfg, args.out, evaluate=toy_evaluator(cfg.world), max_steps=args.max_steps,
                              world=teacher_world(cfg), allow_changed_settings=args.allow_changed_settings)
        if args.export:
            from .weights.files import save_model
            save_model(model, args.export, layout="wan",
                       extra_metadata={"teacher_mode": cfg.mode, "train_steps": cfg.total_steps})
    elif args.command in ("distill", "ode-init"):
        from .toy.jobs import distill_world
        from .weights.files import export_student
        if args.command == "distill":
            from .training.distill import run_distillation as run_job
            from .training.distill_config import get_preset
            cfg = get_preset(args.preset, **overrides_from_args(args, DistillConfig))
        else:
            from .training.ode_init import run_ode_init as run_job
            from .training.ode_init_config import get_ode_init_preset
            cfg = get_ode_init_preset(args.preset, **overrides_from_args(args, OdeInitConfig))
        from .training.distributed import launcher_rank
        model = run_job(cfg, args.out, max_gen_steps=args.max_gen_steps,
                        allow_changed_settings=args.allow_changed_settings, world=distill_world())
        if launcher_rank() == 0:   # under torchrun every rank holds the whole student: one writes it
            for path in export_student(model, args.out, causal=cfg.student_kind == "causal"):
                print("wrote", path)
    elif args.command == "export":
        print(export(args))
    elif args.command == "export-teacher":
        from .training.teacher import export_teacher
        print(export_teacher(args.run, args.out, args.weights))
    elif args.command == "demo":
        run_demo = _load_demo()
        import os
        from .dev.comfy_runner import ComfyError
        from .toy.shipped import TOY_STUDENT, TOY_TEACHER
        for flag, path in (("--teacher", args.teacher), ("--student", args.student)):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"demo {flag} {path!r}: no such file; give a toy-world model file (a teacher or "
                                 f"student the teacher/distill commands exported), or leave {flag} out for the "
                                 f"shipped one")
        try:
            run_demo(args.out, args.num_clips, args.threads, teacher=args.teacher or TOY_TEACHER,
                     student=args.student or TOY_STUDENT, comfyui=not args.no_comfyui, comfyui_dir=args.comfyui)
        except ComfyError as e:               # ComfyUI missing or failing: a line naming it, as other refusals
            raise ValueError(f"demo: {e}") from None
    return 0


if __name__ == "__main__":
    from .training.runs import RunError
    try:
        sys.exit(main())
    except (ValueError, MemoryError, FloatingPointError, OSError, KeyError, RunError) as error:
        # A refused input, a stopped run or a path the system refuses (read-only, missing): the message says what
        # and how to fix it; no traceback. Other OS errors (a full disk mid-write, a network failure) keep theirs.
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and not error.filename:
            raise
        text = error.args[0] if isinstance(error, KeyError) and error.args else error   # str(KeyError) quotes it
        print(f"error: {text}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        print(f"stopped ({stop or 'interrupted'}); the last checkpoint is saved: rerun the same command to resume",
              file=sys.stderr)
        sys.exit(130)
