"""Hostile and careless input on the newest surfaces (LoRA export, image to video, SaltDistill's CLIP socket and
prompt files, the CLI's flags, the development harness): nothing overwritten, nothing read from outside ComfyUI's
folders, no number that takes the server down, no message as large as its input, validation before expensive work.

Each test is one class of input from the hostile-input review; every one failed on the code before the fix.
fp8 checkpoints are in tests/test_files.py and tests/test_model_management.py; `python -m pytest` from the root in
tests/test_package.py; the server's survival of these inputs in tests/test_comfy_server.py.
"""
import dataclasses
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_salt.salt_core.lora import extract_lora
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.salt_core.validate import MAX_QUOTE, check_device, check_image, quote
from comfyui_salt.weights.files import save_model
from comfyui_salt.training.lora_export import export_lora
from test_bad_input_nodes import models_dir, run, stream_inputs  # noqa: F401  (models_dir: a fixture)

CLI = [sys.executable, "-m", "comfyui_salt"]


def cli(*args, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(base file, student file) of the tiny preset: a student that differs from its base."""
    folder = tmp_path_factory.mktemp("pair")
    base, student = build_model("tiny", seed=0), build_model("tiny", seed=1)
    save_model(base, folder / "base.safetensors")
    save_model(student, folder / "student.safetensors")
    return folder / "base.safetensors", folder / "student.safetensors"


def file_bytes(path) -> bytes:
    return open(path, "rb").read()


# -- data lost: files the pack did not write are never replaced ---------------------------------------------
@pytest.mark.parametrize("which", ["base", "student"])
def test_export_lora_refuses_an_out_that_names_the_base_or_the_student(pair, which):
    target = pair[0] if which == "base" else pair[1]
    before = file_bytes(target)
    proc = cli("export", "--lora", "--base", pair[0], "--student", pair[1], "--out", target, "--rank", 2,
               "--device", "cpu")
    assert proc.returncode == 2 and f"is the {which} file being read" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and file_bytes(target) == before


def test_export_in_another_layout_refuses_to_write_over_its_own_student(pair, tmp_path):
    before = file_bytes(pair[1])
    proc = cli("export", "--student", pair[1], "--out", pair[1], "--layout", "comfyui")
    assert proc.returncode == 2 and "is the --student file being read" in proc.stderr, proc.stderr[-2000:]
    assert file_bytes(pair[1]) == before


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_a_student_keeps_how_it_generates_through_export_and_in_its_release_file(salt_nodes, tmp_path, causal):
    """`export --layout` wrote the student without its marks: a causal student lost `teacher_mode` and ComfyUI's
    `causal_ar` config (0.33 then loads it as a plain bidirectional WanModel), a bidirectional one loaded as causal
    in Salt; and `student_release.pt` carried no mark at all, so a bidirectional student's loaded as causal. Both now
    carry them (not the run id: a CLI export is never a run's published student)."""
    from comfyui_salt.weights.files import (COMFY_CONFIG_META, RUN_META, export_student, file_metadata,
                                            read_metadata, student_metadata)
    from comfyui_salt.nodes.models import file_teacher_mode
    run_dir = tmp_path / "run"
    student, release = export_student(build_model("tiny-hd128", seed=1), str(run_dir), causal=causal, run_id="abc")
    marks = student_metadata(causal)
    assert file_metadata(release) == marks and file_teacher_mode(release) == marks["teacher_mode"]
    for layout in ("comfyui", "wan", "diffusers"):
        out = tmp_path / f"{layout}.safetensors"
        proc = cli("export", "--student", student, "--out", out, "--layout", layout)
        assert proc.returncode == 0, proc.stderr[-2000:]
        meta = read_metadata(str(out))
        assert {k: meta.get(k) for k in ("teacher_mode", COMFY_CONFIG_META)} == {
            "teacher_mode": marks["teacher_mode"], COMFY_CONFIG_META: marks.get(COMFY_CONFIG_META)}
        assert RUN_META not in meta
    # a flat .pt has no place for the marks: unmarked files load as causal, so a bidirectional student is refused
    flat = tmp_path / "flat.pt"
    proc = cli("export", "--student", student, "--out", flat, "--layout", "wan")
    if causal:
        assert proc.returncode == 0 and file_teacher_mode(str(flat)) is None, proc.stderr[-2000:]
    else:
        assert proc.returncode == 2 and "this bidirectional student would load as causal" in proc.stderr, proc.stderr
        assert not flat.exists()
        proc = cli("export", "--student", student, "--out", flat, "--layout", "wna")      # the typo is what is named
        assert proc.returncode == 2 and "--layout='wna'" in proc.stderr and "causal" not in proc.stderr, proc.stderr


def test_release_file_marks_read_as_absent_only_when_the_file_is_at_fault(tmp_path, monkeypatch):
    """A damaged torch file has no marks ({}: the loader then reports it); a host out of memory while the pickle is
    read is no property of the file and must not turn a bidirectional release .pt into a causal one."""
    from comfyui_salt.weights import files
    path = tmp_path / "student_release.pt"
    torch.save({"x": torch.ones(2), files.TORCH_META_KEY: {"teacher_mode": "bidirectional"}}, str(path))
    assert files.file_metadata(str(path)) == {"teacher_mode": "bidirectional"}

    def fails(error):
        def load(*args, **kwargs):
            raise error
        return load
    monkeypatch.setattr(files.torch, "load", fails(RuntimeError("PytorchStreamReader failed reading zip archive")))
    assert files.file_metadata(str(path)) == {}
    monkeypatch.setattr(files.torch, "load", fails(MemoryError("cannot allocate")))
    with pytest.raises(MemoryError):
        files.file_metadata(str(path))
    mapped = RuntimeError(f"unable to mmap 1234 bytes from file <{path}>: Cannot allocate memory (12)")   # ENOMEM
    monkeypatch.setattr(files.torch, "load", fails(mapped))
    with pytest.raises(RuntimeError, match="Cannot allocate memory"):
        files.file_metadata(str(path))


def test_export_lora_never_replaces_a_file_salt_did_not_write_but_rewrites_its_own_lora(pair, tmp_path):
    foreign = tmp_path / "my_lora.safetensors"
    save_file({"x": torch.ones(2)}, str(foreign))                  # someone's LoRA: no Salt metadata
    before = file_bytes(foreign)
    with pytest.raises(ValueError, match="exists and was not written by Salt; it is never replaced"):
        export_lora(pair[0], pair[1], foreign, rank=2)
    assert file_bytes(foreign) == before
    ours = tmp_path / "ours.safetensors"
    export_lora(pair[0], pair[1], ours, rank=2)
    export_lora(pair[0], pair[1], ours, rank=3)                    # a Salt LoRA may be written again
    assert load_file(str(ours))["diffusion_model.blocks.0.ffn.0.lora_up.weight"].shape[1] == 3


def test_export_lora_checks_its_destination_before_any_svd(pair, tmp_path, monkeypatch):
    import comfyui_salt.salt_core.lora as lora
    calls = []
    monkeypatch.setattr(lora, "low_rank_factors", lambda *a: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    for out, message in [(tmp_path / "x.pt", "a LoRA is written as .safetensors"),
                         (tmp_path / "file" / "x.safetensors", "is a file, not a folder")]:
        (tmp_path / "file").write_text("a regular file")
        with pytest.raises(ValueError, match=message):
            export_lora(pair[0], pair[1], out, rank=2)
    assert calls == []


def test_extract_lora_node_numbers_a_new_file_instead_of_replacing_the_users(salt_nodes, tmp_path, monkeypatch):
    import folder_paths
    from comfyui_salt.nodes.types import SaltModel
    exts = folder_paths.folder_names_and_paths["loras"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], exts))
    (tmp_path / "salt").mkdir()
    mine = tmp_path / "salt" / "style.safetensors"
    save_file({"x": torch.ones(2)}, str(mine))
    before = file_bytes(mine)
    wrap = lambda seed: SaltModel(build_model("tiny", seed=seed).eval(), "raw", f"tiny {seed}")   # noqa: E731
    reports = [run(salt_nodes.SaltExtractLoRA, base=wrap(0), student=wrap(1), rank=2, include_diffs=True,
                   dtype="fp32", name="style")[0] for _ in range(2)]
    assert file_bytes(mine) == before
    assert "loras/salt/style_00001_.safetensors" in reports[0] and "loras/salt/style_00002_.safetensors" in reports[1]
    assert (tmp_path / "salt" / "style_00002_.safetensors").is_file()


def test_a_refused_changed_settings_resume_leaves_config_json_and_ends_in_a_message(tmp_path):
    """Changed settings whose models do not fit the checkpoints (a teacher of another architecture): the resume
    stops with a message naming the cause, and config.json still describes the checkpoints the folder holds."""
    run_dir, other = tmp_path / "run", tmp_path / "other.safetensors"
    common = ["--preset", "toy-dmd", "--out", run_dir, "--batch-size", 1, "--eval-every", 0, "--critic-ratio", 1,
              "--threads", 1]
    assert cli("distill", *common, "--max-gen-steps", 1).returncode == 0
    before = (run_dir / "config.json").read_text()
    save_model(build_model("tiny-hd128", seed=0), other)
    proc = cli("distill", *common, "--max-gen-steps", 2, "--teacher", other, "--allow-changed-settings")
    assert proc.returncode == 2 and "holds models of another architecture" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and (run_dir / "config.json").read_text() == before


# -- the server: paths, threads, sizes, echoed input ----------------------------------------------------------
@pytest.fixture
def input_dir(salt_nodes, tmp_path, monkeypatch):
    import folder_paths
    folder = tmp_path / "input"
    folder.mkdir()
    monkeypatch.setattr(folder_paths, "input_directory", str(folder))
    return folder


def distill_config(salt_nodes, overrides):
    """SaltDistill's config from its widgets (toy-dmd on the toy teacher) and `overrides`."""
    from comfyui_salt.nodes.distill import distill_config as config
    return config("toy-dmd", "toy", "teacher", "teacher", 1, 1, 0, overrides)


def test_prompts_file_resolves_inside_comfys_input_folder_and_refuses_the_rest_alike(salt_nodes, input_dir):
    """An absolute path, an escape, an existing file outside and a missing one all get the same refusal (no file
    read, no existence oracle)."""
    (input_dir.parent / "outside.txt").write_text("secret\n")
    (input_dir / "sub").mkdir()
    names = ["/etc/passwd", "/no/such/file", "../outside.txt", "../../etc/passwd", "~/.bashrc", "missing.txt",
             "sub/../../outside.txt", "sub", str(input_dir.parent / "outside.txt")]
    messages = set()
    for name in names:
        with pytest.raises(ValueError, match="is not a file in ComfyUI's input folder") as refused:
            distill_config(salt_nodes, f"prompts_file={name}")
        messages.add(str(refused.value).replace(quote(name), "NAME"))
    assert len(messages) == 1, messages


def windows_path_module(isabs_since_313: bool):
    """ntpath as Windows' Python has it; `isabs_since_313`: 3.13's isabs, under which a rooted name without a drive
    (`\\x`, `/x`) is not absolute (3.12's counted it absolute)."""
    import ntpath

    def isabs(p):
        drive, rest = ntpath.splitdrive(p)
        return bool(drive) and rest[:1] in ("\\", "/") or drive.startswith(("\\\\", "//"))
    return types.SimpleNamespace(**{n: getattr(ntpath, n) for n in ("normpath", "join", "splitdrive", "abspath",
                                                                     "commonpath", "sep", "pardir")},
                                 isabs=isabs if isabs_since_313 else ntpath.isabs)


@pytest.mark.parametrize("isabs_since_313", [False, True], ids=["py3.12", "py3.13"])
def test_a_rooted_name_on_windows_is_refused_whatever_pythons_isabs_says(salt_nodes, isabs_since_313, monkeypatch):
    """On Windows since Python 3.13 `\\Users\\me\\x` is not absolute, yet joined to the input folder it lands at the
    drive's root: every rooted, drive or UNC name is refused whichever isabs the server's Python has (the file
    test sees every path as existing, so only the name decides)."""
    from comfyui_salt.nodes.bridge import paths
    monkeypatch.setattr(paths, "os", types.SimpleNamespace(path=windows_path_module(isabs_since_313), sep="\\",
                                                           pardir=".."))
    base = "C:\\ComfyUI\\input"
    for name in ("\\Users\\me\\secret.txt", "/Windows/win.ini", "\\\\srv\\share\\x", "C:\\x", "C:x", "..\\x",
                 "sub\\..\\..\\x", "\\..\\x"):
        assert paths._inside(name, base, lambda p: True) is None, name
    assert paths._inside("sub\\prompts.txt", base, lambda p: True) == "C:\\ComfyUI\\input\\sub\\prompts.txt"


def test_a_bare_prompts_file_name_is_read_from_comfys_input_folder(salt_nodes, input_dir, tmp_path, monkeypatch):
    (input_dir / "prompts.txt").write_text("a cat\n")
    monkeypatch.chdir(tmp_path)                      # the process's working directory has another prompts.txt
    (tmp_path / "prompts.txt").write_text("not this one\n")
    cfg = distill_config(salt_nodes, "prompts_file=prompts.txt")
    assert cfg.prompts_file == str((input_dir / "prompts.txt").resolve())


def test_text_encoder_resolves_inside_comfys_text_encoders_folders(salt_nodes, tmp_path, monkeypatch):
    import folder_paths
    encoders = tmp_path / "text_encoders"
    (encoders / "umt5").mkdir(parents=True)
    exts = folder_paths.folder_names_and_paths["text_encoders"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "text_encoders", ([str(encoders)], exts))
    assert distill_config(salt_nodes, "text_encoder=umt5").text_encoder == str((encoders / "umt5").resolve())
    for name in ("/tmp", "../..", "nope"):
        with pytest.raises(ValueError, match="is not a folder in ComfyUI's models/text_encoders"):
            distill_config(salt_nodes, f"text_encoder={name}")


@pytest.mark.parametrize("threads", [257, 4096, 10 ** 9])
def test_a_thread_count_that_would_take_the_server_down_is_refused(salt_nodes, threads):
    with pytest.raises(ValueError, match=rf"threads={threads}; expected an integer in \[0, 256\]"):
        distill_config(salt_nodes, f"threads={threads}")


@pytest.mark.parametrize("text", ["x" * (4 << 20), "critic_ratio=" + "9" * (4 << 20), "a" * (4 << 20) + "=1",
                                  "step_choices=" + "8," * (2 << 20), "align_coupling=" + "z" * (4 << 20)])
def test_an_error_quotes_at_most_a_short_prefix_of_a_huge_input(salt_nodes, text):
    with pytest.raises(ValueError) as refused:
        distill_config(salt_nodes, text)
    assert len(str(refused.value)) < 2000, len(str(refused.value))


def test_quote_keeps_short_values_and_cuts_long_ones_with_their_length():
    assert quote("abc") == "'abc'" and quote(3) == "3"
    long = quote("z" * 10_000)
    assert len(long) < MAX_QUOTE + 40 and long.endswith("… (10000 characters)")


def test_a_one_megabyte_prompt_or_negative_prompt_is_cut_before_the_encoder_sees_it(tmp_path):
    from comfyui_salt.training.prompts import MAX_PROMPT_CHARS, cache_prompt_embeddings, read_prompts_file
    path = tmp_path / "p.txt"
    path.write_text("a" * (1 << 20) + "\nshort\n")
    seen = []

    def encoder(texts):
        seen.extend(texts)
        return [torch.zeros(3, 8) for _ in texts]
    cache_prompt_embeddings(read_prompts_file(str(path)), "n" * (1 << 20), str(tmp_path / "cache.safetensors"),
                            encoder)
    assert [len(t) for t in seen] == [MAX_PROMPT_CHARS, 5, MAX_PROMPT_CHARS] and MAX_PROMPT_CHARS >= 512


def test_export_lora_refuses_an_out_inside_a_run_folder_that_is_its_student(pair, tmp_path):
    """--student RUN reads RUN/export/student.safetensors: --out naming that file is the student being read."""
    run_dir = tmp_path / "run"
    (run_dir / "export").mkdir(parents=True)
    student = run_dir / "export" / "student.safetensors"
    student.write_bytes(file_bytes(pair[1]))
    with pytest.raises(ValueError, match="is the student file being read"):
        export_lora(pair[0], run_dir, student, rank=2)
    assert file_bytes(student) == file_bytes(pair[1])


def python_peak_bytes(fn) -> tuple:
    """(fn's result or the exception it raised, the peak bytes Python objects took while it ran: tracemalloc, an
    independent measure of what a list of strings holds)."""
    import tracemalloc
    tracemalloc.start()
    try:
        try:
            out = fn()
        except (ValueError, MemoryError) as e:
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("line, count", [
    ("a cat walks\n", 20000), ("ab\n", 20000), ("猫が歩く\n", 20000), ("a 🐈 walks\n", 20000), ("\n", 20000),
    ("x" * 300 + "\n", 20000), ("ab\r", 20000), ("a cat walks\r\n", 20000), ("x" * (4 << 20) + "\n", 1)])
def test_the_memory_a_prompts_files_lines_take_is_counted_before_they_are_read(tmp_path, monkeypatch, line, count):
    """A prompts file of many short lines takes ~23× its size as a Python list (a 100 MB upload into ComfyUI's
    input folder: about 2.3 GB). prompts_bytes counts it from the file, its lines split as the read splits them (a
    lone CR ends one too) and one huge line counted as the read holds it: never under what tracemalloc measures;
    ASCII at most 1.5× over, other text 4×, and a file over the host's free memory is refused before the list is
    built."""
    from comfyui_salt.training import prompts
    path = tmp_path / "p.txt"
    path.write_bytes((line * count + "last").encode())       # as written: no newline translation
    estimate = prompts.prompts_bytes(str(path))
    result, measured = python_peak_bytes(lambda: prompts.read_prompts_file(str(path)))
    if line.strip():
        assert isinstance(result, list) and len(result) == count + 1
        assert measured <= estimate <= (1.5 if line.isascii() else 4.0) * measured + (64 << 10), (estimate, measured)
    monkeypatch.setattr(prompts, "available_memory", lambda device: estimate - 1)
    refused, measured = python_peak_bytes(lambda: prompts.read_prompts_file(str(path)))
    assert isinstance(refused, MemoryError) and "p.txt" in str(refused) and "split the file" in str(refused)
    assert measured < (64 << 10) + 2 * __import__("sys").getsizeof(line), measured    # one line at a time


def test_a_million_line_override_text_or_caption_list_is_refused_without_building_its_list(salt_nodes):
    """The overrides and the defect node's prompts are a client's text of any length: each is read one item at a
    time and refused once it has more items than there can be (a config's fields; 64 captions)."""
    from comfyui_salt.nodes.metrics import toy_captions
    from comfyui_salt.training.config_fields import parse_overrides
    from comfyui_salt.training.distill_config import DistillConfig
    text = "critic_ratio=1;" * 10 ** 6
    refused, measured = python_peak_bytes(lambda: parse_overrides(DistillConfig, text, where="t"))
    assert isinstance(refused, ValueError) and "critic_ratio is set twice" in str(refused)
    assert measured < 1 << 20, measured
    lines = "a red disc moving left\n" * 10 ** 6
    refused, measured = python_peak_bytes(lambda: toy_captions(lines))
    assert isinstance(refused, ValueError) and "more than 64 captions" in str(refused), refused
    assert measured < 1 << 20, measured
    text = "a\n\n b \r\nc\x0bd\x0ce\x1cf\x85g\u2028h\u2029i"
    assert toy_captions(text) == [line.strip() for line in text.splitlines() if line.strip()]


def test_a_byte_order_mark_is_no_part_of_the_first_prompt(tmp_path):
    from comfyui_salt.training.prompts import read_prompts_file
    (tmp_path / "p.txt").write_bytes("\ufeffa cat walks\nrain\n".encode("utf-8"))
    assert read_prompts_file(str(tmp_path / "p.txt")) == ["a cat walks", "rain"]
    (tmp_path / "bom.txt").write_bytes("\ufeff\n".encode("utf-8"))
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts_file(str(tmp_path / "bom.txt"))


def test_a_latin1_prompts_file_names_the_encoding(salt_nodes, input_dir, tmp_path):
    from comfyui_salt.nodes.distill import embed_prompts
    (input_dir / "p.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    cfg = distill_config(salt_nodes, "prompts_file=p.txt")
    cfg = cfg.__class__(**{**cfg.__dict__, "world": ""})                  # a real-scale run embeds its prompts
    with pytest.raises(ValueError, match=r"SaltDistill: prompts_file 'p.txt' is not UTF-8 text \(byte 0xe9"):
        embed_prompts(cfg, str(tmp_path / "run"), clip=_umt5_like())


def test_the_node_embeds_edited_prompts_again_with_its_clip_and_names_the_cause_without_one(salt_nodes, input_dir,
                                                                                         tmp_path, monkeypatch):
    """SaltDistill's clip input re-embeds a prompts file edited after the run folder's cache was made (it stopped at
    the cache's existence and the job then asked for a text_encoder folder)."""
    from comfyui_salt.nodes import distill as node
    calls = []
    monkeypatch.setattr(node, "clip_text_encoder", lambda clip: lambda texts: calls.append(texts) or
                        [torch.ones(2, 8) for _ in texts])
    (input_dir / "p.txt").write_text("a cat\n")
    cfg = distill_config(salt_nodes, "prompts_file=p.txt")
    cfg = cfg.__class__(**{**cfg.__dict__, "world": ""})                  # a real-scale run embeds its prompts
    folder = str(tmp_path / "run")
    node.embed_prompts(cfg, folder, clip=object())
    node.embed_prompts(cfg, folder, clip=object())                        # unchanged: the cache is read
    assert len(calls) == 1
    (input_dir / "p.txt").write_text("a cat\nrain\n")
    with pytest.raises(ValueError, match="holds embeddings of other prompts: connect ComfyUI's umT5"):
        node.embed_prompts(cfg, folder)
    node.embed_prompts(cfg, folder, clip=object())
    assert calls[-1][:2] == ["a cat", "rain"] and len(calls) == 2


def _umt5_like():
    """A CLIP whose tokenizer is Wan's (what the encoder adapter accepts); never asked to encode here."""
    tokenizer = type("WanT5Tokenizer", (), {})()
    return type("Clip", (), {"tokenizer": tokenizer, "tokenize": lambda self, t: t,
                             "encode_from_tokens": lambda self, t: None})()


def test_a_clip_that_is_not_umt5_is_refused_even_when_its_width_would_fit(salt_nodes):
    import comfy.text_encoders.wan
    from comfyui_salt.nodes.bridge.convert import UMT5_TOKENIZERS, clip_text_encoder
    assert comfy.text_encoders.wan.WanT5Tokenizer.__name__ in UMT5_TOKENIZERS    # the name is ComfyUI's own
    sd15 = type("Clip", (), {"tokenizer": type("SD1Tokenizer", (), {})(), "tokenize": lambda self, t: t,
                             "encode_from_tokens": lambda self, t: None})()
    with pytest.raises(TypeError, match="SD1Tokenizer tokenizer; Wan needs umT5-XXL"):
        clip_text_encoder(sd15)
    clip_text_encoder(_umt5_like())


# -- non-finite and wrong-range values reported as success --------------------------------------------------
def test_a_nan_lora_strength_ends_in_an_error_not_a_nan_video(salt_nodes):
    """LoraLoaderModelOnly at strength NaN, then Salt's streaming sampler on the patched native MODEL."""
    import comfy.sd
    from test_model_management import native_inputs
    from test_nodes import native_wan_patcher
    patcher = native_wan_patcher()
    key = "diffusion_model.blocks.0.self_attn.q.lora_up.weight"
    dim = patcher.model.diffusion_model.blocks[0].self_attn.q.weight.shape[0]
    lora = {key: torch.ones(dim, 2), key.replace("lora_up", "lora_down"): torch.ones(2, dim)}
    patched = comfy.sd.load_lora_for_models(patcher, None, lora, float("nan"), 0)[0]
    salt = run(salt_nodes.SaltCausalFromModel, model=patched)[0]
    with pytest.raises(ValueError, match="the sampled video holds .* non-finite .*LoRA strengths"):
        run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))


