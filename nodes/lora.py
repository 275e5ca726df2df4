"""SaltExtractLoRA: a distilled student as a LoRA file on its base, for ComfyUI's own LoraLoaderModelOnly.

The math is `salt_core.lora` (truncated SVD per linear layer), the file `training.lora_export`; this node
only picks the destination (`models/loras/salt/<name>.safetensors`) and returns the energy report.
"""
import os

from ..salt_core.lora import format_report
from ..salt_core.validate import check_choice, check_count, quote
from ..training.lora_export import DTYPES, export_lora
from ..training.runs import WINDOWS_NAME_RULE, is_plain_name   # one rule for the names the pack writes under
from .bridge import io, ui
from .bridge.paths import loras_directory
from .models import weights_in_use
from .types import SaltModelType

LORA_FOLDER = "salt"                                   # under models/loras
REPORT_LINES = 16                                      # worst layers shown in the node's report


def lora_path(name: str) -> str:
    """`<loras>/salt/<name>.safetensors`, or where a file of that name exists the first free
    `<name>_00001_.safetensors` (the counter ComfyUI's own savers use): a LoRA the user has is never replaced. An
    error for names that are not plain file names."""
    if isinstance(name, str) and name.lower().endswith(".safetensors"):    # the extension is the node's to add
        name = name[:-len(".safetensors")]
    if not is_plain_name(name):
        raise ValueError(f"SaltExtractLoRA: name={quote(name)}; expected a plain file name (letters, digits, '_', "
                         f"'-', '.'; up to 100 characters{WINDOWS_NAME_RULE}), e.g. 'salt_wan_4step_r64'")
    folder = os.path.join(loras_directory(), LORA_FOLDER)
    path, counter = os.path.join(folder, name + ".safetensors"), 0
    while os.path.lexists(path):
        counter += 1
        path = os.path.join(folder, f"{name}_{counter:05}_.safetensors")
    return path


def extract(base, student, rank: int, include_diffs: bool, dtype: str, name: str) -> str:
    """Write student − base as a LoRA; the report names the file as LoraLoaderModelOnly lists it.

    Each layer of both is read onto the compute device as its model computes with it (`weights_in_use`: LoRA
    patches applied, one layer at a time), so the SVDs run there; a file model is loaded as for sampling, the
    student last (the base may be offloaded again to make room: its tensors stay valid, only slower to read)."""
    check_choice("dtype", dtype, DTYPES, where="SaltExtractLoRA")
    rank = check_count("rank", rank, where="SaltExtractLoRA")   # a link may send True or 2.5; a large one is full rank
    path = lora_path(name)                                   # checked before any SVD
    with weights_in_use(base) as base_weights, weights_in_use(student) as student_weights:
        path, reports = export_lora(base_weights, student_weights, path, rank, diffs=include_diffs, dtype=dtype)
    return f"wrote loras/{LORA_FOLDER}/{os.path.basename(path)} (rank {rank})\n{format_report(reports, REPORT_LINES)}"


class SaltExtractLoRA(io.ComfyNode):
    """student − base as a low-rank LoRA in models/loras/salt, loadable with LoraLoaderModelOnly."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltExtractLoRA",
            display_name="Salt Extract LoRA",
            category="Salt/training",
            description="Writes the difference between a distilled student and its base as a LoRA "
                        "(models/loras/salt/<name>.safetensors): every changed linear layer as rank-r factors "
                        "(truncated SVD), changed biases / norms / modulation as exact .diff / .diff_b. Load it "
                        "with LoraLoaderModelOnly on the base Wan model (ComfyUI or WanVideoWrapper). The report "
                        "lists the energy each layer keeps.",
            inputs=[
                SaltModelType.Input("base", tooltip="The model the student was distilled from (SaltLoadCausalModel, "
                                                    "or SaltCausalFromModel on the native base MODEL)."),
                SaltModelType.Input("student", tooltip="The distilled student (SaltDistill or SaltLoadCausalModel)."),
                io.Int.Input("rank", default=64, min=1, max=8192,
                             tooltip="Rank of each linear layer's factors. Larger keeps more of the student; a rank "
                                     ">= the layer width (1536 for Wan 1.3B) keeps it exactly."),
                io.Boolean.Input("include_diffs", default=True,
                                 tooltip="Also store changed biases, norm gains, modulation tables and the patch conv "
                                         "as exact .diff / .diff_b keys (ComfyUI and WanVideoWrapper apply them; "
                                         "off for loaders that read only lora_up / lora_down)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="bf16", tooltip="Dtype of the stored tensors."),
                io.String.Input("name", default="salt_student_lora",
                                tooltip="File name (without .safetensors) under models/loras/salt; an existing file "
                                        "of that name is kept and the new one numbered (name_00001_)."),
            ],
            outputs=[io.String.Output(tooltip="Where the LoRA was written and the energy kept per layer.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, name=None) -> bool | str:
        """Reject a bad file name when the prompt is queued."""
        try:
            name is None or lora_path(name)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, base, student, rank, include_diffs, dtype, name) -> io.NodeOutput:
        report = extract(base, student, rank, include_diffs, dtype, name)
        return io.NodeOutput(report, ui=ui.PreviewText(report))
