"""The one module of the pack that imports ComfyUI: the V3 node API and the few internals the nodes use.

Everything else in `nodes/` imports `io` / `ComfyExtension` and these helpers from here, so a change of
ComfyUI internals is fixed in one place. Knows nothing of Salt models beyond tensors and modules.
"""
import base64
import contextlib
import io as io_module
import os
import sys

import torch
from PIL import Image

import comfy.cli_args
import comfy.latent_formats
import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.samplers
import comfy.utils
import folder_paths
import latent_preview
from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401  (re-exported: nodes import them from here)

from ..salt_core.validate import quote

DIFFUSION_MODELS = "diffusion_models"   # ComfyUI's folder for bare transformer weights (models/diffusion_models)
LORAS = "loras"                          # ComfyUI's LoRA folder (models/loras), read by LoraLoaderModelOnly
PREVIEW_PIXELS = 128                     # previews of tiny pixel latents are upscaled to about this size


# -- files ----------------------------------------------------------------------------------------------
def diffusion_model_files() -> list:
    """Checkpoint names (relative paths) in ComfyUI's diffusion_models folders."""
    return folder_paths.get_filename_list(DIFFUSION_MODELS)


def diffusion_model_path(name: str) -> str:
    """Absolute path of a file in the diffusion_models folders; FileNotFoundError naming the folders if absent."""
    path = folder_paths.get_full_path(DIFFUSION_MODELS, name)
    if path is None:
        folders = folder_paths.get_folder_paths(DIFFUSION_MODELS)
        raise FileNotFoundError(f"no file {name!r} in the diffusion_models folders {folders}; put the checkpoint "
                                f"there and refresh the node (R), or pick one of {diffusion_model_files()[:8]}")
    return path


def diffusion_models_directory() -> str:
    """The folder where trained students are published: the first one named `diffusion_models` (ComfyUI lists
    the legacy `models/unet` first), else the first registered one."""
    folders = folder_paths.get_folder_paths(DIFFUSION_MODELS)
    return next((f for f in folders if os.path.basename(os.path.normpath(f)) == DIFFUSION_MODELS), folders[0])


def free_memory(device, patcher=None) -> int:
    """Bytes ComfyUI reports free on `device` (device memory, or RAM for the CPU): through `patcher`'s own query
    where ComfyUI has one (0.16+: it adds what Dynamic VRAM can evict), else the module-level one."""
    query = getattr(patcher, "get_free_memory", None)
    if query is not None:
        return int(query(device))
    return int(comfy.model_management.get_free_memory(device))


def _inside(name, base: str, is_kind) -> str:
    """The path of `name` (relative to `base`, a subfolder allowed) if it names something inside `base` for which
    `is_kind` (os.path.isfile / isdir) holds; else None. Decided by the name alone, as ComfyUI's folder_paths does
    (so a user's symlinks inside the folder work; a client cannot create any): absolute names, drive names, `~`,
    `..` escapes and NUL are refused."""
    if not isinstance(name, str) or not name or "\x00" in name or name.startswith("~"):
        return None
    norm = os.path.normpath(name)
    if os.path.isabs(norm) or os.path.splitdrive(norm)[0] or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        return None
    path = os.path.join(base, norm)
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


# -- model management -----------------------------------------------------------------------------------
# UNETLoader's weight_dtype options → storage dtype of the linear layers' weights (None: the compute dtype).
# "_fast" also multiplies in fp8 where the GPU supports it (comfy.ops.fp8_ops); elsewhere it casts like the rest.
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
                 "fp8_e5m2": torch.float8_e5m2}


def model_offload_device() -> torch.device:
    """Where ComfyUI keeps diffusion models between uses: the CPU (the GPU under --highvram / --gpu-only)."""
    return comfy.model_management.unet_offload_device()