def test_the_few_step_sampler_refuses_to_return_a_non_finite_latent(salt_nodes):
    from comfyui_salt.nodes.sampling import SAMPLERS
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    nan_model = lambda x, sigma, **kw: torch.full_like(x, float("nan"))   # noqa: E731
    for mode, sample in SAMPLERS.items():
        with pytest.raises(ValueError, match="SaltFewStepSampler: the sampled latent holds"):
            sample(nan_model, torch.randn(1, 3, 3, 4, 4), sigmas, extra_args={"seed": 0}, disable=True)


@pytest.mark.parametrize("where", ["student", "base"])
def test_extract_lora_refuses_nan_or_inf_in_either_model(where):
    base = build_model("tiny", seed=0).state_dict()
    student = {k: v + 0.01 for k, v in base.items()}
    (student if where == "student" else base)["blocks.1.ffn.0.weight"][0, 0] = float("inf")
    with pytest.raises(ValueError, match=rf"the {where} holds NaN/Inf in 1 tensor\(s\), e.g. \['blocks.1.ffn.0.weight'\]"):
        extract_lora(base, student, rank=2)


def test_export_lora_writes_nothing_for_a_student_holding_nan(pair, tmp_path):
    model = build_model("tiny", seed=1)
    sd = model.state_dict()
    sd["head.head.weight"][0, 0] = float("nan")
    bad = tmp_path / "bad.safetensors"
    save_model(sd, bad, config=model.cfg)
    out = tmp_path / "out.safetensors"
    proc = cli("export", "--lora", "--base", pair[0], "--student", bad, "--out", out, "--device", "cpu")
    assert proc.returncode == 2 and "NaN" in proc.stderr and not out.exists(), proc.stderr[-2000:]


