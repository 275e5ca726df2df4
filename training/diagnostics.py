"""Gradient probes of the generator loss: how strongly, and which way, each weighted term pulls the student compared
with DMD (docs/method.md §2–3), logged per update and tallied over a run. Behind `DistillConfig.grad_probes` (on by
default): off, the loss is the same and nothing extra is computed.

Where they are taken: the three terms meet at the exit step's network output v1. DMD and the alignment reach v1
through x0 = x_s − σ_s·v1, so their ratio is taken at x0; SC's at v1 against σ_s·‖∂L_DMD/∂x0‖, with the cosine
between SC's and DMD's gradients at v1 over the chunks SC acted on (> 0: SC pushes the way DMD does). Every probe
uses a gradient the step computes anyway, or a small graph (DMD's and SC's closed forms, with the graph kept for the
real backward); none runs an extra backward through a network. Stats written:
`sc_dmd_grad_ratio`, `sc_dmd_grad_cos` (by `sc`), `align_dmd_grad_ratio` (by `after_backward`).
"""
import torch


def _grad(loss, x):
    """∂loss/∂x (float64), keeping the graph for the real backward; None when loss does not depend on x."""
    if not (loss.requires_grad and x.requires_grad):
        return None
    g = torch.autograd.grad(loss, x, retain_graph=True, allow_unused=True)[0]
    return None if g is None else g.double()


class GradProbes:
    """The probes of one optimiser step (all its micro-batches); `enabled=False` makes every call a no-op."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._align = []          # per micro-batch with alignment: {"dmd_norm", "sq"} filled by a backward hook
        self._dmd_grad, self._dmd_norm = None, 0.0

    def start_step(self) -> None:
        """Forget the probes of a step that failed before its backward."""
        self._align.clear()

    def dmd(self, l_dmd: torch.Tensor, x0: torch.Tensor) -> None:
        """Record ∂L_DMD/∂x0 of this micro-batch (x0 (B, C, F, H, W), the student's clips)."""
        if self.enabled:
            self._dmd_grad = _grad(l_dmd, x0)
            self._dmd_norm = 0.0 if self._dmd_grad is None else self._dmd_grad.norm().item()

    def sc(self, exits: list, weight: float, exit_sigma: float, stats: dict) -> None:
        """SC's gradient against DMD's at v1: `exits` [(chunk index, L_SC of the chunk, v1 (B, C, n, H, W))]."""
        if not (self.enabled and exits and self._dmd_norm > 0):
            return
        grads = [(c, torch.autograd.grad(loss, v1, retain_graph=True)[0].double()) for c, loss, v1 in exits
                 if v1.requires_grad]
        if not grads:
            return
        # ∂(λ·mean_c L_c)/∂v1_c = λ/C·∂L_c/∂v1_c
        sc_norm = weight / len(exits) * sum(g.pow(2).sum() for _, g in grads).sqrt().item()
        stats["sc_dmd_grad_ratio"] = sc_norm / (exit_sigma * self._dmd_norm)
        # DMD at v1: ∂L/∂v1 = −σ_s·∂L/∂x0 on the chunk's frames (x0 = x_s − σ_s·v1 at the exit step)
        dmd_at = [-exit_sigma * self._dmd_grad[:, :, c * g.shape[2]:(c + 1) * g.shape[2]] for c, g in grads]
        dot = sum((a * g).sum() for a, (_, g) in zip(dmd_at, grads))
        norms = (sum(a.pow(2).sum() for a in dmd_at) * sum(g.pow(2).sum() for _, g in grads)).sqrt()
        stats["sc_dmd_grad_cos"] = (dot / norms).item() if norms > 0 else 0.0

    def watch_align(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 as its own graph node for the alignment term: the gradient the real backward leaves there is
        ∂(w·L_align)/∂x0 alone, read by a hook (no extra backward through the teacher)."""
        x_al = x0.view_as(x0)
        if self.enabled and self._dmd_norm > 0 and x_al.requires_grad:
            probe = {"dmd_norm": self._dmd_norm, "sq": 0.0}

            def record(g, probe=probe):
                probe["sq"] += g.double().pow(2).sum().item()
            x_al.register_hook(record)
            self._align.append(probe)
        return x_al

    def after_backward(self, grad_accum: int, stats: dict) -> None:
        """The alignment's ratio from the hooks the backward filled (each micro-batch's loss divided by grad_accum)."""
        if self._align:
            ratios = [p["sq"] ** 0.5 * grad_accum / p["dmd_norm"] for p in self._align]
            stats["align_dmd_grad_ratio"] = sum(ratios) / len(ratios)
            self._align.clear()