def store_linear_weights(module: torch.nn.Module, weight_dtype: str, compute_dtype: torch.dtype) -> int:
    """Store every `nn.Linear` weight of `module` in `weight_dtype` (a WEIGHT_DTYPES name), cast to
    `compute_dtype` layer by layer when used, as UNETLoader's models do; returns the number of layers converted.

    The layers become ComfyUI's own cast-on-use ops (`comfy.ops.pick_operations`: manual_cast, or fp8_ops for
    *_fast on GPUs with fp8 matmul; "default" keeps the compute dtype in plain ops that compute as nn.Linear but
    that Dynamic VRAM can stream); biases stay in the compute dtype. Each weight is converted in turn, so memory
    grows by one layer at most.
    """
    storage = WEIGHT_DTYPES[weight_dtype] or compute_dtype
    ops = comfy.ops.pick_operations(storage, compute_dtype, load_device=torch_device(),
                                    fp8_optimizations=weight_dtype.endswith("_fast"))
    linears = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if type(child) is torch.nn.Linear]
    for parent, name, old in linears:
        new = ops.Linear(old.in_features, old.out_features, bias=old.bias is not None, device="meta")
        new.weight = torch.nn.Parameter(old.weight.detach().to(storage), requires_grad=False)
        new.bias = old.bias
        setattr(parent, name, new)
    return len(linears)


def model_patcher(module: torch.nn.Module):
    """ComfyUI's core ModelPatcher for `module` (weights on the offload device), as UNETLoader's models get: the
    Dynamic VRAM one where ComfyUI installed it (0.16+ on NVIDIA), else the classic one. Model management loads it
    onto the compute device when asked (`load_for_sampling`) and offloads it when another model needs the room."""
    cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return cls(module, load_device=torch_device(), offload_device=model_offload_device())


def is_dynamic(patcher) -> bool:
    """Whether `patcher` loads dynamically (ComfyUI 0.16+ Dynamic VRAM): its weights stay in host memory, each
    cast-on-use layer is streamed to the device and LoRA-patched per cast, never written into the Parameter."""
    query = getattr(patcher, "is_dynamic", None)
    return bool(query()) if query is not None else False


def load_for_sampling(patcher, memory_required: int = 0, complete: bool = True) -> None:
    """Have ComfyUI's model management put a ModelPatcher's module on the compute device, first freeing other
    models for its weights plus `memory_required` bytes (activations, KV cache); None (unmanaged) is left alone.

    `complete`: a classic patcher must load every weight (a module whose plain layers are not cast to the device on
    use, as Salt's own norms and modulation tables are not); a partial load all the same (ComfyUI does one under
    --novram, or when the device is too small) raises RuntimeError naming the cause. A dynamic patcher (Dynamic VRAM)
    is loaded as ComfyUI decides: its plain layers are always put on the device, its cast-on-use layers streamed.
    Otherwise (a native MODEL, all of whose layers ComfyUI casts on use) loaded as ComfyUI's own samplers load it.
    """
    if patcher is None:
        return
    full = complete and not is_dynamic(patcher)
    comfy.model_management.load_models_gpu([patcher], memory_required=memory_required,
                                           **({"force_full_load": True} if full else {}))
    loaded, size = patcher.loaded_size(), patcher.model_size()
    if full and (getattr(patcher.model, "model_lowvram", False) or loaded < size):
        raise RuntimeError(f"ComfyUI loaded only {loaded / 2**20:.0f} of {size / 2**20:.0f} MiB of the model onto "
                           f"{patcher.load_device} (a partial 'lowvram' load: ComfyUI makes one under --novram, or "
                           f"when the device cannot hold the model beside {memory_required / 2**20:.0f} MiB of "
                           f"activations and KV cache); a Salt model loaded from a file computes with every weight "
                           f"on the device. Start ComfyUI without --novram, free the device (fewer loaded models, "
                           f"smaller batch or video), load the file with weight_dtype fp8, or use --cpu")


def cast_weight_bias(module: torch.nn.Module, dtype: torch.dtype, device) -> tuple:
    """(weight, bias) of one of ComfyUI's cast-on-use layers as its own forward would use them: on `device` in
    `dtype`, with the LoRA patches ComfyUI applies per cast (lowvram / Dynamic VRAM) applied. The layer's own
    tensors when they are already that (no copy); a cast is copied (a Dynamic VRAM cast may live in a shared buffer
    the next cast reuses, and these small layers are held for a whole sampling); the cast is released as
    ComfyUI's own ops release it."""
    weight, bias, stream = comfy.ops.cast_bias_weight(module, dtype=dtype, device=device, bias_dtype=dtype,
                                                      offloadable=True)

    def hold(t, own):   # the layer's own tensor (already in place): no copy; a cast: a copy of its own
        return t if t is None or (own is not None and t.data_ptr() == own.data_ptr()) else t.clone()
    held = (hold(weight, module.weight), hold(bias, module.bias))
    comfy.ops.uncast_bias_weight(module, weight, bias, stream)
    return held


