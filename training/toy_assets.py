"""The small model files shipped inside the package (toy teacher, later the Salt toy student).

File reading lives here, not in salt_core. Rebuild commands are in the README ("Toy world").
"""
import os

from .files import load_model, read_checkpoint

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "salt_core", "assets")
TOY_TEACHER = os.path.join(ASSETS, "toy_teacher.safetensors")


def load_toy_teacher(path: str = TOY_TEACHER):
    """(model in eval mode, teacher mode 'teacher_forcing'|'bidirectional', description) of the shipped teacher."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"toy teacher not found at {path}; restore it from git (`git checkout -- salt_core/assets`) or rebuild "
            f"it with the commands in README, 'Toy world'")
    _, meta = read_checkpoint(path)
    model, _ = load_model(path)
    mode = meta.get("teacher_mode", "teacher_forcing")
    steps, weights = meta.get("train_steps", "?"), meta.get("teacher_weights", "ema")
    return model.eval(), mode, f"{os.path.basename(path)} ({mode}, {weights} weights after {steps} training steps)"
