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

* ``attention``: the model's attention implementation (transformers'
  ``AttentionInterface``, model-wide: every layer reads the one config) ->
  ``zmlx.torch.attention``, registered as ``"zmlx"`` together with the SDPA
  mask builder (a causal mask is skipped, padding gives a bool mask). GQA
  runs without repeating k / v. Calls zmlx cannot take (dropout while
  training, softcap, position bias, head_dim > 256, other dtypes) go to
  transformers' SDPA function, counted in ``attention_fallbacks()``.

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
_KINDS = ("rmsnorm", "mlp", "moe", "attention", "loss")
_ATTN_NAME = "zmlx"
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


_FALLBACKS: dict = {}


def attention_fallbacks() -> dict:
    """{reason: calls} of patched attention calls that went to SDPA instead."""
    return dict(_FALLBACKS)


def _attention_fallback_reason(query, key, value, dropout, kwargs) -> Optional[str]:
    if dropout:
        return "attention dropout"
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        return "softcap / position bias"
    if query.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {query.dtype}"
    d = query.shape[-1]
    if d > 256 or key.shape[-1] != d or value.shape[-1] != d:
        return "head_dim > 256 or q / k / v head_dims differ"
    if query.shape[1] % key.shape[1]:
        return "kv heads not dividing q heads"
    return None


def _hf_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                  scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function contract (q [B, Hq, Sq, D], k / v
    [B, Hkv, Sk, D], a bool or additive 4-D mask or None; returns
    ([B, Sq, Hq, D], None)) on zmlx.torch.attention, with SDPA's rules for
    when a call is causal."""
    why = _attention_fallback_reason(query, key, value, dropout, kwargs)
    if why:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        _FALLBACKS[why] = _FALLBACKS.get(why, 0) + 1
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and attention_mask is None and q_len > 1
    if causal and kv_len > q_len:  # an empty static cache's unused tail, as SDPA crops it
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    out = ztorch.attention(query, key, value, attention_mask, causal, scaling)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> Optional[str]:
    """Register "zmlx" with transformers' attention and mask interfaces; the
    reason when this transformers has no such interfaces."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as e:
        return f"this transformers has no AttentionInterface ({e})"
    AttentionInterface.register(_ATTN_NAME, _hf_attention)
    AttentionMaskInterface.register(_ATTN_NAME, sdpa_mask)
    return None


def _patch_attention(model: torch.nn.Module) -> Tuple[Optional[str], str]:
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current is None or not hasattr(model, "set_attn_implementation"):
        return "no config._attn_implementation / set_attn_implementation (not a transformers model)", ""
    layers = sum(type(m).__name__.endswith("Attention") for m in model.modules())
    if not layers:
        return "no *Attention modules", ""
    if current == _ATTN_NAME:
        return "already patched", ""
    why = _register_attention()
    if why:
        return why, ""
    model.set_attn_implementation(_ATTN_NAME)
    if model.config._attn_implementation != _ATTN_NAME:
        return f"{type(model).__name__} kept attention {model.config._attn_implementation!r} " \
               "(it does not dispatch through AttentionInterface)", ""
    model._zmlx_original_attention = current
    return None, f"zmlx.torch.attention in {layers} attention modules (was {current!r})"


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

    include / exclude: kinds ("rmsnorm", "mlp", "moe", "attention", "loss") or
    fnmatch patterns on module names ("model.layers.0.*"; attention is
    model-wide: only its kind selects it); None includes everything."""
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
    if hasattr(model, "config") and hasattr(model.config, "_attn_implementation"):
        if _selected("attention", "attention", include, exclude):
            why, what = _patch_attention(model)
            row = ("config._attn_implementation", type(model).__name__)
            (report.skipped if why else report.patched).append(row + ((why or what),))
        else:
            report.skipped.append(("config._attn_implementation", type(model).__name__,
                                   "left out by include/exclude"))
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
    attention = model.__dict__.pop("_zmlx_original_attention", None)
    if attention is not None:
        model.set_attn_implementation(attention)
        restored += 1
    saved = model.__dict__.pop("_zmlx_original_loss", None)
    if saved is not None:
        for k in _LOSS_ATTRS:
            model.__dict__.pop(k, None)
        model.__dict__.update(saved)
        restored += 1
    return restored