def patched_weight(patcher, key: str, dtype: torch.dtype, device) -> torch.Tensor:
    """Tensor `key` of `patcher`'s model (e.g. 'diffusion_model.blocks.0.ffn.0.weight') as that MODEL computes with
    it, on `device` in `dtype`: the unpatched original (from the backup clones of one module share, if some clone
    wrote its patches into it) with `patcher`'s own patches applied by ComfyUI's `calculate_weight` in float32.
    Tensors stored in fp8 are returned as stored (fp8); quantized storage (0.33's scaled fp8) and weight patches
    that are functions (hooks, wrappers) are refused, naming the cause and the fix."""
    backup = patcher.backup.get(key)
    original = backup.weight if backup is not None else comfy.utils.get_attr(patcher.model, key)
    if any(c.__name__ == "QuantizedTensor" for c in type(original).__mro__):   # reports its compute dtype
        raise ValueError(f"the MODEL stores {key!r} quantized ({type(original).__name__}, e.g. a scaled-fp8 file); "
                         f"a LoRA of it would mostly hold rounding noise: load the full-precision (bf16 / fp16) file")
    if patcher.weight_wrapper_patches.get(key) or getattr(patcher, "hook_patches", None):
        raise ValueError(f"the MODEL has hook or weight-wrapper patches on {key!r}, which ComfyUI applies inside its "
                         f"own forward and Salt cannot read per weight; remove them for the extraction, or start "
                         f"ComfyUI with --disable-dynamic-vram and apply them as plain LoRAs")
    if original.dtype.itemsize == 1:
        return original.detach().to(device)
    patches = patcher.patches.get(key)
    if not patches:
        return original.detach().to(device, dtype)
    return comfy.lora.calculate_weight(patches, original.detach().to(device, torch.float32, copy=True), key).to(dtype)


def casts_on_use(module: torch.nn.Module) -> bool:
    """Whether `module` is one of ComfyUI's cast-on-use ops (comfy.ops layers: what partial and dynamic loads
    stream to the device and patch per cast)."""
    return hasattr(module, "comfy_cast_weights")


def native_compute_dtype(patcher, stored: torch.dtype) -> torch.dtype:
    """The dtype a native MODEL computes in: its manual-cast dtype (fp8 or other storage cast per layer), else the
    dtype its weights are stored in."""
    return getattr(getattr(patcher, "model", None), "manual_cast_dtype", None) or stored


# -- devices, interruption, progress --------------------------------------------------------------------
def torch_device() -> torch.device:
    """The device ComfyUI computes on (cpu under --cpu)."""
    return comfy.model_management.get_torch_device()


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (call between steps)."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def interrupt_requested() -> bool:
    """Whether the user pressed Cancel (the flag stays set; `raise_interrupted` clears it)."""
    return comfy.model_management.processing_interrupted()


def raise_interrupted():
    """Raise ComfyUI's interrupt exception and clear the Cancel flag, as a cancelled sampler does."""
    comfy.model_management.interrupt_current_processing(False)
    raise comfy.model_management.InterruptProcessingException()


def free_memory_for_training() -> None:
    """Unload the models ComfyUI holds (they reload when next used), so a training job has the device memory."""
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


