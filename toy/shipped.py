"""The small model files shipped inside the package: the toy teacher and the Salt toy student.

File reading lives here, not in salt_core. Rebuild commands are in docs/toy_world.md ("The world and the teacher"
and "Distillation experiment").
"""
import os

from ..weights.files import load_model, read_metadata, save_model

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
TOY_TEACHER = os.path.join(ASSETS, "toy_teacher.safetensors")
TOY_STUDENT = os.path.join(ASSETS, "toy_salt_student.safetensors")
ROLE_META = "salt_role"   # "student" on the student; the teacher, shipped first, has no role key


def _metadata(path: str, what: str, section: str) -> dict:
    """Header metadata of a shipped asset, or an error saying how to restore or rebuild it."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{what} not found at {path}; restore it from git (`git checkout -- toy/assets`) or rebuild it "
            f"with the commands in docs/toy_world.md, '{section}'")
    return read_metadata(path)


def load_toy_teacher(path: str = TOY_TEACHER):
    """(model in eval mode, teacher mode 'teacher_forcing'|'bidirectional', description) of the shipped teacher."""
    meta = _metadata(path, "toy teacher", "The world and the teacher")
    model, _ = load_model(path)
    mode = meta.get("teacher_mode", "teacher_forcing")
    steps, weights = meta.get("train_steps", "?"), meta.get("teacher_weights", "ema")
    return model.eval(), mode, f"{os.path.basename(path)} ({mode}, {weights} weights after {steps} training steps)"


def load_toy_student(path: str = TOY_STUDENT):
    """(model in eval mode, description) of the shipped Salt toy student (causal, few-step, no CFG)."""
    meta = _metadata(path, "Salt toy student", "Distillation experiment")
    model, _ = load_model(path)
    return model.eval(), (f"{os.path.basename(path)} (causal student, {meta.get('salt_preset', '?')}, "
                          f"{meta.get('gen_steps', '?')} generator updates)")


def load_toy_asset(path: str):
    """(model, 'student'|teacher mode, description) of any shipped toy asset, by its role metadata."""
    if _metadata(path, "toy asset", "The world and the teacher").get(ROLE_META) == "student":
        model, description = load_toy_student(path)
        return model, "student", description
    return load_toy_teacher(path)


def write_toy_student(student_file: str, dest: str = TOY_STUDENT, preset: str = "toy-salt", gen_steps: int = 0):
    """Copy an exported student (`<run>/export/student.safetensors`) to `dest` with its role metadata; returns dest."""
    model, _ = load_model(student_file)
    save_model(model, dest, layout="wan",
               extra_metadata={ROLE_META: "student", "salt_preset": preset, "gen_steps": gen_steps})
    return dest
