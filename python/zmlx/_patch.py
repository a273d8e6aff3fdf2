"""``zmlx.torch.patch(model)``: swap the forward of known Hugging Face modules
for zmlx's fused ops, and say exactly what was replaced and what was not.

What is patched, by module class (transformers' Llama, Mistral, Mixtral,
Qwen2, Qwen2-MoE, Qwen3, Qwen3-MoE):

* ``rmsnorm``: ``*RMSNorm`` with ``weight`` and ``variance_epsilon`` whose
  forward is the Llama one (x * rsqrt(mean(x^2) + eps) * weight) ->
  ``zmlx.torch.rms_norm``. Gemma-style norms (1 + weight) are skipped.
* ``mlp``: gated MLPs (``gate_proj``/``up_proj``/``down_proj``, or Mixtral's
  ``w1``/``w3``/``w2``) with a SiLU activation -> the projections around
  ``zmlx.torch.swiglu`` (gelu-tanh activations -> ``geglu``).
* ``loss``: the model's ``loss_function`` (causal-LM cross-entropy over
  shifted labels) -> ``zmlx.torch.cross_entropy``.

* ``moe``: fused 3-D experts (``*Experts`` with ``gate_up_proj`` [E, 2I, H]
  and ``down_proj`` [E, H, I], SiLU) -> ``zmlx.torch.moe_experts``; the
  router stays transformers' own.

Rotary embeddings are reported as skipped: transformers applies the cos /
sin tables through a module-level function indexed by ``position_ids``,
while zmlx's rope takes per-sequence offsets.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

import torch

from . import torch as ztorch

_RMSNORM_CLASSES = {
    "LlamaRMSNorm", "MistralRMSNorm", "MixtralRMSNorm", "Qwen2RMSNorm", "Qwen2MoeRMSNorm",
    "Qwen3RMSNorm", "Qwen3MoeRMSNorm",
}
_MLP_CLASSES = {
    "LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen2MoeMLP", "Qwen3MLP", "Qwen3MoeMLP",
    "MixtralBlockSparseTop2MLP",
}
_KINDS = ("rmsnorm", "mlp", "moe", "loss")
_LOSS_ATTRS = ("loss_function", "_loss_function")


@dataclass
class PatchReport:
    """What ``patch`` did: (module name, class, what it became) for each
    patched module and (module name, class, why not) for each skipped one."""
    patched: List[Tuple[str, str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"zmlx.torch.patch: {len(self.patched)} patched, {len(self.skipped)} skipped"]
        lines += _grouped("patched", self.patched)
        lines += _grouped("skipped", self.skipped)
        if not self.patched:
            lines.append("  nothing was patched: no module of a known class (see "
                         "zmlx.torch._patch), or include/exclude left none")
        return "\n".join(lines)


def _grouped(title: str, rows: List[Tuple[str, str, str]]) -> List[str]:
    counts: dict = {}
    for _, cls, what in rows:
        counts[(cls, what)] = counts.get((cls, what), 0) + 1
    return [f"  {title}: {n} x {cls}: {what}" for (cls, what), n in sorted(counts.items())]


def _selected(kind: str, name: str, include: Optional[Iterable[str]],
              exclude: Optional[Iterable[str]]) -> bool:
    def hit(patterns):
        return any(p == kind or fnmatch.fnmatchcase(name, p) for p in patterns)
    if include is not None and not hit(include):
        return False
    return not (exclude is not None and hit(exclude))


def _activation(m: torch.nn.Module):
    """('swiglu' | 'geglu', None) for a SiLU / gelu-tanh act_fn, else (None, why)."""
    act = getattr(m, "act_fn", None)
    if act is None:
        return None, "no act_fn attribute"
    if isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU"):
        return "swiglu", None
    if type(act).__name__ in ("PytorchGELUTanh", "GELUTanh") or (
            isinstance(act, torch.nn.GELU) and act.approximate == "tanh"):
        return "geglu", None
    return None, f"activation {type(act).__name__} has no fused zmlx form"


def _mlp_projections(m: torch.nn.Module):
    if all(hasattr(m, p) for p in ("gate_proj", "up_proj", "down_proj")):
        return m.gate_proj, m.up_proj, m.down_proj
    if all(hasattr(m, p) for p in ("w1", "w3", "w2")):
        return m.w1, m.w3, m.w2
    return None


def _patch_rmsnorm(m: torch.nn.Module) -> Optional[str]:
    eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
    if getattr(m, "weight", None) is None or eps is None:
        return "no weight / variance_epsilon attributes"

    def forward(hidden_states, *args, **kwargs):
        return ztorch.rms_norm(hidden_states, m.weight, float(eps))

    m.forward = forward
    return None


def _patch_mlp(m: torch.nn.Module) -> Tuple[Optional[str], str]:
    proj = _mlp_projections(m)
    if proj is None:
        return "no gate/up/down projections", ""
    kind, why = _activation(m)
    if kind is None:
        return why, ""
    gate, up, down = proj
    if kind == "swiglu":
        def forward(x, *args, **kwargs):
            return down(ztorch.swiglu(gate(x), up(x)))
    else:
        def forward(x, *args, **kwargs):
            return down(ztorch.geglu(gate(x), up(x), True))
    m.forward = forward
    return None, f"zmlx.torch.{kind} between the projections"


def _patch_experts(m: torch.nn.Module) -> Optional[str]:
    """transformers' fused 3-D experts (gate_up_proj [E, 2I, H], down_proj
    [E, H, I], forward(hidden, top_k_index, top_k_weights)) -> moe_experts."""
    gate_up, down = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
    if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor)
            and gate_up.dim() == 3 and down.dim() == 3 and gate_up.shape[1] % 2 == 0):
        return "MoE experts without 3-D gate_up_proj / down_proj parameters"
    if getattr(m, "has_bias", False) or getattr(m, "gate_up_proj_bias", None) is not None:
        return "MoE experts with biases: zmlx's experts have none"
    kind, why = _activation(m)
    if kind != "swiglu":
        return why or "MoE experts whose activation is not SiLU"
    inter = gate_up.shape[1] // 2

    def forward(hidden_states, top_k_index, top_k_weights, *args, **kwargs):
        w = m.gate_up_proj
        return ztorch.moe_experts(hidden_states, top_k_weights.to(hidden_states.dtype), top_k_index,
                                  w[:, :inter], w[:, inter:], m.down_proj)

    m.forward = forward
    return None


def _causal_lm_loss(logits, labels, vocab_size: int, num_items_in_batch=None,
                    ignore_index: int = -100, shift_labels=None, **kwargs):
    """transformers' ForCausalLMLoss through zmlx's fused cross-entropy."""
    if shift_labels is None:
        labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:]
    logits = logits.reshape(-1, vocab_size)
    shift_labels = shift_labels.reshape(-1).to(logits.device)
    if num_items_in_batch is None:
        return ztorch.cross_entropy(logits, shift_labels, ignore_index)
    total = ztorch.cross_entropy(logits, shift_labels, ignore_index, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def patch(model: torch.nn.Module, include: Optional[Iterable[str]] = None,
          exclude: Optional[Iterable[str]] = None, verbose: bool = False) -> PatchReport:
    """Replace known modules' forwards with zmlx ops, in place; returns a
    PatchReport (print it: it names every patched and skipped module and why).

    include / exclude: kinds ("rmsnorm", "mlp", "moe", "loss") or fnmatch patterns
    on module names ("model.layers.0.*"); None includes everything."""
    report = PatchReport()
    for name, m in model.named_modules():
        cls = type(m).__name__
        if getattr(m, "_zmlx_original_forward", None) is not None:
            report.skipped.append((name, cls, "already patched"))
            continue
        kind = "rmsnorm" if cls.endswith("RMSNorm") else "mlp" if cls.endswith("MLP") else None
        if cls.endswith("Experts"):
            if not _selected("moe", name, include, exclude):
                report.skipped.append((name, cls, "left out by include/exclude"))
                continue
            original = m.forward
            why = _patch_experts(m)
            if why:
                report.skipped.append((name, cls, why))
            else:
                m._zmlx_original_forward = original
                report.patched.append((name, cls, "zmlx.torch.moe_experts (fused SwiGLU experts)"))
            continue
        if cls.endswith("RotaryEmbedding"):
            report.skipped.append((name, cls, "rotary: applied by position_ids in a function, "
                                   "zmlx's rope takes offsets"))
            continue
        if kind is None:
            continue
        known = _RMSNORM_CLASSES if kind == "rmsnorm" else _MLP_CLASSES
        if cls not in known:
            report.skipped.append((name, cls, f"not a {kind} class zmlx knows (its forward may differ)"))
            continue
        if not _selected(kind, name, include, exclude):
            report.skipped.append((name, cls, "left out by include/exclude"))
            continue
        original = m.forward
        if kind == "rmsnorm":
            why, what = _patch_rmsnorm(m), "zmlx.torch.rms_norm"
        else:
            why, what = _patch_mlp(m)
        if why:
            report.skipped.append((name, cls, why))
        else:
            m._zmlx_original_forward = original
            report.patched.append((name, cls, what))
    if hasattr(model, "loss_function"):
        if _selected("loss", "loss_function", include, exclude):
            # transformers' loss_function is a property whose setter stores
            # _loss_function; keep whichever instance attributes there were.
            model._zmlx_original_loss = {k: model.__dict__[k] for k in _LOSS_ATTRS
                                         if k in model.__dict__}
            model.loss_function = _causal_lm_loss
            report.patched.append(("loss_function", type(model).__name__,
                                   "zmlx.torch.cross_entropy over shifted labels"))
        else:
            report.skipped.append(("loss_function", type(model).__name__,
                                   "left out by include/exclude"))
    if verbose:
        print(report)
    return report


def unpatch(model: torch.nn.Module) -> int:
    """Undo patch(model); returns how many modules were restored."""
    restored = 0
    for _, m in model.named_modules():
        if getattr(m, "_zmlx_original_forward", None) is not None:
            del m.forward  # the instance attribute; the class's forward shows again
            del m._zmlx_original_forward
            restored += 1
    saved = model.__dict__.pop("_zmlx_original_loss", None)
    if saved is not None:
        for k in _LOSS_ATTRS:
            model.__dict__.pop(k, None)
        model.__dict__.update(saved)
        restored += 1
    return restored
