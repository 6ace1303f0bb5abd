"""SSM: Space Shuttle Model (Liu & Lu) -- momentum on network outputs, pulled by codewords.

Each training item i owns a persistent velocity v_i in R^D (a (n_train, D) tensor created
when training starts and never reset between epochs). On every visit, with output z_i and
g_i = dL_sim/dz_i,

    v_i <- mu * v_i + eta * (-g_i + gamma * F_i),
    F_i  = sum_m sum_{c in N_k(z_im)} w(|c - z_im|) * (c - z_im),

and the gradient back-propagated at the output is -v_i, so the network moves z_i along v_i.

What follows the paper (only its opening is available, see SPEC): the network output is a
"space shuttle" with momentum -- momentum applied to the outputs, not to the parameters --
"propelled" by the similarity loss and subject to "gravity" from quantization codewords, and
its velocity is used as the gradient for back-propagation.

What is this suite's design (SPEC §3, knobs exposed): the force law, ``spring`` w(r) = 1 or
``gravity`` w(r) = 1 / (r^2 + eps); attraction by the k nearest codewords of each subspace;
the constants below; the codebook refit schedule shared with DQN (``warmup`` epochs without
codewords, then per-subspace k-means every ``refit_every`` epochs, :mod:`qbench.methods._joint`).
F is computed in the quantization space (unit-norm outputs with the cosine loss) and mapped
to the output as the negative gradient of the force's potential, (I - q q^T) F / |z|.

Constants. g_i is the gradient of a mean over the ~n^2 in-batch pairs, so |g_i| ~ 1/n (about
1/128 per unit of 1/|z| at the default batch, shrinking as the loss falls), while |F_i| sums
k * M codeword pulls. Measured on digits at 32 bits with the defaults, |F_i| / |g_i| stays
between about 35 (first refit) and 65 (end of training), so gamma = 0.01 keeps the codeword
term at roughly 0.35-0.65 of the similarity term: the same order, similarity leading. With
another batch size the balance point moves as 1/batch_size. The engine's optimiser is Adam,
nearly invariant to a common scale of the gradient, so eta matters mainly through the
momentum's accumulation; eta = 1 with mu = gamma = 0 is exactly plain similarity training.
Defaults chosen on digits (5 seeds, 12 and 32 bits): spring, k = 1, mu = 0.5, gamma = 0.01.
The k = 1 spring pulls each subspace straight at its nearest codeword, so with no similarity
force and small steps (mu < 1, step below the heavy-ball overdamping bound) the output moves
monotonically toward it; with k > 1 the pull is towards a weighted mean of the k nearest
(for ``gravity``, dominated by the nearest when it lies well outside the softening radius
sqrt(eps) and well inside the others), so the monotonicity is no longer guaranteed.
"""

from __future__ import annotations

import torch

from qbench.methods import JOINT_PARAMS, CodebookHooks, JointMethod, RunContext
from qbench.registry import METHODS, Param, Space
from qbench.train.trainer import Trainer

FORCE_LAWS = ("spring", "gravity")


class ShuttleHooks(CodebookHooks):
    """Per-item velocities on the outputs; the codewords pull once they are active.

    velocity: (n_train, D) tensor, created in :meth:`on_train_start`.
    """

    def __init__(self, subspaces: int, nbits: int, *, momentum: float, eta: float,
                 gamma: float, k_nearest: int, force: str, eps: float, **kwargs):
        super().__init__(subspaces, nbits, **kwargs)
        if force not in FORCE_LAWS:
            raise ValueError(f"force must be one of {FORCE_LAWS}, got {force!r}")
        self.momentum = momentum
        self.eta = eta
        self.gamma = gamma
        self.k_nearest = k_nearest
        self.force_law = force
        self.eps = eps
        self.velocity: torch.Tensor | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        """Zero velocities for every training item, kept for the whole run."""
        self.velocity = torch.zeros(len(trainer.ctx.splits.train), trainer.dim,
                                    device=trainer.device)

    def codeword_force(self, z: torch.Tensor) -> torch.Tensor:
        """F (n, D) on the outputs z (n, D): the k nearest codewords' pull in each subspace,
        divided by the batch's detached mean squared norm in the quantization space (1 with
        the cosine loss), so gamma is scale-free."""
        q = self.to_space(z)
        n = q.shape[0]
        m_count, _, dsub = self.codebooks.shape
        pull = (self.nearest_codewords(q, self.k_nearest)
                - q.reshape(n, m_count, 1, dsub))  # (n, M, k, D/M)
        if self.force_law == "gravity":
            pull = pull / ((pull * pull).sum(-1, keepdim=True) + self.eps)
        return self.pull_back(z, pull.sum(2).reshape(n, -1) / self.scale(q))

    def output_gradient(self, g: torch.Tensor, z: torch.Tensor, idx: torch.Tensor,
                        epoch: int) -> torch.Tensor:
        """-v_i after the update v_i <- mu v_i + eta (-g_i + gamma F_i); g, z: (n, D).

        During the warm-up epochs the output gradient is g itself: the warm-up is plain
        similarity training, shared with the stage-1 encoder."""
        if epoch < self.warmup:
            return g
        drive = -g
        if self.gamma and self.active(epoch):
            drive = drive + self.gamma * self.codeword_force(z)
        v = self.momentum * self.velocity[idx] + self.eta * drive
        self.velocity[idx] = v
        return -v


@METHODS.register
class SpaceShuttleModel(JointMethod):
    """SSM as described in the module docstring."""

    name = "ssm"
    description = ("SSM: momentum on network outputs, propelled by the similarity loss and "
                   "pulled by the nearest PQ codewords")
    params = JOINT_PARAMS + (
        Param("momentum", float, 0.5, "mu: velocity kept from the item's previous visit, [0, 1)",
              minimum=0.0, maximum=0.999, tune=Space(0.0, 0.95)),
        Param("eta", float, 1.0, "eta: step of the velocity update", minimum=1e-12),
        Param("gamma", float, 0.01, "gamma: weight of the codeword force against -dL/dz "
              "(~1/batch_size balances them, see the docstring)", minimum=0.0,
              tune=Space(1e-4, 1.0, log=True)),
        Param("k_nearest", int, 1, "k: codewords per subspace that pull the output", minimum=1,
              tune=Space(1, 8)),
        Param("force", str, "spring", "force law: spring w(r)=1 or gravity w(r)=1/(r^2+eps)",
              choices=FORCE_LAWS, tune=Space(choices=FORCE_LAWS)),
        Param("eps", float, 1e-3, "eps of the gravity law (softening, squared distance units)",
              minimum=1e-12),
    )

    def build_hooks(self, subspaces: int, nbits: int, ctx: RunContext) -> ShuttleHooks:
        p = self.params
        return ShuttleHooks(subspaces, nbits, momentum=p["momentum"], eta=p["eta"],
                            gamma=p["gamma"], k_nearest=p["k_nearest"], force=p["force"],
                            eps=p["eps"], **self.hook_kwargs(ctx))