@pytest.mark.parametrize("image, words", [
    (torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8), "torch.uint8 values; ComfyUI images are floats"),
    (torch.rand(1, 16, 16, 3) * 255, r"bytes 0-255\? divide by 255"),
    (torch.rand(16, 16, 3), "no batch axis"),
    (torch.rand(1, 16, 16, 1), "one-channel mask or greyscale"),
    (torch.rand(1, 3, 16, 16), "channels first"),
    (torch.full((1, 16, 16, 3), float("nan")), "non-finite"),
    ("a.png", "is a str; expected an IMAGE tensor"),
])
def test_start_frames_of_the_wrong_range_dtype_or_layout_name_the_input(salt_nodes, toy_salt, image, words):
    with pytest.raises(ValueError, match=f"SaltStreamingSampler: start_image.*{words}"):
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, start_image=image))


def test_check_image_accepts_comfy_images_rgb_and_rgba():
    for channels in (3, 4):
        image = torch.rand(2, 8, 8, channels)
        assert check_image("image", image) is image


@pytest.mark.parametrize("node, inputs", [
    ("SaltLoadCausalModel", dict(ckpt_name="x", use_ema=True, dtype={"a": 1})),
    ("SaltLoadCausalModel", dict(ckpt_name="x", use_ema=True, dtype="fp32", weight_dtype={"a": 1})),
    ("SaltFewStepSigmas", dict(preset={"a": 1}, nfe=2, shift=1.0)),
    ("SaltFewStepSampler", dict(mode={"a": 1})),
    ("SaltCacheOptions", dict(chunk_frames=3, attention={"a": 1}, window_frames=6, sink_frames=3,
                              relative_rope=False, context_noise=0.0, max_frames=12)),
    ("SaltToyModel", dict(asset=["toy_teacher"])),
])
def test_widgets_sent_as_json_objects_name_the_widget(salt_nodes, node, inputs):
    widget = next(k for k, v in inputs.items() if isinstance(v, (dict, list)))
    with pytest.raises(ValueError, match=rf"{node}: {widget}=.*; expected one of"):
        run(getattr(salt_nodes, node), **inputs)


