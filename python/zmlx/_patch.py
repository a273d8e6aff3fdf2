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

* ``rope``: ``*RotaryEmbedding`` of these models -> its cos / sin (HF's own,
  for any rope type and attention scaling) are tagged, and the modeling
  module's ``apply_rotary_pos_emb`` becomes a router that rotates q and k
  with ``zmlx.torch.rope`` (the tables' first halves, each token's row by
  position) when its cos / sin are tagged, and calls transformers' function
  otherwise (other models of the same family, unpatched ones included). The
  router is installed while any patched model uses that module; calls it
  cannot take are counted in ``rope_fallbacks()``.
"""
from __future__ import annotations

import fnmatch
import sys
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
_ROTARY_CLASSES = {
    "LlamaRotaryEmbedding", "MistralRotaryEmbedding", "MixtralRotaryEmbedding",
    "Qwen2RotaryEmbedding", "Qwen2MoeRotaryEmbedding", "Qwen3RotaryEmbedding",
    "Qwen3MoeRotaryEmbedding",
}
_KINDS = ("rmsnorm", "mlp", "moe", "rope", "attention", "loss")
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
_ROPE_FALLBACKS: dict = {}
_ROPE_USERS: dict = {}  # modeling module name -> patched rotary modules using its router


def rope_fallbacks() -> dict:
    """{reason: calls} of tagged rotary calls that went to transformers' function."""
    return dict(_ROPE_FALLBACKS)


class _RopeTables:
    """HF's cos / sin [Bc, S, D] (D/2 frequencies, duplicated) as zmlx rope
    tables: f32 [Bc * S, D/2] rows and per-token positions [B, S] naming each
    token's row. Built on first use, shared by every layer of one forward."""

    def __init__(self):
        self.tables = None
        self.positions: dict = {}

    def get(self, cos, sin, batch):
        if self.tables is None:
            half = cos.shape[-1] // 2
            self.tables = tuple(t.reshape(-1, t.shape[-1])[:, :half].float().contiguous()
                                for t in (cos, sin))
        pos = self.positions.get(batch)
        if pos is None:
            bc, s = cos.shape[0], cos.shape[1]
            pos = torch.arange(bc * s, dtype=torch.int32, device=cos.device).view(bc, s)
            pos = self.positions[batch] = pos.expand(batch, s).contiguous()
        return self.tables[0], self.tables[1], pos


def _rope_fallback_reason(q, k, cos, sin, unsqueeze_dim) -> Optional[str]:
    if unsqueeze_dim not in (1, 2) or q.dim() != 4 or k.dim() != 4 or cos.dim() != 3:
        return "shapes other than q / k 4-D with cos [B, S, D]"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or k.dtype != q.dtype:
        return f"dtype {q.dtype} / {k.dtype}"
    if cos.requires_grad or sin.requires_grad:
        return "cos / sin tables that require grad"
    d = q.shape[-1]
    if cos.shape[-1] != d or k.shape[-1] != d or d % 2:
        return "partial rotary or odd head_dim"
    seq_ax = 2 if unsqueeze_dim == 1 else 1
    if cos.shape[1] != q.shape[seq_ax] or cos.shape[0] not in (1, q.shape[0]):
        return "cos / sin not [1 or batch, seq, head_dim]"
    return None


def _rope_router(original):
    """apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1) through zmlx when
    cos came from a patched rotary module, else transformers' `original`."""
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1, *args, **kwargs):
        tables = getattr(cos, "_zmlx_rope", None)
        if tables is None or args or kwargs:
            return original(q, k, cos, sin, unsqueeze_dim, *args, **kwargs)
        why = _rope_fallback_reason(q, k, cos, sin, unsqueeze_dim)
        if why:
            _ROPE_FALLBACKS[why] = _ROPE_FALLBACKS.get(why, 0) + 1
            return original(q, k, cos, sin, unsqueeze_dim)
        ct, st, pos = tables.get(cos, sin, q.shape[0])
        if unsqueeze_dim == 1:  # q, k [B, H, S, D]: usually views of [B, S, H, D] projections
            return tuple(ztorch.rope(t.transpose(1, 2), positions=pos, cos=ct, sin=st).transpose(1, 2)
                         for t in (q, k))
        return tuple(ztorch.rope(t, positions=pos, cos=ct, sin=st) for t in (q, k))
    apply_rotary_pos_emb._zmlx_original = original
    return apply_rotary_pos_emb


