"""A native ComfyUI Wan MODEL seen as a Salt WanModel: the view and the ModelPatcher that binds it.

`view_patcher(patcher, view)` clones the MODEL's ModelPatcher into a subclass of its own class (the classic patcher,
0.33's Dynamic VRAM one, or another pack's) that carries `view`, a Salt WanModel built on the meta device. The
patcher binds the view when ComfyUI's model management loads the MODEL (`partially_load`, which every
`load_models_gpu` goes through on 0.3.x and 0.33) and makes it hollow again when ComfyUI detaches it (another
model needs the room, or a clone of the same MODEL loads: ComfyUI's own KSampler on the original MODEL). The
clone carries the MODEL's LoRA patches, so model management treats it as it treats any patched MODEL.

Bound, the view's linear layers *are* the native module's layers (ComfyUI's cast-on-use ops: no copy; each forward
gets its weight as ComfyUI's own Wan does, whether the MODEL is fully loaded with LoRA patches written in, only
partly loaded, or streamed by Dynamic VRAM with patches applied per cast). Every other tensor (patch conv, norm
gains, modulation tables: under 1 % of Wan's weights) is cast once onto the load device in the view's dtype, with
its patches. A detach while a Salt node still computes with the view (another load freeing room mid-block, e.g.
from the live node's decode thread) leaves the view bound until that node's block ends (`view_in_use`) rather than
swapping meta tensors in under a running forward; the native layers it holds are then as ComfyUI left them (weights
a classic unload moved to the offload device, LoRA patches removed), as they would be for ComfyUI's own sampler.
"""
import contextlib
import functools
import threading

import torch

from ...salt_core.model import WanModel
from ...salt_core.rope import RotaryTable
from .memory import cast_weight_bias, casts_on_use


def hollow_view(cfg, dtype: torch.dtype) -> WanModel:
    """A Salt WanModel of `cfg` in `dtype` on the meta device (no storage), frozen and in eval mode; the RoPE table
    (a plain attribute, not a parameter) is built for real."""
    with torch.device("meta"):
        model = WanModel(cfg).to(dtype).requires_grad_(False)
    model.rope = RotaryTable(cfg.head_dim, cfg.rope_max_len, cfg.rope_theta)
    return model.eval()


