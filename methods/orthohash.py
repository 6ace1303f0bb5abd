"""OrthoHash (Hoe et al., "One Loss for All: Deep Hashing with a Single Cosine Similarity
based Learning Objective", NeurIPS 2021).

Every class k gets a codeword c_k in {-1, +1}^B, mutually orthogonal where possible: the
first K rows of the Hadamard matrix H_B when B is a power of two and K <= B (then
C C^T = B I), otherwise seeded random ±1 vectors (nearly orthogonal for large B). The
network output h (D = B) is trained by one loss, the cross-entropy over the logits
s * (cos(h, c_k) - m * [k = y]): an additive cosine margin m on the target class and a
scale s. Codes are sign(h), ranked by Hamming distance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import hadamard

from qbench.methods import Method, MethodOutput, RunContext, select_and_encode
from qbench.methods._trained import live_scoring
from qbench.methods.sign import sign_codes
from qbench.registry import METHODS, Param, Space
from qbench.train.params import ENGINE_PARAMS
from qbench.train.trained_encoder import TrainedEncoder
from qbench.train.trainer import Hooks, Trainer


def uses_hadamard(n_classes: int, bits: int) -> bool:
    return bits >= 1 and bits & (bits - 1) == 0 and n_classes <= bits


def class_codewords(n_classes: int, bits: int, seed: int = 0) -> np.ndarray:
    """(n_classes, bits) float32 codewords in {-1, +1}: the first rows of H_B when
    :func:`uses_hadamard`, else seeded random ±1."""
    if uses_hadamard(n_classes, bits):
        return hadamard(bits).astype(np.float32)[:n_classes]
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n_classes, bits)) < 0.5, -1.0, 1.0).astype(np.float32)


def target_distribution(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n, K) targets: one-hot of class ids, or for multi-hot labels uniform over the
    item's classes (all zero for an item without a label)."""
    if labels.ndim == 1:
        return F.one_hot(labels.long(), n_classes).float()
    hot = labels.float()
    return hot / hot.sum(1, keepdim=True).clamp_min(1.0)


def margin_logits(h: torch.Tensor, codewords: torch.Tensor, positive: torch.Tensor,
                  scale: float, margin: float) -> torch.Tensor:
    """s * (cos(h, c_k) - m * [k positive]); h: (n, B), codewords: (K, B), positive: (n, K)
    in {0, 1}."""
    cos = F.normalize(h, dim=1, eps=1e-8) @ F.normalize(codewords, dim=1).T
    return scale * (cos - margin * positive)


def orthohash_loss(h: torch.Tensor, codewords: torch.Tensor, target: torch.Tensor,
                   scale: float, margin: float) -> torch.Tensor:
    """Mean over the batch of the cross-entropy between ``target`` (n, K) and the softmax
    of the margin logits."""
    logits = margin_logits(h, codewords, (target > 0).float(), scale, margin)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


class OrthoHooks(Hooks):
    """OrthoHash's loss replaces the shared similarity loss: the similarity loss's output
    gradient is zeroed and the cosine-margin cross-entropy enters as the extra loss."""

    def __init__(self, codewords: np.ndarray, scale: float, margin: float):
        self.codewords = torch.as_tensor(codewords)
        self.scale, self.margin = scale, margin
        self.targets = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.codewords = self.codewords.to(trainer.device)
        self.targets = target_distribution(trainer.y_train, len(self.codewords))

    def output_gradient(self, g: torch.Tensor, z: torch.Tensor, idx: torch.Tensor,
                        epoch: int) -> torch.Tensor:
        return torch.zeros_like(g)

    def extra_loss(self, z: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        return orthohash_loss(z, self.codewords, self.targets[idx], self.scale, self.margin)


@METHODS.register
class OrthoHash(Method):
    """OrthoHash: cosine-margin cross-entropy to orthogonal ±1 class codewords, then sign.

    Open details and choices. The engine cannot swap its similarity loss out, so the loss
    is the engine's extra loss and the similarity loss's output gradient is zeroed: the
    network is trained by OrthoHash's loss alone (the recorded loss curve adds both).
    Defaults s = 8, m = 0.2 follow the paper's single-label settings; both are tuned. The
    paper's optional quantization term (its batch-norm / tanh variants) is left out: the
    single cosine objective is the method's point. Multi-label items: the margin is taken
    from every positive class's logit and the target is uniform over the positive classes
    (soft-target cross-entropy), a single-softmax reading of the paper's multi-label
    loss. Random codewords (no Hadamard fit) use the run's seed. Each run trains its own
    encoder (no stage-1 cache). Selection: tie-aware Hamming MAP of the sign codes.
    """

    name = "orthohash"
    description = "OrthoHash: cosine-margin CE to orthogonal class codewords (Hoe 2021)"
    family = "binary"
    params = ENGINE_PARAMS + (
        Param("scale", float, 8.0, "logit scale s", minimum=1e-6,
              tune=Space(1.0, 32.0, log=True)),
        Param("margin", float, 0.2, "additive cosine margin m on the target class",
              minimum=0.0, tune=Space(0.0, 0.5)),
    )

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        y = np.asarray(ctx.dataset.y)
        n_classes = int(y.shape[1]) if y.ndim == 2 else int(y.max()) + 1
        codewords = class_codewords(n_classes, ctx.bits, seed=ctx.seed)
        hooks = OrthoHooks(codewords, self.params["scale"], self.params["margin"])
        trainer = Trainer(ctx, self.params, ctx.bits, tanh=False, hooks=hooks)

        def represent(train, val, pool):
            return sign_codes(val, pool), None

        scored = live_scoring(ctx, trainer, represent)
        trainer.fit()
        encoder = TrainedEncoder.from_trainer(trainer, progress=ctx.progress)
        return select_and_encode(
            ctx, encoder, represent, lambda _, query, db: sign_codes(query, db),
            info={"dim": ctx.bits, "scale": self.params["scale"],
                  "margin": self.params["margin"], "classes": n_classes,
                  "codewords": "hadamard" if uses_hadamard(n_classes, ctx.bits) else "random"},
            scored=scored)
