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

import time

import numpy as np

from qbench.core.codes import BinaryCodes, FloatCodes
from qbench.methods import Method, MethodOutput, RunContext, l2_normalise
from qbench.methods.sign import sign_codes
from qbench.quant import HouseholderRotation, rescale_to_sqrt_dim
from qbench.registry import METHODS, Param, Space
from qbench.train.encoder_cache import stage1_encoder
from qbench.train.engine import ENGINE_PARAMS
from qbench.train.selection import score, select


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
        p = self.params
        encoder = stage1_encoder(ctx, p, ctx.bits)
        choice = select(encoder, ctx.splits.train, ctx.pool, ctx.dataset.y,
                        lambda train, val, pool: (sign_codes(val, pool), None), ctx.select)
        start = time.perf_counter()
        emb = {split: rescale_to_sqrt_dim(encoder.embeddings(choice.epoch,
                                                             getattr(ctx.splits, split)))
               for split in ("train", "val")}
        rotation = HouseholderRotation(
            epochs=p["rot_epochs"], lr=p["rot_lr"], batch_size=p["rot_batch"],
            loss=p["rot_loss"], seed=ctx.seed, device=ctx.device,
        ).fit(emb["train"], emb["val"])
        fit_s = time.perf_counter() - start
        # what tuning scores: the rotated codes, searched as the evaluation searches them
        pool = rescale_to_sqrt_dim(encoder.embeddings(choice.epoch, ctx.pool.pool))
        selection = {**choice.selection.to_dict(), "tuning_value": score(
            BinaryCodes(rotation.encode(emb["val"]), rotation.encode(pool)),
            ctx.dataset.y[ctx.pool.val], ctx.dataset.y[ctx.pool.pool])}
        if ctx.selection_only:
            return MethodOutput(codes=None, selection=selection,
                                timings={"train_s": encoder.train_s, "fit_s": fit_s})
        start = time.perf_counter()
        emb.update({split: rescale_to_sqrt_dim(encoder.embeddings(choice.epoch,
                                                                  getattr(ctx.splits, split)))
                    for split in ("query", "database")})
        codes = BinaryCodes(rotation.encode(emb["query"]), rotation.encode(emb["database"]))
        encode_s = time.perf_counter() - start
        u = rotation.matrix()
        info = {
            "dim": ctx.bits,
            "training": encoder.summary,
            "rotation": {
                "loss": p["rot_loss"],
                "criterion": "lowest validation quantization loss (stage 2)",
                "train_loss_before": rotation.loss_history[0],
                "train_loss_after": rotation.quantization_loss(emb["train"]),
                "val_loss_before": rotation.val_history[0],
                "val_loss_after": min(rotation.val_history),
                "best_epoch": rotation.best_epoch,
                "epochs": p["rot_epochs"],
                "orthogonality_error": float(np.abs(u.T @ u - np.eye(len(u))).max()),
            },
        }
        return MethodOutput(
            codes=codes,
            float_codes=FloatCodes(l2_normalise(emb["query"]), l2_normalise(emb["database"]),
                                   metric="cosine"),
            info=info,
            timings={"train_s": encoder.train_s, "select_s": choice.select_s + choice.fit_s,
                     "fit_s": fit_s, "encode_s": encode_s},
            selection=selection,
            encoder={"key": encoder.cache_key, "cache": encoder.cache_status},
        )