class SaltViewPatcher:
    """Mixed in before the MODEL patcher's own class (`view_class`); the patcher of a SaltModel with native=True."""
    salt_view = None          # the view (a hollow WanModel while unbound)
    _salt_bound = None        # (patches_uuid, device) of the binding in place; None while hollow
    _salt_hollow = None       # the view's own linear placeholders while bound
    _salt_uses = 0            # Salt blocks computing with the view now (view_in_use, nested)
    _salt_stale = False       # detached during a use: made hollow when the last use ends
    _salt_lock = threading.RLock()   # uses and releases may come from two threads (the live node's decode worker)

    def clone(self, *args, **kwargs):
        """A clone with a hollow view of its own (a view is bound by one patcher at a time)."""
        view = self.salt_view
        return _adopt(super().clone(*args, **kwargs), hollow_view(view.cfg, view.patch_embedding.weight.dtype))

    def partially_load(self, device_to, *args, **kwargs):
        """ComfyUI's load (every load_models_gpu comes here), then the view bound to what it loaded. A bind that
        fails (e.g. out of memory casting the small tensors) detaches the MODEL, as a failed load does, and raises."""
        out = super().partially_load(device_to, *args, **kwargs)
        try:
            self.bind_view()
        except BaseException:
            self.detach()
            raise
        return out

    def partially_unload(self, *args, **kwargs):
        """ComfyUI moves part of the MODEL off the device: the view's casts are dropped (rebound at the next load)
        unless a Salt node computes with them now."""
        freed = super().partially_unload(*args, **kwargs)
        self._release_view()
        return freed

    def detach(self, unpatch_all=True):
        """ComfyUI unloads the MODEL (or a clone of it loads): the view hollow again, once no Salt node uses it."""
        self._release_view()
        return super().detach(unpatch_all)

    def bind_view(self) -> None:
        """Bind the view to the MODEL as it is loaded now; nothing to do when it already is (same patches, same
        device). The native module is never changed (setattr on the view only)."""
        key = (self.patches_uuid, str(self.load_device))
        self._salt_stale = False
        if self._salt_bound == key:
            return
        self.unbind_view()
        view, native = self.salt_view, self.model.diffusion_model
        layers = [n for n, m in view.named_modules() if isinstance(m, torch.nn.Linear)]
        small = _small_tensors(native, set(layers), view.patch_embedding.weight.dtype, self.load_device)
        self._salt_hollow = {n: view.get_submodule(n) for n in layers}
        _set(view, {n: native.get_submodule(n) for n in layers})
        _set(view, {k: torch.nn.Parameter(small[k], requires_grad=False) for k, _ in view.named_parameters()
                    if k.rpartition(".")[0] not in self._salt_hollow})
        self._salt_bound = key

    def unbind_view(self) -> None:
        """The view's own placeholders back (meta tensors): it holds no tensor of the MODEL."""
        if self._salt_hollow is None:
            return
        view, hollow = self.salt_view, self._salt_hollow
        _set(view, hollow)
        _set(view, {k: torch.nn.Parameter(torch.empty(v.shape, dtype=v.dtype, device="meta"), requires_grad=False)
                    for k, v in view.named_parameters() if k.rpartition(".")[0] not in hollow})
        self._salt_hollow, self._salt_bound, self._salt_stale = None, None, False

    @contextlib.contextmanager
    def view_in_use(self):
        """The bound view for a Salt block (call after model management has loaded the MODEL); nested blocks share
        it. A bind that fails leaves the view hollow and the MODEL as it was."""
        with self._salt_lock:
            self.bind_view()
            self._salt_uses += 1
        try:
            yield self.salt_view
        finally:
            with self._salt_lock:
                self._salt_uses -= 1
                if self._salt_stale and not self._salt_uses:
                    self.unbind_view()

    def _release_view(self) -> None:
        with self._salt_lock:
            if self._salt_uses:
                self._salt_stale = True
            else:
                self.unbind_view()


@functools.cache
def view_class(base: type) -> type:
    """The SaltViewPatcher subclass of a ModelPatcher class (one per class)."""
    return type(f"SaltView{base.__name__}", (SaltViewPatcher, base), {})


def view_patcher(patcher, view: WanModel):
    """A clone of the MODEL's `patcher` (its patches, options and load device) that binds `view` (a hollow WanModel
    of the MODEL's native Wan, `hollow_view`) while ComfyUI has the MODEL loaded."""
    return _adopt(patcher.clone(), view)


def _adopt(n, view: WanModel):
    """The patcher `n` (a fresh clone) as a SaltViewPatcher carrying the hollow `view`, with no binding or use of
    its own. A clone that is one already keeps its class; 0.33's clone(disable_dynamic=True) builds the classic
    class, which gets its own SaltView subclass."""
    if not isinstance(n, SaltViewPatcher):
        n.__class__ = view_class(type(n))
    n.salt_view, n._salt_bound, n._salt_hollow, n._salt_uses, n._salt_stale = view, None, None, 0, False
    return n


def _small_tensors(native: torch.nn.Module, skip: set, dtype: torch.dtype, device) -> dict:
    """{name: tensor on `device` in `dtype`} of `native`'s parameters outside the modules named in `skip`: a
    cast-on-use layer's through ComfyUI's cast (patches applied), any other one moved as ComfyUI's Wan moves its
    modulation tables (as loaded: a classic load writes their patches in; 0.33's Dynamic VRAM casts them without
    LoRA patches, as for ComfyUI's own samplers)."""
    out = {}
    for owner, module in native.named_modules():
        if owner in skip:
            continue
        prefix = owner + "." if owner else ""
        own = dict(module.named_parameters(recurse=False))
        if own and casts_on_use(module):
            weight, bias = cast_weight_bias(module, dtype, device)
            own = {"weight": weight, "bias": bias}
        out.update({prefix + k: v.detach().to(device, dtype) for k, v in own.items() if v is not None})
    return out


def _set(model: torch.nn.Module, members: dict) -> None:
    """Set each named member (a Parameter or a module) of `model` to the given object (setattr: no copy, no flag
    changed)."""
    for name, member in members.items():
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner), leaf, member)
