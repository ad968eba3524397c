"""SAM2's memory read set, assembled per object and padded, so that objects reading different
frames run as one batch (one launch per frame instead of one per read set).

Upstream (``SAM2Base._prepare_memory_conditioned_features``) concatenates, for a batch of
objects that share one ``output_dict``, the spatial memories of the keyframes (temporal
position 0) and of up to ``num_maskmem - 1`` earlier frames, then up to ``max_obj_ptrs_in_encoder``
object pointers split into ``C / mem_dim`` tokens each, and runs memory attention over them.
Here every object gets its own list, in upstream's order; the lists are padded to the batch's
longest (or to fixed slot counts, for a CUDA graph) and the padding is masked out of the cross
attention (a key mask, which sam2's ``RoPEAttention`` lacks: :func:`memory_attention` runs the
same modules with one). Attention ignores a masked key exactly (softmax weight 0); what remains
is float reordering: logits equal upstream's within 1e-4 on the CPU (``tests/test_fidelity.py``).
When no object needs padding no mask is passed, and the attention kernel is upstream's.

Shapes: ``HW`` memory tokens per frame (64 x 64 at 1024 px), ``Cm`` = ``mem_dim`` (64),
``C`` = ``hidden_dim`` (256), ``k = C / Cm`` tokens per object pointer (4), ``B`` objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from samtrack.session.backends.base import MemoryEntry, MemoryView, memory_frames


@dataclass
class ReadSet:
    """What one object's step reads, in upstream's order: ``memories`` as (temporal position
    t_pos, entry), keyframes first with t_pos 0; ``pointers`` as (signed frame distance, entry)."""

    memories: list[tuple[int, MemoryEntry]]
    pointers: list[tuple[int, MemoryEntry]]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.memories), len(self.pointers)


@dataclass
class PaddedMemory:
    """Memory attention's keys for a batch: ``memory`` and ``pos`` (Nk, B, Cm) float32, with
    Nk = M * HW + P * k (M memory slots, then P pointer slots); ``valid`` (B, 1, 1, Nk) bool, True
    where a key is real, or None when nothing is padded; ``n_ptr_tokens`` = P * k (the trailing keys
    that get no rotary encoding)."""

    memory: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor | None
    n_ptr_tokens: int


def read_set(model, view: MemoryView, frame_idx: int, reverse: bool, n_frames: int) -> ReadSet:
    """One object's read set for a tracking step at ``frame_idx``, as upstream builds it from an
    output_dict holding ``view.cond`` (keyframes) and ``view.other`` (other frames)."""
    from sam2.modeling.sam2_utils import select_closest_cond_frames

    if not view.cond:
        raise ValueError(f"frame {frame_idx}: a tracking step needs at least one keyframe in memory")
    selected, unselected = select_closest_cond_frames(frame_idx, dict(view.cond), model.max_cond_frames_in_attn)
    memories = [(0, e) for e in selected.values()]
    stride = int(model.memory_temporal_stride_for_eval)
    for t_pos, t in memory_frames(frame_idx, reverse, int(model.num_maskmem), stride):
        e = view.other.get(t)
        if e is None:
            e = unselected.get(t)
        if e is not None:
            memories.append((t_pos, e))
    pointers: list[tuple[int, MemoryEntry]] = []
    if model.use_obj_ptrs_in_encoder:
        sign = -1 if reverse else 1
        past = {t: e for t, e in selected.items() if (t >= frame_idx if reverse else t <= frame_idx)}
        ptr_cond = past if model.only_obj_ptrs_in_the_past_for_eval else selected
        for t, e in ptr_cond.items():
            pointers.append(((frame_idx - t) * sign if model.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t), e))
        for t_diff in range(1, min(n_frames, int(model.max_obj_ptrs_in_encoder))):
            t = frame_idx + t_diff if reverse else frame_idx - t_diff
            if t < 0 or t >= n_frames:
                break
            e = view.other.get(t)
            if e is None:
                e = unselected.get(t)
            if e is not None:
                pointers.append((t_diff, e))
    return ReadSet(memories, pointers)


def pointer_tpos(model, positions: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(P,) float32 signed frame distances -> (P, Cm) temporal encodings of object pointers
    (upstream: 1-D sine encoding of distance / (max pointers - 1), then ``obj_ptr_tpos_proj``)."""
    from sam2.modeling.sam2_utils import get_1d_sine_pe

    C = model.hidden_dim
    if not model.add_tpos_enc_to_obj_ptrs:
        return positions.new_zeros(len(positions), model.mem_dim)
    t_diff_max = min(n_frames, int(model.max_obj_ptrs_in_encoder)) - 1
    dim = C if model.proj_tpos_enc_in_obj_ptrs else model.mem_dim
    return model.obj_ptr_tpos_proj(get_1d_sine_pe(positions / t_diff_max, dim=dim))