def _patch_rotary(m: torch.nn.Module) -> Optional[str]:
    """Tag m's cos / sin outputs and route its modeling module's
    apply_rotary_pos_emb (installed once per module, counted per user)."""
    mod = sys.modules.get(type(m).__module__)
    current = getattr(mod, "apply_rotary_pos_emb", None)
    if current is None:
        return f"{type(m).__module__} has no apply_rotary_pos_emb"
    if getattr(current, "_zmlx_original", None) is None:
        mod.apply_rotary_pos_emb = _rope_router(current)
    _ROPE_USERS[mod.__name__] = _ROPE_USERS.get(mod.__name__, 0) + 1
    original = m.forward

    def forward(x, position_ids, *args, **kwargs):
        cos, sin = original(x, position_ids, *args, **kwargs)
        cos._zmlx_rope = _RopeTables()
        return cos, sin

    m.forward = forward
    return None


def _unpatch_rotary(m: torch.nn.Module) -> None:
    name = type(m).__module__
    if name not in _ROPE_USERS:
        return
    _ROPE_USERS[name] -= 1
    if _ROPE_USERS[name] == 0:
        del _ROPE_USERS[name]
        mod = sys.modules[name]
        mod.apply_rotary_pos_emb = mod.apply_rotary_pos_emb._zmlx_original


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


def _module_kind(cls: str) -> Optional[str]:
    for suffix, kind in (("RMSNorm", "rmsnorm"), ("MLP", "mlp"), ("Experts", "moe"),
                         ("RotaryEmbedding", "rope")):
        if cls.endswith(suffix):
            return kind
    return None


# kind -> (patcher(module) -> (why not | None, what it became), the classes it
# knows or None: any class of that suffix whose attributes fit)
_MODULE_PATCHERS = {
    "rmsnorm": (lambda m: (_patch_rmsnorm(m), "zmlx.torch.rms_norm"), _RMSNORM_CLASSES),
    "mlp": (_patch_mlp, _MLP_CLASSES),
    "moe": (lambda m: (_patch_experts(m), "zmlx.torch.moe_experts (fused SwiGLU experts)"), None),
    "rope": (lambda m: (_patch_rotary(m), "zmlx.torch.rope of q and k by position "
                        "(transformers' cos / sin tables)"), _ROTARY_CLASSES),
}


def patch(model: torch.nn.Module, include: Optional[Iterable[str]] = None,
          exclude: Optional[Iterable[str]] = None, verbose: bool = False) -> PatchReport:
    """Replace known modules' forwards with zmlx ops, in place; returns a
    PatchReport (print it: it names every patched and skipped module and why).

    include / exclude: kinds ("rmsnorm", "mlp", "moe", "rope", "attention", "loss") or
    fnmatch patterns on module names ("model.layers.0.*"; attention is
    model-wide: only its kind selects it); None includes everything."""
    report = PatchReport()
    for name, m in model.named_modules():
        cls = type(m).__name__
        if getattr(m, "_zmlx_original_forward", None) is not None:
            report.skipped.append((name, cls, "already patched"))
            continue
        kind = _module_kind(cls)
        if kind is None:
            continue
        patcher, known = _MODULE_PATCHERS[kind]
        if known is not None and cls not in known:
            report.skipped.append((name, cls, f"not a {kind} class zmlx knows (its forward may differ)"))
        elif not _selected(kind, name, include, exclude):
            report.skipped.append((name, cls, "left out by include/exclude"))
        else:
            original = m.forward
            why, what = patcher(m)
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
            if type(m).__name__ in _ROTARY_CLASSES:
                _unpatch_rotary(m)
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