@contextlib.contextmanager
def training_mode():
    """Autograd on inside a node: ComfyUI runs every node under torch.inference_mode()."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def ksampler(sample_fn, **extra_options):
    """A ComfyUI SAMPLER around a k-diffusion-contract function (works with SamplerCustomAdvanced)."""
    return comfy.samplers.KSAMPLER(sample_fn, extra_options=extra_options)


class PixelPreviewer(latent_preview.LatentPreviewer):
    """Previews of the toy world's latents, which are RGB pixels in [-1, 1]: shown as they are, enlarged by
    nearest neighbour to about PREVIEW_PIXELS (ComfyUI has no latent format for them)."""

    def decode_latent_to_preview(self, x0):
        rgb = x0[0, :, 0].float().movedim(0, -1)                        # (H, W, 3)
        scale = max(1, PREVIEW_PIXELS // max(rgb.shape[0], rgb.shape[1]))
        return latent_preview.preview_to_image(rgb.repeat_interleave(scale, 0).repeat_interleave(scale, 1))


def get_previewer(latent_format: str):
    """The previewer the user chose for ComfyUI (--preview-method: none / auto / latent2rgb / taesd, TAESD meaning
    the Wan 2.1 tiny decoder lighttaew2_1 in models/vae_approx where installed), or None for no previews or latents
    it cannot show. Salt's Wan latents are model-space, as ComfyUI's own samplers hand them to the previewer."""
    if comfy.cli_args.args.preview_method == comfy.cli_args.LatentPreviewMethod.NoPreviews:
        return None
    if latent_format == "wan21":
        return latent_preview.get_previewer(torch_device(), comfy.latent_formats.Wan21())
    if latent_format == "pixels":
        return PixelPreviewer()
    return None


def _frames_preview(previewer, frames: torch.Tensor):
    """ComfyUI preview tuple of frames (1, C, n, H, W), decoded one by one and shown side by side."""
    images = [previewer.decode_latent_to_preview(frames[:, :, i:i + 1]) for i in range(frames.shape[2])]
    strip = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)))
    x = 0
    for im in images:
        strip.paste(im, (x, 0))
        x += im.width
    return "JPEG", strip, latent_preview.MAX_PREVIEW_RESOLUTION


class Progress:
    """ComfyUI's progress bar for `total` steps, with previews through the user's previewer (`get_previewer`)."""

    MAX_CHUNK_FRAMES = 8    # frames of a finished chunk shown side by side

    def __init__(self, total: int, latent_format: str):
        self.bar, self.latent_format = comfy.utils.ProgressBar(total), latent_format
        self.previewer = get_previewer(latent_format)

    def _previewable(self, x0) -> bool:
        channels = {"wan21": 16, "pixels": 3}.get(self.latent_format)
        return self.previewer is not None and x0 is not None and x0.ndim == 5 and x0.shape[1] == channels

    def update(self, step: int, x0: torch.Tensor = None):
        """Report `step` of total; x0 (B, C, F, H, W) the current prediction: its last frame of sample 0 is shown."""
        preview = None
        if self._previewable(x0):
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0[:1, :, -1:].float())
        self.bar.update_absolute(step, preview=preview)

    def show_chunk(self, step: int, chunk: torch.Tensor):
        """Report `step` with a preview of a finished chunk (B, C, n, H, W): its frames of sample 0 side by side."""
        preview = None
        if self._previewable(chunk):
            preview = _frames_preview(self.previewer, chunk[:1, :, -self.MAX_CHUNK_FRAMES:].float())
        self.bar.update_absolute(step, preview=preview)


# -- latents and native models --------------------------------------------------------------------------
def latent_to_comfy(x: torch.Tensor, latent_format: str) -> torch.Tensor:
    """Model-space latents (B, C, F, H, W) → ComfyUI's LATENT space (what VAEDecode reads).

    ComfyUI stores Wan latents un-normalised and normalises them inside the model (process_latent_in);
    Salt models work on normalised latents, so Wan latents are de-normalised here. Pixel latents pass.
    """
    if latent_format == "wan21":
        return comfy.latent_formats.Wan21().process_out(x)
    return x


# Native Wan backbones with the original Wan parameter names: WanModel (comfy/ldm/wan/model.py) and, in
# ComfyUI after PR #13082, the weight-compatible autoregressive CausalWanModel (comfy/ldm/wan/ar_model.py).
NATIVE_WAN_CLASSES = ("WanModel", "CausalWanModel")
NATIVE_PREFIX = "diffusion_model."      # a native backbone's state-dict keys in its MODEL (patches, backups)


def latent_from_comfy(x: torch.Tensor, latent_format: str) -> torch.Tensor:
    """ComfyUI's LATENT space (B, C, F, H, W) → Salt's model space: the inverse of `latent_to_comfy`."""
    if latent_format == "wan21":
        return comfy.latent_formats.Wan21().process_in(x)
    return x


def resize_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE (B, H', W', C) → (B, height, width, C), scaled and centre-cropped as ComfyUI's image nodes do."""
    if image.shape[1:3] == (height, width):
        return image
    return comfy.utils.common_upscale(image.movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)


