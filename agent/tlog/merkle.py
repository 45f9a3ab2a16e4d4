"""RFC 9162 section 2.1: Merkle Tree Hash, inclusion and consistency proofs (SHA-256).

Pure functions on bytes. Leaves are hashed with a 0x00 prefix and interior nodes with 0x01
(2.1.1), so a leaf can never be passed off as a node (second-preimage protection). Proofs are
generated from the list of leaf hashes (2.1.3.1 ``PATH``, 2.1.4.1 ``SUBPROOF``) and verified with
the iterative algorithms of 2.1.3.2 and 2.1.4.2, which need only the sizes, the proof and roots.
"""

from __future__ import annotations

__all__ = [
    "EMPTY_ROOT",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

import hashlib
import hmac
from collections.abc import Sequence

from agent.tlog.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # 2.1.1: MTH({}) = HASH()


def leaf_hash(data: bytes) -> bytes:
    """2.1.1: ``MTH({d(0)}) = HASH(0x00 || d(0))``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """2.1.1: ``HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """2.1.1 Merkle Tree Hash of the leaves whose hashes are given (iterative, O(n))."""
    if not hashes:
        return EMPTY_ROOT
    # Fold complete subtrees left to right, as a binary counter: the stack holds roots of
    # perfect subtrees of decreasing size; the leftover ones are combined right to left at the end,
    # which is exactly the k = largest-power-of-two split of 2.1.1.
    stack: list[tuple[int, bytes]] = []
    for h in hashes:
        size, node = 1, h
        while stack and stack[-1][0] == size:
            _, left = stack.pop()
            node = node_hash(left, node)
            size *= 2
        stack.append((size, node))
    node = stack.pop()[1]
    while stack:
        node = node_hash(stack.pop()[1], node)
    return node


def inclusion_proof(index: int, hashes: Sequence[bytes]) -> list[bytes]:
    """2.1.3.1 ``PATH(m, D[n])`` for leaf ``index`` of the tree of ``hashes``."""
    if not 0 <= index < len(hashes):
        raise ProofError(f"leaf {index} is not in a tree of size {len(hashes)}")
    return _path(index, hashes)


def _path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, d[:k]), root_from_leaf_hashes(d[k:])]
    return [*_path(m - k, d[k:]), root_from_leaf_hashes(d[:k])]


def consistency_proof(first: int, hashes: Sequence[bytes]) -> list[bytes]:
    """2.1.4.1 ``PROOF(m, D[n])``: proves the tree of the first ``first`` leaves is a prefix."""
    if not 0 < first <= len(hashes):
        raise ProofError(f"no consistency proof from size {first} to {len(hashes)}")
    return _subproof(first, hashes, True)


def _subproof(m: int, d: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if complete else [root_from_leaf_hashes(d)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, d[:k], complete), root_from_leaf_hashes(d[k:])]
    return [*_subproof(m - k, d[k:], False), root_from_leaf_hashes(d[:k])]


def _check_hashes(proof: Sequence[bytes]) -> None:
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("a proof element is not a 32-byte SHA-256 hash")


def verify_inclusion(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> None:
    """2.1.3.2: verify that the leaf with hash ``leaf`` is entry ``index`` of the tree with ``root``.

    Raises:
        ProofError: the proof does not verify.
    """
    _check_hashes(proof)
    # Step 1: the index must lie inside the tree.
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is not below tree size {tree_size}")
    # Steps 2-3.
    fn, sn, r = index, tree_size - 1, leaf
    # Step 4.
    for p in proof:
        if sn == 0:  # 4a: proof longer than the path
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            if not fn & 1:
                while (fn & 1) == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    # Step 5.
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    if not hmac.compare_digest(r, root):
        raise ProofError("inclusion proof does not lead to the checkpoint's root hash")


def verify_consistency(
    first_size: int, second_size: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """2.1.4.2: verify that the tree (``second_size``, ``second_root``) extends (``first_size``, ...).

    Raises:
        ProofError: the proof does not verify (the log forked or was rewritten).
    """
    _check_hashes(proof)
    if first_size > second_size:
        raise ProofError(f"tree shrank from {first_size} to {second_size}")
    if first_size == second_size:
        # Same size: the same tree, and nothing to prove.
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(first_root, second_root):
            raise ProofError(f"two different roots for tree size {first_size}")
        return
    if first_size == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        return  # every tree extends the empty tree
    # Step 1.
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    # Step 2: a first tree of exactly a power of two is a full subtree: its root starts the path.
    if first_size & (first_size - 1) == 0:
        path.insert(0, first_root)
    # Steps 3-4.
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:  # 6a
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while (fn & 1) == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if not hmac.compare_digest(fr, first_root):
        raise ProofError("consistency proof does not match the old root: the log was rewritten")
    if not hmac.compare_digest(sr, second_root):
        raise ProofError("consistency proof does not match the new root")