def test_a_lora_name_sent_as_a_json_object_names_the_widget(salt_nodes):
    assert "name={'a': 1}" in salt_nodes.SaltExtractLoRA.validate_inputs(name={"a": 1})


# -- checked too late or not named --------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, words", [
    (dict(world="nope"), "world='nope': unknown toy-world preset"),
    (dict(world="lab:nope"), "world='lab:nope': unknown lab world"),
    (dict(height=32), "height=32; the world 'default' is 16×16 pixels"),
    (dict(world="lab:default", teacher="toy"), "teacher='toy' is the sprite world's teacher"),
])
def test_a_config_that_does_not_fit_its_world_is_refused_before_any_model_loads(overrides, words):
    from comfyui_salt.toy import jobs
    from comfyui_salt.training.distill import run_distillation
    from comfyui_salt.training.distill_config import get_preset
    world = dataclasses.replace(jobs.distill_world(), load_teacher=lambda: pytest.fail("the teacher was loaded first"))
    with pytest.raises(ValueError, match=words):
        run_distillation(get_preset("toy-dmd", **overrides), "/nonexistent/never", world=world)


def test_align_block_past_the_teachers_blocks_names_the_field(tmp_path):
    from comfyui_salt.toy.jobs import distill_world
    from comfyui_salt.training.distill import run_distillation
    from comfyui_salt.training.distill_config import get_preset
    cfg = get_preset("toy-salt", align_block=9, align_weight=0.1, batch_size=1, eval_every=0, critic_ratio=1)
    with pytest.raises(ValueError, match=r"align_block=9; the network whose features are aligned has 4 blocks: "
                                         r"expected 0..3"):
        run_distillation(cfg, str(tmp_path / "run"), world=distill_world(), max_gen_steps=1, quiet=True)


