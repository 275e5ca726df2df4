"""Chunk-by-chunk decoding of a stream's Wan 2.1 latents: with the graph's Wan VAE, or with a tiny decoder
(TAEHV) from models/vae_approx; both give the frames a whole-latent VAEDecode gives.
"""
import sys

import torch

import comfy.model_management
import comfy.utils
import folder_paths

from ...salt_core.validate import quote


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

    def park(self) -> None:
        """Move the carried state to the CPU between queue runs of a stream (the next push takes it back)."""
        self.feat_cache = [_moved(t, "cpu") for t in self.feat_cache]
        self.pending = _moved(self.pending, "cpu")

    def held_bytes(self, device=None) -> int:
        """Bytes of the carried state (the causal convolutions' feature cache, a frame waiting for its pair): at
        832×480 about 3.5 GiB in float32; on `device` only when given."""
        return carried_bytes(self.feat_cache + [self.pending], device)

    @torch.no_grad()
    def push(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent frames (B, 16, n, H/8, W/8) in ComfyUI's LATENT space → the IMAGE frames they complete
        (B·frames, H, W, 3) in [0, 1], float32 on ComfyUI's intermediate device (0 frames while a pair waits)."""
        vae = self.vae
        self.feat_cache = [_moved(t, vae.device) for t in self.feat_cache]   # a parked stream's state, back
        self.pending = _moved(self.pending, vae.device)
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


def carried_bytes(values, device=None) -> int:
    """Bytes of the tensors among `values` (a decoder's carried state; other entries count nothing), only those on
    `device` when given (e.g. torch.device("cpu"): what a parked stream holds on the host)."""
    return sum(v.numel() * v.element_size() for v in values
               if isinstance(v, torch.Tensor) and (device is None or v.device.type == device.type))


def _moved(value, device):
    """A carried tensor on `device` (anything else, e.g. the Wan VAE's "Rep" cache marks or None, as it is)."""
    return value.to(device) if isinstance(value, torch.Tensor) else value


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

    def park(self) -> None:
        """Move the carried memories to the CPU between queue runs of a stream (the next push takes them back)."""
        self.memory = [_moved(t, "cpu") for t in self.memory]

    def held_bytes(self, device=None) -> int:
        """Bytes of the carried memories; on `device` only when given."""
        return carried_bytes(self.memory, device)

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
        self.memory = [_moved(t, vae.device) for t in self.memory]
        outs = []
        for t in range(x.shape[2]):
            outs += self._layers(x[:, :, t])
        drop = min(self.to_trim, len(outs))
        outs, self.to_trim = outs[drop:], self.to_trim - drop
        if not outs:
            return torch.empty(0, x.shape[3] * 8, x.shape[4] * 8, 3)
        frames = vae.process_output(torch.stack(outs, 2).to(device=vae.output_device, dtype=torch.float32))
        return frames.movedim(1, -1).flatten(0, 1)                             # (B·frames, H, W, 3)
