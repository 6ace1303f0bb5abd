"""CSQ: Central Similarity Quantization (Yuan et al., "Central Similarity Quantization for
Efficient Image and Video Retrieval", CVPR 2020).

Every class gets a hash centre c_k in {-1, +1}^B, far apart from one another: rows of the
Hadamard matrix H_B and of -H_B when B is a power of two and 2B >= the number of classes
(any two distinct such rows differ in B/2 or B bits), otherwise seeded random ±1 vectors.
An item's centre is its class's, or for a multi-label item the sign of the mean of its
classes' centres (ties -> +1). The network output h (D = B) is pulled to the centre by the
central similarity loss, the binary cross-entropy between (tanh(h) + 1) / 2 and
(c + 1) / 2, plus lam * mean((|tanh h| - 1)^2) as the quantization term. Codes are sign(h),
ranked by Hamming distance.
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


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def hash_centres(n_classes: int, bits: int, seed: int = 0) -> np.ndarray:
    """(n_classes, bits) float32 centres in {-1, +1}: the first rows of [H_B; -H_B] when
    ``bits`` is a power of two and 2 * bits >= n_classes, else seeded random ±1."""
    if is_power_of_two(bits) and 2 * bits >= n_classes:
        h = hadamard(bits).astype(np.float32)
        return np.concatenate([h, -h])[:n_classes]
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n_classes, bits)) < 0.5, -1.0, 1.0).astype(np.float32)


def class_count(labels: np.ndarray) -> int:
    """Classes of (n,) ids (max id + 1) or (n, L) multi-hot labels (L)."""
    labels = np.asarray(labels)
    return int(labels.shape[1]) if labels.ndim == 2 else int(labels.max()) + 1


def item_centres(labels: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(n, B) centre of each item: its class's, or the sign of the mean of its classes'
    centres for multi-hot labels (ties and items without a label -> +1)."""
    if labels.ndim == 1:
        return centres[labels.long()]
    mean = labels.float() @ centres
    return torch.where(mean >= 0, 1.0, -1.0).to(centres.dtype)


def csq_loss(h: torch.Tensor, target: torch.Tensor, lam: float) -> torch.Tensor:
    """BCE((tanh h + 1) / 2, (c + 1) / 2) averaged over batch and bits, plus
    lam * mean((|tanh h| - 1)^2). h: (n, B) raw outputs; target: (n, B) centres in ±1."""
    u = torch.tanh(h)
    # BCE on probabilities (tanh h + 1)/2 == BCE with logits 2h (numerically stable form)
    central = F.binary_cross_entropy_with_logits(2 * h, (target + 1) / 2)
    return central + lam * (u.abs() - 1).pow(2).mean()


class CentralHooks(Hooks):
    """CSQ's loss replaces the shared similarity loss: the output gradient of the
    similarity loss is zeroed and the CSQ loss enters as the engine's extra loss."""

    def __init__(self, centres: np.ndarray, lam: float):
        self.centres = torch.as_tensor(centres)
        self.lam = lam
        self.targets = None

    def on_train_start(self, trainer: Trainer) -> None:
        centres = self.centres.to(trainer.device)
        self.targets = item_centres(trainer.y_train, centres)

    def output_gradient(self, g: torch.Tensor, z: torch.Tensor, idx: torch.Tensor,
                        epoch: int) -> torch.Tensor:
        return torch.zeros_like(g)

    def extra_loss(self, z: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        return csq_loss(z, self.targets[idx], self.lam)


@METHODS.register
class CentralSimilarityQuantization(Method):
    """CSQ: outputs pulled to Hadamard (or random) class hash centres by BCE, then sign.

    Open details and choices. The engine's loss hook cannot swap the similarity loss out,
    so CSQ's loss is the engine's extra loss and the similarity loss's output gradient is
    zeroed (``output_gradient`` returns 0): the network is trained by CSQ's loss alone, while
    the recorded loss curve is the similarity loss plus CSQ's loss. BCE is taken in its
    logit form with logits 2h (equal to BCE on (tanh h + 1)/2, without log(0)). Both terms
    are means over batch and bits; lam's default 1e-4 is the reference's. Random centres
    (when Hadamard rows do not fit) are drawn with the run's seed, not re-drawn to enforce a
    minimum distance. Multi-label: sign of the mean of the item's centres, ties -> +1 (the
    reference samples random bits on ties; +1 keeps it deterministic). Each run trains its
    own encoder (no stage-1 cache). Selection: tie-aware Hamming MAP of the sign codes.
    """

    name = "csq"
    description = "CSQ: BCE to Hadamard class hash centres + quantization term (Yuan 2020)"
    family = "binary"
    params = ENGINE_PARAMS + (
        Param("lam", float, 1e-4, "weight of the quantization term mean((|tanh h| - 1)^2)",
              minimum=0.0, tune=Space(1e-5, 1.0, log=True)),
    )

    def run(self, ctx: RunContext) -> MethodOutput:
        self.check_bits(ctx.bits)
        n_classes = class_count(ctx.dataset.y)
        centres = hash_centres(n_classes, ctx.bits, seed=ctx.seed)
        trainer = Trainer(ctx, self.params, ctx.bits, tanh=False,
                          hooks=CentralHooks(centres, self.params["lam"]))

        def represent(train, val, pool):
            return sign_codes(val, pool), None

        scored = live_scoring(ctx, trainer, represent)
        trainer.fit()
        encoder = TrainedEncoder.from_trainer(trainer, progress=ctx.progress)
        hadamard_rows = is_power_of_two(ctx.bits) and 2 * ctx.bits >= n_classes
        return select_and_encode(
            ctx, encoder, represent, lambda _, query, db: sign_codes(query, db),
            info={"dim": ctx.bits, "lam": self.params["lam"], "classes": n_classes,
                  "centres": "hadamard" if hadamard_rows else "random"},
            scored=scored)
