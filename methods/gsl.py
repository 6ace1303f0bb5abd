"""GSL: Gradient Snapping Layer (Liu & Lu, arXiv:1610.09645) -- gradients snapped to codewords.

With g = dL_sim/dz_i, for each subspace m take the k nearest codewords of z_im, choose the c*
that maximises cos(-g_m, c - z_im) and replace g_m by

    g~_m = (1 - alpha) * g_m - alpha * |g_m| * (c* - z_im) / |c* - z_im|;

when no candidate has positive alignment, g_m is kept. For 0 <= alpha <= 1 every snapped
subspace keeps <g~_m, g_m> = (1 - alpha)|g_m|^2 - alpha |g_m| <g_m, u> > 0 (u the unit
direction to c*, and <-g_m, u> > 0 by the choice of c*), so g~ is still a descent direction
for L_sim; alpha = 0 gives g exactly.

What follows the paper's abstract (the only text available): a layer that regularises the
back-propagated gradient *towards a neighbouring codeword*, leaving it a descent direction
for the similarity loss, with the codebook and the network optimised alternately.

What is this suite's design (SPEC §3, knobs exposed): the candidate set (k nearest
codewords), the choice of c* by cosine alignment with the descent direction, the convex
blend with weight alpha that keeps |g| per subspace, and the refit schedule shared with DQN
and SSM (:mod:`qbench.methods._joint`). With the cosine loss the quantization space is the unit
sphere: the part of g along z (which cannot move z/|z|) passes through, the tangential part
is snapped on the sphere and the snapping correction is projected onto the tangent plane,
so <g~, g> > 0 still holds for every g != 0. Defaults (alpha = 0.5, k = 3) from digits,
where alpha in [0.2, 1] and k in {1, 3, 8} are all within seed noise of one another.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qbench.methods import JOINT_PARAMS, CodebookHooks, JointMethod, RunContext, tangent_part
from qbench.registry import METHODS, Param, Space


def snap_correction(g: torch.Tensor, q: torch.Tensor, candidates: torch.Tensor,
                    alpha: float) -> torch.Tensor:
    """The change g~ - g (n, D) made by gradient snapping.

    g: (n, D) gradient at points q (n, D); candidates: (n, M, k, D/M) codewords per subspace.
    Zero in subspaces where g_m = 0 or no candidate has cos(-g_m, c - q_m) > 0.
    """
    n = g.shape[0]
    m_count, _, dsub = candidates.shape[1:]
    g_parts = g.reshape(n, m_count, dsub)
    offsets = candidates - q.reshape(n, m_count, 1, dsub)  # (n, M, k, D/M)
    dist = offsets.norm(dim=-1)  # (n, M, k)
    g_norm = g_parts.norm(dim=-1)  # (n, M)
    tiny = torch.finfo(g.dtype).tiny
    align = -(offsets * g_parts[:, :, None]).sum(-1) / (dist * g_norm[..., None]).clamp_min(tiny)
    best_align, best = align.max(dim=-1)  # (n, M)
    pick = best[..., None, None].expand(n, m_count, 1, dsub)
    direction = offsets.gather(2, pick).squeeze(2) / dist.gather(2, best[..., None]).clamp_min(tiny)
    change = -alpha * (g_parts + g_norm[..., None] * direction)
    change = torch.where((best_align > 0)[..., None], change, torch.zeros_like(change))
    return change.reshape(n, -1)


class SnappingHooks(CodebookHooks):
    """Replaces dL_sim/dz by its snapped version once the codebooks are active."""

    def __init__(self, subspaces: int, nbits: int, *, alpha: float, k_nearest: int, **kwargs):
        super().__init__(subspaces, nbits, **kwargs)
        self.alpha = alpha
        self.k_nearest = k_nearest

    def output_gradient(self, g: torch.Tensor, z: torch.Tensor, idx: torch.Tensor,
                        epoch: int) -> torch.Tensor:
        """g~ (n, D) from g = dL_sim/dz (n, D) at outputs z (n, D)."""
        if not self.active(epoch) or self.alpha == 0:
            return g
        q = self.to_space(z)
        candidates = self.nearest_codewords(q, self.k_nearest)
        g_space = tangent_part(z, g) if self.normalise else g
        pad = q.shape[1] - g.shape[1]  # zero columns of the padded quantization space
        change = snap_correction(F.pad(g_space, (0, pad)), q, candidates,
                                 self.alpha)[:, :g.shape[1]]
        return g + (tangent_part(z, change) if self.normalise else change)


@METHODS.register
class GradientSnappingLayer(JointMethod):
    """GSL as described in the module docstring."""

    name = "gsl"
    description = ("GSL: similarity gradient snapped towards the best-aligned nearby PQ "
                   "codeword, periodic codebook refits")
    params = JOINT_PARAMS + (
        Param("alpha", float, 0.5, "alpha in [0, 1]: weight of the codeword direction in the "
              "snapped gradient (0: plain similarity gradient)", minimum=0.0, maximum=1.0,
              tune=Space(0.0, 1.0)),
        Param("k_nearest", int, 3, "k: candidate codewords per subspace", minimum=1,
              tune=Space(1, 8)),
    )

    def build_hooks(self, subspaces: int, nbits: int, ctx: RunContext) -> SnappingHooks:
        return SnappingHooks(subspaces, nbits, alpha=self.params["alpha"],
                             k_nearest=self.params["k_nearest"], **self.hook_kwargs(ctx))
