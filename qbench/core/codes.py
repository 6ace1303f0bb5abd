"""What a method hands to the evaluator: plain arrays describing one retrieval task.

Four kinds of representation, each holding the query side and the database side:

- :class:`FloatCodes`  -- unquantized embeddings, ranked by L2 or cosine distance.
- :class:`PQCodes`     -- product-quantization codes, ranked by asymmetric distance (ADC):
  the unquantized query against the reconstruction of each database code.
- :class:`AQCodes`     -- additive-quantization codes (residual quantization, LSQ), ranked by
  ADC like PQ, each item the sum of one full-width codeword per codebook.
- :class:`BinaryCodes` -- binary codes, ranked by Hamming distance.

The evaluator imports this module and nothing above it; methods build these objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FloatCodes:
    """Unquantized embeddings.

    query: (n_query, D) float32; db: (n_db, D) float32; metric: "l2" or "cosine".
    """

    query: np.ndarray
    db: np.ndarray
    metric: str = "l2"

    kind = "float"

    @property
    def bytes_per_code(self) -> int:
        return int(self.db.shape[1] * self.db.dtype.itemsize)


@dataclass
class PQCodes:
    """Product-quantization codes searched with ADC.

    query: (n_query, D) float32, already mapped into the codebooks' space (e.g. rotated by
    OPQ's matrix); db_codes: (n_db, M) integer codeword ids in [0, K);
    codebooks: (M, K, D/M) float32, subspace m covering dimensions [m*D/M, (m+1)*D/M).
    """

    query: np.ndarray
    db_codes: np.ndarray
    codebooks: np.ndarray

    kind = "pq"

    @property
    def subspaces(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def codewords(self) -> int:
        return int(self.codebooks.shape[1])

    @property
    def bits(self) -> int:
        return int(self.subspaces * np.log2(self.codewords))

    @property
    def bytes_per_code(self) -> float:
        return self.bits / 8

    def reconstruct_db(self) -> np.ndarray:
        """(n_db, D) float32 reconstruction of every database item."""
        m = np.arange(self.subspaces)
        parts = self.codebooks[m[None, :], self.db_codes]  # (n_db, M, D/M)
        return parts.reshape(len(self.db_codes), -1).astype(np.float32)


@dataclass
class AQCodes:
    """Additive-quantization codes (RQ, LSQ) searched with ADC.

    query: (n_query, D) float32; db_codes: (n_db, M) integer codeword ids in [0, K);
    codebooks: (M, K, D) float32, full-width: item j is reconstructed as
    sum_m codebooks[m, db_codes[j, m]] (PQ's codebooks instead cover one subspace each).
    The search is ADC: the squared L2 distance from the unquantized query to each
    reconstruction; the storage is M * log2(K) bits per item (the reconstruction's norm,
    which the search needs, is computed from the codes, not stored).
    """

    query: np.ndarray
    db_codes: np.ndarray
    codebooks: np.ndarray

    kind = "aq"

    @property
    def codebook_count(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def codewords(self) -> int:
        return int(self.codebooks.shape[1])

    @property
    def bits(self) -> int:
        return int(self.codebook_count * np.log2(self.codewords))

    @property
    def bytes_per_code(self) -> float:
        return self.bits / 8

    def reconstruct_db(self) -> np.ndarray:
        """(n_db, D) float32 reconstruction of every database item, summed in codebook order."""
        out = np.zeros((len(self.db_codes), self.codebooks.shape[2]), dtype=np.float32)
        for m in range(self.codebook_count):
            out += self.codebooks[m][self.db_codes[:, m]]
        return out


@dataclass
class BinaryCodes:
    """Binary codes searched by Hamming distance.

    query_bits: (n_query, B) uint8 in {0, 1}; db_bits: (n_db, B) uint8 in {0, 1}.
    """

    query_bits: np.ndarray
    db_bits: np.ndarray

    kind = "binary"

    @property
    def bits(self) -> int:
        return int(self.db_bits.shape[1])

    @property
    def bytes_per_code(self) -> float:
        return self.bits / 8


def signs_to_bits(x: np.ndarray) -> np.ndarray:
    """Map real values to {0, 1} bits: 1 where x > 0, else 0 (uint8, same shape)."""
    return (np.asarray(x) > 0).astype(np.uint8)


Codes = FloatCodes | PQCodes | AQCodes | BinaryCodes