def test_a_student_of_another_family_names_student_init(tmp_path):
    from comfyui_salt.toy.jobs import distill_world
    from comfyui_salt.training.distill import run_distillation
    from comfyui_salt.training.distill_config import get_preset
    other = tmp_path / "other.safetensors"
    save_model(build_model("tiny-hd128", seed=0), other)
    cfg = get_preset("toy-dmd", student_init=str(other), batch_size=1, eval_every=0)
    with pytest.raises(ValueError, match=r"DistillConfig.student_init=.* is a model with 16 latent channels"):
        run_distillation(cfg, str(tmp_path / "run"), world=distill_world(), max_gen_steps=1, quiet=True)


@pytest.mark.parametrize("value, words", [("nonsense", "expected a device such as cpu, cuda"),
                                          ("cuda:7", "CUDA device"), ("", None)])
def test_check_device_names_a_device_this_machine_lacks(value, words):
    if words is None:
        assert check_device("--device", value).type in ("cpu", "cuda")
        return
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    with pytest.raises(ValueError, match=f"--device={value!r}; .*{words}"):
        check_device("--device", value)


def test_the_cli_names_bad_devices_regular_files_and_renamed_flags(pair, tmp_path):
    (tmp_path / "file").write_text("a regular file")
    cases = [
        (["export", "--lora", "--base", pair[0], "--student", pair[1], "--out", tmp_path / "o.safetensors",
          "--device", "nonsense"], "--device='nonsense'; expected a device"),
        (["export", "--lora", "--base", pair[0], "--student", pair[1], "--out", tmp_path / "file" / "o.safetensors",
          "--device", "cpu"], "is a file, not a folder"),
        (["distill", "--preset", "toy-dmd", "--out", tmp_path / "file" / "run"], "is a file, not a folder"),
        (["distill", "--preset", "toy-dmd", "--out", tmp_path / "run", "--align-start-step", "5"],
         "--align-start-step was renamed to --align-start-iter"),
        (["distill", "--preset", "toy-dmd", "--out", tmp_path / "run", "--ema-start", "5"],
         "--ema-start was renamed to --ema-start-iter"),
    ]
    if not torch.cuda.is_available():
        cases.append((["export", "--lora", "--base", pair[0], "--student", pair[1], "--out", tmp_path / "c.safetensors",
                       "--device", "cuda"], "no CUDA device: use --device cpu"))
    for args, words in cases:
        proc = cli(*args)
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr[-1500:])
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_teacher_export_is_checked_before_training(tmp_path):
    save_file({"x": torch.ones(1)}, str(tmp_path / "mine.safetensors"))
    proc = cli("teacher", "--out", tmp_path / "run", "--export", tmp_path / "mine.safetensors", "--max-steps", 1)
    assert proc.returncode == 2 and "was not written by Salt" in proc.stderr, proc.stderr[-1500:]
    assert not (tmp_path / "run").exists()                         # no training started


