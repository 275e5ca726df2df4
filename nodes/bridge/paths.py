"""ComfyUI's folders: the model files a node lists and reads, the input and output folders, and the check
that a client-sent name stays inside its folder.
"""
import os

import folder_paths

from ...salt_core.validate import quote


DIFFUSION_MODELS = "diffusion_models"   # ComfyUI's folder for bare transformer weights (models/diffusion_models)
LORAS = "loras"                          # ComfyUI's LoRA folder (models/loras), read by LoraLoaderModelOnly


def diffusion_model_files() -> list:
    """Checkpoint names (relative paths) in ComfyUI's diffusion_models folders."""
    return folder_paths.get_filename_list(DIFFUSION_MODELS)


def diffusion_model_path(name: str) -> str:
    """Absolute path of a file in the diffusion_models folders; FileNotFoundError naming the folders if absent."""
    path = folder_paths.get_full_path(DIFFUSION_MODELS, name)
    if path is None:
        folders = folder_paths.get_folder_paths(DIFFUSION_MODELS)
        raise FileNotFoundError(f"no file {quote(name)} in the diffusion_models folders {folders}; put the checkpoint "
                                f"there and refresh the node (R), or pick one of {diffusion_model_files()[:8]}")
    return path


def diffusion_models_directory() -> str:
    """The folder where trained students are published: the first one named `diffusion_models` (ComfyUI lists
    the legacy `models/unet` first), else the first registered one."""
    folders = folder_paths.get_folder_paths(DIFFUSION_MODELS)
    return next((f for f in folders if os.path.basename(os.path.normpath(f)) == DIFFUSION_MODELS), folders[0])


def _inside(name, base: str, is_kind) -> str:
    """The path of `name` (relative to `base`, a subfolder allowed) if it names something inside `base` for which
    `is_kind` (os.path.isfile / isdir) holds; else None. Decided by the name alone, as ComfyUI's folder_paths does
    (so a user's symlinks inside the folder work; a client cannot create any): absolute names, drive names, `~`,
    `..` escapes and NUL are refused; so is a rooted name (a leading `/` or `\\`): on Windows since Python 3.13 `\\x`
    is not absolute, yet joining it to `base` lands at the drive's root. Last, the joined path must lie inside `base`
    (as ComfyUI's upload route checks it)."""
    if not isinstance(name, str) or not name or "\x00" in name or name.startswith("~"):
        return None
    norm = os.path.normpath(name)
    if (os.path.isabs(norm) or os.path.splitdrive(norm)[0] or norm.startswith(("/", "\\")) or norm == os.pardir
            or norm.startswith(os.pardir + os.sep)):
        return None
    path = os.path.join(base, norm)
    root = os.path.abspath(base)
    if os.path.commonpath([root, os.path.abspath(path)]) != root:
        return None
    return path if is_kind(path) else None


def input_file(name, what: str) -> str:
    """The path of a file the user uploaded to (or put in) ComfyUI's input folder, by its name there (a subfolder
    allowed), as LoadImage resolves its files. A missing file and one outside the folder (absolute, `..`) get the
    same refusal, so a client learns nothing of the server's other files."""
    path = _inside(name, folder_paths.get_input_directory(), os.path.isfile)
    if path is None:
        raise ValueError(f"{what}={quote(name)} is not a file in ComfyUI's input folder; upload it there (or copy it "
                         f"into ComfyUI/input) and give its name, e.g. prompts.txt")
    return path


def models_subfolder(kind: str, name, what: str) -> str:
    """The path of a folder inside one of ComfyUI's `kind` model folders (e.g. a Hugging Face umT5 folder in
    models/text_encoders), by its name there; refused alike when missing or outside."""
    for base in folder_paths.get_folder_paths(kind):
        path = _inside(name, base, os.path.isdir)
        if path is not None:
            return path
    raise ValueError(f"{what}={quote(name)} is not a folder in ComfyUI's models/{kind}; put it there and give its "
                     f"name")


def loras_directory() -> str:
    """The first (writable) loras folder, where extracted LoRAs are written."""
    return folder_paths.get_folder_paths(LORAS)[0]


def output_directory() -> str:
    """ComfyUI's output folder (--output-directory, default <base>/output)."""
    return folder_paths.get_output_directory()
