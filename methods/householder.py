"""Householder rotation + sign (H²Q): similarity training, then a learned orthogonal rotation.

Following Schwengber et al., "Deep Hashing via Householder Quantization" (H²Q):
stage 1 trains the encoder with the similarity loss only (no quantization term, no tanh,
D = B); stage 2 rescales every embedding to norm √B and learns U = H_1 ⋯ H_B (Householder
reflections, parameters initialised to the identity so U = −I) by SGD on the mean of
(Uz − sign(Uz))², keeping the parameters with the lowest validation loss; codes are
sign(Uz), ranked by Hamming distance. U is orthogonal, so float distances are unchanged.
Departure from the paper: 100 rotation epochs by default instead of 300 (CPU budget;
``-p rot_epochs=300`` restores the paper's setting).
"""

from __future__ import annotations

import numpy as np

from qbench.core.codes import BinaryCodes
from qbench.methods import Method, MethodOutput, RunContext, l2_normalise, select_and_encode
from qbench.methods.sign import sign_codes
from qbench.quant import HouseholderRotation, rescale_to_sqrt_dim
from qbench.registry import METHODS, Param, Space
from qbench.train.encoder_cache import stage1_encoder
from qbench.train.params import ENGINE_PARAMS
from qbench.train.selection import score


@METHODS.register
class Householder(Method):
    """H²Q: stage-1 embedding of width B, stage-2 Householder rotation, sign codes.

    Model selection (``selection`` in results) is the stage-1 choice by tie-aware Hamming
    MAP of the sign codes; stage 2 fits on the chosen model's training-split embeddings and
    keeps the rotation with the lowest validation-split loss (``method_info.rotation``).
    ``selection.tuning_value`` is the tie-aware Hamming MAP of the rotated codes (validation
    queries against the pool): what tuning maximises, since rot_lr and rot_loss act there.
    """

    name = "householder"
    description = "similarity training, then a learned Householder rotation and sign (H2Q)"
    family = "binary"
    params = ENGINE_PARAMS + (
        Param("rot_epochs", int, 100, "rotation SGD epochs (paper: 300)", minimum=0),
        Param("rot_lr", float, 0.1, "rotation SGD learning rate", minimum=1e-12,
              tune=Space(1e-3, 1.0, log=True)),
        Param("rot_batch", int, 128, "rotation mini-batch size", minimum=1),
        Param("rot_loss", str, "l2", "rotation loss: l2 = mean (Uz - sign(Uz))^2, l1 = mean |.|",
              choices=("l2", "l1"), tune=Space(choices=("l2", "l1"))),
    )

    def stage1_spec(self, bits: int) -> tuple[int, bool]:
        return bits, False

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        p, splits, y = self.params, ctx.splits, ctx.dataset.y
        encoder = stage1_encoder(ctx, p, ctx.bits)

        def rescaled(epoch: int, idx: np.ndarray) -> np.ndarray:
            return rescale_to_sqrt_dim(encoder.embeddings(epoch, idx))

        def fit_rotation(epoch: int) -> tuple[HouseholderRotation, np.ndarray, np.ndarray]:
            train, val = rescaled(epoch, splits.train), rescaled(epoch, splits.val)
            return HouseholderRotation(
                epochs=p["rot_epochs"], lr=p["rot_lr"], batch_size=p["rot_batch"],
                loss=p["rot_loss"], seed=ctx.seed, device=ctx.device,
            ).fit(train, val), train, val

        def rotated_map(fitted: tuple, epoch: int) -> float:
            # what tuning scores: the rotated codes, searched as the evaluation searches them
            rotation, _, val = fitted
            pool = rotation.encode(rescaled(epoch, ctx.pool.pool))
            return score(BinaryCodes(rotation.encode(val), pool), y[ctx.pool.val],
                         y[ctx.pool.pool])

        return select_and_encode(
            ctx, encoder, lambda train, val, pool: (sign_codes(val, pool), None),
            lambda fitted, q, db: BinaryCodes(*(fitted[0].encode(rescale_to_sqrt_dim(e))
                                                for e in (q, db))),
            info={"dim": ctx.bits}, describe=self._describe,
            float_space=lambda e: l2_normalise(rescale_to_sqrt_dim(e)),
            fit_after=fit_rotation, tuning_value=rotated_map)

    def _describe(self, fitted: tuple) -> dict:
        """``method_info.rotation``: the stage-2 losses before and after, and U's
        orthogonality."""
        rotation, train, _ = fitted
        u = rotation.matrix()
        return {"rotation": {
            "loss": self.params["rot_loss"],
            "criterion": "lowest validation quantization loss (stage 2)",
            "train_loss_before": rotation.loss_history[0],
            "train_loss_after": rotation.quantization_loss(train),
            "val_loss_before": rotation.val_history[0],
            "val_loss_after": min(rotation.val_history),
            "best_epoch": rotation.best_epoch,
            "epochs": self.params["rot_epochs"],
            "orthogonality_error": float(np.abs(u.T @ u - np.eye(len(u))).max()),
        }}