def encode_image(vae, image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE (B, H', W', C) in [0, 1], resized first → the VAE's LATENT samples (B, C, 1, height/8, width/8)."""
    return vae.encode(resize_image(image, width, height)[..., :3])


class WanChunkDecoder:
    """Decodes a stream's Wan 2.1 latent chunks to frames as each chunk finishes, with the graph's own VAE (the
    one VAEDecode uses): ComfyUI's WanVAE decodes causally, latent frame group by group, carrying a feature cache
    of its causal convolutions from group to group. This keeps that cache from chunk to chunk, so the frames equal
    a whole-latent VAEDecode. Groups are the line's own (0.3.75: one latent frame; 0.33: the first frame, then
    pairs); a chunk ending inside a pair keeps its last frame until the next chunk (one latent frame later).

    The first latent frame gives 1 video frame, each later one 4 (Wan's temporal upsampling).
    """

    def __init__(self, vae):
        model = getattr(vae, "first_stage_model", None)
        if type(model).__module__ != "comfy.ldm.wan.vae" or type(model).__name__ != "WanVAE":
            raise TypeError(f"vae: a {type(model).__module__}.{type(model).__name__}; live decoding needs the Wan 2.1 "
                            f"VAE (Load VAE: wan_2.1_vae.safetensors)")
        module = sys.modules[type(model).__module__]
        count = getattr(module, "count_cache_layers", None) or module.count_conv3d
        self.vae, self.model = vae, model
        self.pairs = hasattr(module, "count_cache_layers")     # 0.33 decodes the first frame, then pairs
        self.feat_cache = [None] * count(model.decoder)
        self.pending, self.decoded = None, 0                   # conv2'd frames not yet decoded; frames done

    @torch.no_grad()
    def push(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent frames (B, 16, n, H/8, W/8) in ComfyUI's LATENT space → the IMAGE frames they complete
        (B·frames, H, W, 3) in [0, 1], float32 on ComfyUI's intermediate device (0 frames while a pair waits)."""
        vae = self.vae
        if latent.shape[2]:
            comfy.model_management.load_models_gpu([vae.patcher], memory_required=vae.memory_used_decode(
                latent.shape, vae.vae_dtype))
            x = self.model.conv2(latent.to(device=vae.device, dtype=vae.vae_dtype))   # 1×1×1: frame by frame
            x = x if self.pending is None else torch.cat([self.pending, x], 2)
        else:
            x = self.pending if self.pending is not None else latent
        outs, start = [], 0
        while start < x.shape[2]:
            size = 1 if (self.decoded == 0 or not self.pairs) else 2
            if start + size > x.shape[2]:
                break
            out = self.model.decoder(x[:, :, start:start + size], feat_cache=self.feat_cache, feat_idx=[0])
            outs += out if isinstance(out, list) else [out]
            start, self.decoded = start + size, self.decoded + size
        self.pending = x[:, :, start:] if start < x.shape[2] else None
        if not outs:
            scale = vae.spacial_compression_decode()
            return torch.empty(0, x.shape[3] * scale, x.shape[4] * scale, 3)
        frames = vae.process_output(torch.cat(outs, 2).to(device=vae.output_device, dtype=torch.float32))
        return frames.movedim(1, -1).flatten(0, 1)                             # (B·frames, H, W, 3)


# Tiny Wan 2.1 decoders in models/vae_approx, by the prefixes ComfyUI 0.3.75 and later look for: latent previews
# take the first file starting with "lighttaew2_1" (Wan21's taesd_decoder_name); VAELoader also lists "taew2_1".
TINY_WAN_DECODERS = ("lighttaew2_1", "taew2_1")
VAE_APPROX = "vae_approx"
_TINY_LOADED = {}                                       # path → comfy VAE (the newest one only)


def tiny_wan_decoder_files() -> list:
    """The names of Wan 2.1 tiny decoders (TAEHV state dicts) installed in models/vae_approx."""
    return [n for n in folder_paths.get_filename_list(VAE_APPROX) if n.startswith(TINY_WAN_DECODERS)]


def load_tiny_wan_decoder(name) -> "TinyChunkDecoder":
    """A TinyChunkDecoder for `name` in models/vae_approx (one of tiny_wan_decoder_files(): anything else is
    refused without touching the disk), loaded through ComfyUI's own VAE class; the last one loaded is reused."""
    if not isinstance(name, str) or name not in tiny_wan_decoder_files():
        raise ValueError(f"live_decoder={quote(name)} is not a Wan 2.1 tiny decoder in ComfyUI's models/vae_approx; "
                         f"put lighttaew2_1.safetensors there (or choose 'vae')")
    path = folder_paths.get_full_path(VAE_APPROX, name)
    vae = _TINY_LOADED.get(path)
    if vae is None:
        import comfy.sd
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(path))
        _TINY_LOADED.clear()
        _TINY_LOADED[path] = vae
    return TinyChunkDecoder(vae)


class TinyChunkDecoder:
    """Decodes a stream's Wan 2.1 latent chunks with a tiny decoder (TAEHV, e.g. lighttaew2_1: much faster than the
    Wan VAE, lower quality). ComfyUI decodes TAEHV latent frame by latent frame, each memory block seeing the
    previous frame's input; this carries those memories from chunk to chunk, so the frames equal a whole-latent
    decode by the same VAE (VAEDecode with it loaded by Load VAE). Each latent frame gives 4 frames, of which the
    first 3 of the stream are dropped (as the whole decode trims them): 1 + 4·(n − 1) frames for n latent frames."""

    def __init__(self, vae):
        import comfy.taesd.taehv as taehv
        model = getattr(vae, "first_stage_model", None)
        if not isinstance(model, taehv.TAEHV) or model.latent_channels != 16 or model.patch_size != 1:
            raise TypeError(f"live_decoder: a {type(model).__name__}; expected a Wan 2.1 tiny decoder (TAEHV with 16 "
                            f"latent channels, e.g. lighttaew2_1)")
        self.taehv, self.vae, self.model = taehv, vae, model
        self.memory = [None] * len(model.decoder)       # per layer: a MemBlock's last input, a TPool's pending frames
        self.to_trim = model.frames_to_trim

    def _layers(self, frame: torch.Tensor) -> list:
        """One latent frame (B, C, h, w) through the decoder, depth first as ComfyUI's sequential decode goes (each
        frame a TGrow makes is finished before the next), the memories kept; returns its output frames in order."""
        layers, memory, taehv = self.model.decoder, self.memory, self.taehv
        work, out = [(frame, 0)], []
        while work:
            x, i = work.pop()
            if i == len(layers):
                out.append(x)
                continue
            layer = layers[i]
            if isinstance(layer, taehv.MemBlock):
                past = memory[i] if memory[i] is not None else x * 0
                memory[i] = x
                work.append((layer(x, past), i + 1))
            elif isinstance(layer, taehv.TGrow):
                grown = layer(x)
                B = x.shape[0]
                parts = grown.view(B, layer.stride * x.shape[1], *x.shape[2:]).chunk(layer.stride, 1)
                work += [(p, i + 1) for p in reversed(parts)]     # the first part on top: finished first
            elif isinstance(layer, taehv.TPool):
                raise TypeError("live_decoder: a TPool in a decoder; expected a TAEHV decoder")
            else:
                work.append((layer(x), i + 1))
        return out

    @torch.no_grad()
    def push(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent frames (B, 16, n, H/8, W/8) in ComfyUI's LATENT space → their IMAGE frames (B·frames, H, W, 3), as
        VAEDecode gives them (about [0, 1], not clamped), float32 on ComfyUI's intermediate device."""
        vae, model = self.vae, self.model
        comfy.model_management.load_models_gpu([vae.patcher], memory_required=vae.memory_used_decode(
            latent.shape, vae.vae_dtype))
        x = model.process_in(latent.to(device=vae.device, dtype=vae.vae_dtype))
        outs = []
        for t in range(x.shape[2]):
            outs += self._layers(x[:, :, t])
        drop = min(self.to_trim, len(outs))
        outs, self.to_trim = outs[drop:], self.to_trim - drop
        if not outs:
            return torch.empty(0, x.shape[3] * 8, x.shape[4] * 8, 3)
        frames = vae.process_output(torch.stack(outs, 2).to(device=vae.output_device, dtype=torch.float32))
        return frames.movedim(1, -1).flatten(0, 1)                             # (B·frames, H, W, 3)


def push_event(event: str, data: dict, pixels: int) -> None:
    """Send `data` to every browser over ComfyUI's websocket as `event` (no server: nothing). Its "frames" IMAGE
    (N, H, W, 3) goes as JPEG data URLs, scaled to about `pixels` wide."""
    server = getattr(__import__("server").PromptServer, "instance", None) if "server" in sys.modules else None
    if server is None:
        return
    frames = data.pop("frames")
    urls = []
    for frame in frames:
        image = Image.fromarray((frame.clamp(0, 1) * 255).round().byte().numpy())
        scale = max(1, pixels // max(1, image.width))
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        out = io_module.BytesIO()
        image.save(out, "JPEG", quality=85)
        urls.append("data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode())
    server.send_sync(event, {**data, "frames": urls, "width": frames.shape[2], "height": frames.shape[1]})


def add_routes(prefix: str, handler) -> bool:
    """Register GET and POST `<prefix>/{stream}/{action}` on ComfyUI's server (False without one): `handler(stream,
    action, body)` → (status, JSON) runs in the server's thread; a body that is not JSON is a 400."""
    server = getattr(__import__("server").PromptServer, "instance", None) if "server" in sys.modules else None
    if server is None:
        return False
    from aiohttp import web

    async def route(request):
        body = None
        if request.method == "POST" and request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "the body is not JSON"}, status=400)
        status, reply = handler(request.match_info["stream"], request.match_info["action"], body)
        return web.json_response(reply, status=status)
    server.routes.get(prefix + "/{stream}/{action}")(route)
    server.routes.post(prefix + "/{stream}/{action}")(route)
    return True


UMT5_TOKENIZERS = ("WanT5Tokenizer",)   # ComfyUI's tokenizer class of Wan's umT5-XXL (comfy/text_encoders/wan.py)


def clip_text_encoder(clip):
    """A ComfyUI CLIP → an encoder for training.prompts: texts → one (L_i, D) tensor per text.

    Each text is encoded as CLIPTextEncode does (`clip.tokenize` then `clip.encode_from_tokens`). ComfyUI's Wan
    umT5 pads to 512 tokens and zeroes the padded positions itself; training.prompts cuts or zero-pads to 512.
    """
    if not (callable(getattr(clip, "tokenize", None)) and callable(getattr(clip, "encode_from_tokens", None))):
        raise TypeError(f"clip: got a {type(clip).__name__}; expected a ComfyUI CLIP (the output of Load CLIP with "
                        f"type 'wan', i.e. umT5-XXL)")
    tokenizer = type(getattr(clip, "tokenizer", None))
    if tokenizer.__name__ not in UMT5_TOKENIZERS:
        raise TypeError(f"clip: a CLIP with the {tokenizer.__name__} tokenizer; Wan needs umT5-XXL (Load CLIP, type "
                        f"'wan', umt5_xxl_*.safetensors): another text encoder of the same width would train on the "
                        f"wrong text features")

    def encode(texts: list) -> list:
        return [clip.encode_from_tokens(clip.tokenize(text))[0].float().cpu() for text in texts]   # (1, L, D)[0]
    return encode


def native_wan_module(model_patcher) -> torch.nn.Module:
    """The native Wan backbone (`WanModel` or `CausalWanModel`) of a ComfyUI MODEL, checked, as it is now: its
    LoRA patches are applied only while model management has it loaded (`load_for_sampling`)."""
    inner = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if inner is None:
        raise TypeError(f"model: got a {type(model_patcher).__name__}; expected a ComfyUI MODEL (the output of "
                        f"Load Diffusion Model / UNETLoader or Load Checkpoint)")
    if type(inner).__name__ not in NATIVE_WAN_CLASSES or not type(inner).__module__.startswith("comfy.ldm.wan"):
        raise TypeError(f"model: its diffusion model is {type(inner).__module__}.{type(inner).__name__}; expected "
                        f"comfy.ldm.wan.model.WanModel or comfy.ldm.wan.ar_model.CausalWanModel (a Wan 2.1 T2V "
                        f"checkpoint). Load a Wan 2.1 model, or load a Salt / Self-Forcing file with "
                        f"SaltLoadCausalModel")
    return inner