@pytest.mark.parametrize("value, words", [("--listen 0.0.0.0", "sets ['--listen']"), ("--port=8188", "sets ['--port=8188']"),
                                          ("--base-directory /", "sets ['--base-directory']"),
                                          ("--base-dir /", "sets ['--base-dir']"), ("--liste 0.0.0.0", "sets ['--liste']"),
                                          ("--database-url sqlite:////tmp/x.db", "sets ['--database-url']"),
                                          ('--front-end-root "/x', "does not split into flags")])
def test_the_harness_keeps_its_isolation_whatever_salt_comfyui_args_say(value, words):
    from comfyui_salt.dev.comfy_runner import ComfyError, extra_args
    with pytest.raises(ComfyError, match=words.replace("[", r"\[").replace("]", r"\]")):
        extra_args(value)
    assert extra_args("--front-end-root /x --preview-method auto") == ["--front-end-root", "/x", "--preview-method",
                                                                         "auto"]


def test_cli_refusals_found_by_an_outside_audit_are_one_line_naming_the_input(tmp_path):
    """Each was a traceback, a quoted KeyError, exit 1, or a refusal only after the work: an export into a folder
    that cannot be written (checked before training now), an unknown preset, `export --lora` without `--base`,
    export-teacher of a damaged config.json or of a student's run, a demo student that does not exist."""
    import json
    import subprocess
    import sys
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    probe = readonly / "probe"
    try:
        probe.write_text("x")
        writable = True           # root: permission bits do not stop it; a read-only mount would
    except OSError:
        writable = False
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)
    (run / "checkpoints" / "step_00000001" / "COMPLETE").write_text("")
    (run / "config.json").write_text("{'total_steps': ")
    student_run = tmp_path / "student_run"
    (student_run / "checkpoints" / "step_00000001").mkdir(parents=True)
    (student_run / "checkpoints" / "step_00000001" / "COMPLETE").write_text("")
    (student_run / "config.json").write_text(json.dumps({"gen_steps": 3, "sc_weight": 0.2}))
    cases = [(["distill", "--preset", "nope", "--out", str(tmp_path / "x")],
              "error: unknown distillation preset 'nope'"),
             (["export", "--lora", "--student", str(tmp_path), "--out", str(tmp_path / "l.safetensors")],
              "error: export --lora: --base is required"),
             (["export-teacher", "--run", str(run), "--out", str(tmp_path / "t.safetensors")],
              "config.json: unreadable (SyntaxError); restore it"),
             (["export-teacher", "--run", str(student_run), "--out", str(tmp_path / "t.safetensors")],
              "is a student's run (distill or ode-init), not a teacher's"),
             (["demo", "--student", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "demo")],
              "demo --student")]
    if not writable:
        cases.append((["teacher", "--out", str(tmp_path / "teach"), "--total-steps", "1", "--export",
                       str(readonly / "t.safetensors")], "cannot be written"))
    for args, words in cases:
        proc = subprocess.run([sys.executable, "-m", "comfyui_salt", *args], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, (args,
                                                                                                  proc.stderr[-800:])
    assert not (tmp_path / "demo").exists() and not (tmp_path / "teach").exists()
    readonly.chmod(0o755)