def assemble(model, sets: Sequence[ReadSet], spatial_pos: torch.Tensor, n_frames: int, device: torch.device,
             slots: tuple[int, int] | None = None, out: PaddedMemory | None = None) -> PaddedMemory:
    """Keys of memory attention for objects ``sets`` (batch order). ``spatial_pos``: the memory
    encoder's position encoding (1, Cm, h, w). ``slots``: (memory frames, pointers) to pad to
    (fixed shapes for a CUDA graph; the key mask is then always given); default the batch's
    longest. ``out``: buffers of exactly that shape to fill in place (a graph's static inputs).
    Raises ValueError when an object reads more than ``slots`` allows."""
    B = len(sets)
    Cm, C = int(model.mem_dim), int(model.hidden_dim)
    k = C // Cm if Cm < C else 1
    pos_hw = spatial_pos.to(device).flatten(2).permute(2, 0, 1)[:, 0]  # (HW, Cm)
    HW = pos_hw.shape[0]
    M = max(len(s.memories) for s in sets)
    P = max(len(s.pointers) for s in sets)
    if slots is not None:
        if slots[0] < M or slots[1] < P:
            raise ValueError(f"read set of {M} memories / {P} pointers does not fit slots {slots}")
        M, P = slots
    n_mem, n_ptr = M * HW, P * k
    if out is not None:
        if out.memory.shape != (n_mem + n_ptr, B, Cm) or out.valid is None:
            raise ValueError(f"buffers {tuple(out.memory.shape)} do not hold {B} objects in slots {(M, P)}")
        memory, pos, valid = out.memory, out.pos, out.valid.view(B, n_mem + n_ptr)
        memory.zero_()
        pos.zero_()
        valid.zero_()
    else:
        memory = torch.zeros(n_mem + n_ptr, B, Cm, device=device)
        pos = torch.zeros_like(memory)
        padded = slots is not None or any(s.shape != (M, P) for s in sets)
        valid = torch.zeros(B, n_mem + n_ptr, dtype=torch.bool, device=device) if padded else None
    tpos_table = model.maskmem_tpos_enc  # (num_maskmem, 1, 1, Cm)
    nm = int(model.num_maskmem)
    all_pos = [d for s in sets for d, _ in s.pointers]
    ptr_pos = pointer_tpos(model, _upload(all_pos, device), n_frames) if all_pos else None
    used = 0
    for b, s in enumerate(sets):
        m = len(s.memories)
        if m:
            feats = torch.stack([e.maskmem.to(device, non_blocking=True) for _, e in s.memories])  # (m, Cm, h, w)
            memory[:m * HW, b] = feats.flatten(2).permute(0, 2, 1).reshape(m * HW, Cm)
            tpos = torch.stack([tpos_table[nm - t_pos - 1].reshape(Cm) for t_pos, _ in s.memories])  # (m, Cm)
            pos[:m * HW, b] = (pos_hw[None] + tpos[:, None]).reshape(m * HW, Cm)
        p = len(s.pointers)
        if p:
            ptrs = torch.stack([e.obj_ptr.to(device, non_blocking=True) for _, e in s.pointers]).float()  # (p, C)
            memory[n_mem:n_mem + p * k, b] = ptrs.reshape(p * k, Cm)
            pos[n_mem:n_mem + p * k, b] = ptr_pos[used:used + p].repeat_interleave(k, dim=0)
            used += p
        if valid is not None:
            valid[b, :m * HW] = True
            valid[b, n_mem:n_mem + p * k] = True
    if out is not None:
        return out
    return PaddedMemory(memory, pos, None if valid is None else valid[:, None, None, :], n_ptr)


