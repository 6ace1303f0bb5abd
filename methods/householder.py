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

from qbench.codes import BinaryCodes
from qbench.engine import ENGINE_PARAMS, Trainer
from qbench.method import Method, MethodOutput, RunContext, trained_output
from qbench.quantizers import HouseholderRotation, rescale_to_sqrt_dim
from qbench.registry import METHODS, Param


@METHODS.register
class Householder(Method):
    """H²Q: stage-1 embedding of width B, stage-2 Householder rotation, sign codes.

    Stage 2 fits on the training-split embeddings and selects on the validation split's.
    """

    name = "householder"
    description = "similarity training, then a learned Householder rotation and sign (H2Q)"
    family = "binary"
    params = ENGINE_PARAMS + (
        Param("rot_epochs", int, 100, "rotation SGD epochs (paper: 300)", minimum=0),
        Param("rot_lr", float, 0.1, "rotation SGD learning rate", minimum=1e-12),
        Param("rot_batch", int, 128, "rotation mini-batch size", minimum=1),
        Param("rot_loss", str, "l2", "rotation loss: l2 = mean (Uz - sign(Uz))^2, l1 = mean |.|",
              choices=("l2", "l1")),
    )

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        p = self.params
        trainer = Trainer(ctx, p, ctx.bits, tanh=False).fit()
        start = time.perf_counter()
        emb = {split: rescale_to_sqrt_dim(trainer.embed_split(split)) for split in ("train", "val")}
        rotation = HouseholderRotation(
            epochs=p["rot_epochs"], lr=p["rot_lr"], batch_size=p["rot_batch"],
            loss=p["rot_loss"], seed=ctx.seed, device=ctx.device,
        ).fit(emb["train"], emb["val"])
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        emb.update({split: rescale_to_sqrt_dim(trainer.embed_split(split))
                    for split in ("query", "database")})
        codes = BinaryCodes(rotation.encode(emb["query"]), rotation.encode(emb["database"]))
        encode_s = time.perf_counter() - start
        u = rotation.matrix()
        info = {
            "dim": ctx.bits,
            "rotation": {
                "loss": p["rot_loss"],
                "train_loss_before": rotation.loss_history[0],
                "train_loss_after": rotation.quantization_loss(emb["train"]),
                "val_loss_before": rotation.val_history[0],
                "val_loss_after": min(rotation.val_history),
                "best_epoch": rotation.best_epoch,
                "epochs": p["rot_epochs"],
                "orthogonality_error": float(np.abs(u.T @ u - np.eye(len(u))).max()),
            },
        }
        return trained_output(codes, trainer, emb["query"], emb["database"], info=info,
                              encode_s=encode_s, extra_train_s=fit_s)