def _upload(values: list, device: torch.device) -> torch.Tensor:
    """(n,) float32 on ``device`` without waiting for it: a copy from pageable host memory makes
    torch synchronise the stream (it would stall the host on every frame), one from pinned memory
    does not."""
    t = torch.tensor(values, dtype=torch.float32)
    if torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _rope_cross_attention(attn, q, k, v, n_exclude: int, mask: torch.Tensor | None) -> torch.Tensor:
    """sam2's ``RoPEAttention.forward`` (eval: no dropout) with a key mask (B, 1, 1, Nk) bool."""
    from sam2.modeling.position_encoding import apply_rotary_enc

    q = attn._separate_heads(attn.q_proj(q), attn.num_heads)
    k = attn._separate_heads(attn.k_proj(k), attn.num_heads)
    v = attn._separate_heads(attn.v_proj(v), attn.num_heads)
    side = math.sqrt(q.shape[-2])
    attn.freqs_cis = attn.freqs_cis.to(q.device)
    if attn.freqs_cis.shape[0] != q.shape[-2]:
        attn.freqs_cis = attn.compute_cis(end_x=side, end_y=side).to(q.device)
    n_rope = k.size(-2) - n_exclude
    q, k[:, :, :n_rope] = apply_rotary_enc(q, k[:, :, :n_rope], freqs_cis=attn.freqs_cis,
                                           repeat_freqs_k=attn.rope_k_repeat)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.out_proj(attn._recombine_heads(out))


def memory_attention(model, curr: torch.Tensor, curr_pos: torch.Tensor, mem: PaddedMemory) -> torch.Tensor:
    """sam2's ``MemoryAttention.forward`` with padded keys masked out. ``curr``/``curr_pos``:
    (HW, B, C) top-level image features and their position encoding. Returns (HW, B, C)."""
    ma = model.memory_attention
    if not ma.batch_first:  # every sam2 config; the key mask below is batch-first
        raise NotImplementedError("padded memory attention needs memory_attention.batch_first=True")
    out = curr
    if ma.pos_enc_at_input and curr_pos is not None:
        out = out + 0.1 * curr_pos
    out, curr_pos = out.transpose(0, 1), curr_pos.transpose(0, 1)
    memory, memory_pos = mem.memory.transpose(0, 1), mem.pos.transpose(0, 1)
    for layer in ma.layers:
        out = layer._forward_sa(out, curr_pos)
        tgt = layer.norm2(out)
        attn = layer.cross_attn_image
        q = tgt + curr_pos if layer.pos_enc_at_cross_attn_queries else tgt
        key = memory + memory_pos if layer.pos_enc_at_cross_attn_keys else memory
        if hasattr(attn, "rope_k_repeat"):
            tgt = _rope_cross_attention(attn, q, key, memory, mem.n_ptr_tokens, mem.valid)
        else:  # a plain Attention (no rotary encoding) in a custom config
            qq = attn._separate_heads(attn.q_proj(q), attn.num_heads)
            kk = attn._separate_heads(attn.k_proj(key), attn.num_heads)
            vv = attn._separate_heads(attn.v_proj(memory), attn.num_heads)
            tgt = attn.out_proj(attn._recombine_heads(F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mem.valid)))
        out = out + layer.dropout2(tgt)
        tgt = layer.norm3(out)
        out = out + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(tgt)))))
    return ma.norm(out).transpose(0, 1)


def track_heads(model, vision_feats: list, vision_pos: list, sizes: list, mem: PaddedMemory):
    """The tracking step after the memory is assembled: memory attention on the top-level
    features, then the SAM heads (no prompt). Returns upstream's ``_forward_sam_heads`` tuple
    (low-res multimasks, high-res multimasks, IoUs, low-res mask, high-res mask, object
    pointer, object score logits)."""
    B = vision_feats[-1].size(1)
    C = model.hidden_dim
    H, W = sizes[-1]
    high_res = None
    if len(vision_feats) > 1:
        high_res = [x.permute(1, 2, 0).view(x.size(1), x.size(2), *s) for x, s in zip(vision_feats[:-1], sizes[:-1])]
    pix = memory_attention(model, vision_feats[-1], vision_pos[-1], mem).permute(1, 2, 0).view(B, C, H, W)
    return model._forward_sam_heads(backbone_features=pix, point_inputs=None, mask_inputs=None,
                                    high_res_features=high_res, multimask_output=model._use_multimask(False, None))
