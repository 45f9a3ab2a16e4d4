"""The transparency log: RFC 9162 Merkle tree against certificate-transparency's published vectors and
an independent recomputation, C2SP signed notes against Go's sumdb/note vector, the file-backed log."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.tlog import merkle
from agent.tlog.errors import LogStoreError, NoteError, ProofError
from agent.tlog.firmware import InclusionProof, firmware_leaf, verify_firmware_included
from agent.tlog.note import Checkpoint, NoteKey, format_checkpoint, open_checkpoint, sign_note, verify_note
from agent.tlog.store import Entry, LogStore

# certificate-transparency-go merkle/log_verifier_test.go (the RFC 6962/9162 test tree).
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
H = bytes.fromhex
INCLUSION = [  # (leaf index, tree size, path)
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [  # (first size, second size, proof)
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1 written out recursively, independent of the module's iterative fold."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def hashes(leaves: list[bytes]) -> list[bytes]:
    return [merkle.leaf_hash(d) for d in leaves]


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_published_vectors(size: int) -> None:
    assert merkle.root_from_leaf_hashes(hashes(LEAVES[:size])) == ROOTS[size - 1]
    assert mth(LEAVES[:size]) == ROOTS[size - 1]


def test_empty_tree_is_the_hash_of_nothing() -> None:
    assert merkle.root_from_leaf_hashes([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_published_inclusion_proofs_are_generated_and_verify(index: int, size: int, path: list[str]) -> None:
    proof = [H(p) for p in path]
    hs = hashes(LEAVES[:size])
    assert merkle.inclusion_proof(index, hs) == proof
    merkle.verify_inclusion(hs[index], index, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_rejects_every_mutation(index: int, size: int, path: list[str]) -> None:
    proof = [H(p) for p in path]
    leaf, root = merkle.leaf_hash(LEAVES[index]), ROOTS[size - 1]
    bad_calls = [
        (leaf, index + 1, size, proof, root),
        (leaf, index ^ 2, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size, proof, merkle.EMPTY_ROOT),
        (merkle.leaf_hash(b"WrongLeaf"), index, size, proof, root),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, proof[:-1], root),
        (leaf, index, size, [root, *proof], root),
        (leaf, size, size, proof, root),
        (leaf, index, size, [*proof[:-1], b"short"], root),
    ]
    if index > 0:
        bad_calls.append((leaf, index - 1, size, proof, root))
    for i in range(len(proof)):
        bad_calls.append((leaf, index, size, [*proof[:i], merkle.EMPTY_ROOT, *proof[i + 1 :]], root))
    for call in bad_calls:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(*call)


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY)
def test_published_consistency_proofs_are_generated_and_verify(
    first: int, second: int, path: list[str]
) -> None:
    proof = [H(p) for p in path]
    assert merkle.consistency_proof(first, hashes(LEAVES[:second])) == proof
    merkle.verify_consistency(first, second, ROOTS[first - 1], ROOTS[second - 1], proof)
    for bad in (
        (first, second, ROOTS[second - 1], ROOTS[first - 1], proof),  # swapped roots
        (first, second, ROOTS[first - 1], ROOTS[second - 1], proof[:-1]),
        (first, second, ROOTS[first - 1], ROOTS[second - 1], [*proof, proof[0]]),
        (first, second, ROOTS[first - 1], ROOTS[second - 1], []),
        (first + 1, second, ROOTS[first - 1], ROOTS[second - 1], proof),
        (first, second * 2, ROOTS[first - 1], ROOTS[second - 1], proof),
        (second, first, ROOTS[second - 1], ROOTS[first - 1], proof),
    ):
        with pytest.raises(ProofError):
            merkle.verify_consistency(*bad)


def test_equal_sizes_need_equal_roots_and_an_empty_proof() -> None:
    merkle.verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    with pytest.raises(ProofError):
        merkle.verify_consistency(3, 3, ROOTS[2], ROOTS[3], [])
    with pytest.raises(ProofError):
        merkle.verify_consistency(3, 3, ROOTS[2], ROOTS[2], [ROOTS[0]])


@pytest.mark.parametrize("size", range(1, 40))
def test_every_proof_of_every_tree_up_to_39_leaves_verifies(size: int) -> None:
    leaves = [i.to_bytes(2, "big") * 7 for i in range(size)]
    hs = hashes(leaves)
    root = mth(leaves)
    assert merkle.root_from_leaf_hashes(hs) == root
    for index in range(size):
        merkle.verify_inclusion(hs[index], index, size, merkle.inclusion_proof(index, hs), root)
    for first in range(1, size + 1):
        proof = merkle.consistency_proof(first, hs)
        merkle.verify_consistency(first, size, mth(leaves[:first]), root, proof)


# golang.org/x/mod/sumdb/note note_test.go: the PeterNeumann example.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n\u2014 PeterNeumann "
    + "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def _go_private() -> ed25519.Ed25519PrivateKey:
    raw = base64.b64decode(GO_SKEY.split("+", 4)[-1])
    assert raw[0] == 1
    return ed25519.Ed25519PrivateKey.from_private_bytes(raw[1:])


def test_signed_note_matches_gos_reference_byte_for_byte() -> None:
    private = _go_private()
    key = NoteKey.of("PeterNeumann", private.public_key())
    assert key.vkey == GO_VKEY
    assert sign_note(GO_TEXT, "PeterNeumann", private) == GO_NOTE
    text, signers = verify_note(GO_NOTE.encode(), [key])
    assert text == GO_TEXT
    assert signers == {"PeterNeumann"}
    with pytest.raises(NoteError):
        verify_note(GO_NOTE.replace("cryptography", "cryptographY").encode(), [key])
    other = NoteKey.of("PeterNeumann", ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(NoteError, match="0 trusted"):
        verify_note(GO_NOTE.encode(), [other])


@pytest.mark.parametrize(
    "note",
    [
        b"",
        b"text\n",
        b"text\n\n- PeterNeumann abc\n",
        "text\n\n\u2014 PeterNeumann !!!\n".encode(),
        b"\xff\xfe\n\n",
        b"x" * 20000,
    ],
)
def test_malformed_notes_are_refused(note: bytes) -> None:
    with pytest.raises(NoteError):
        verify_note(note, [NoteKey.of("PeterNeumann", _go_private().public_key())])


def test_checkpoint_round_trip_and_origin_binding() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    cp = Checkpoint("example.com/log", 8, ROOTS[7])
    note = sign_note(format_checkpoint(cp), "example.com/log", private).encode()
    assert format_checkpoint(cp) == "example.com/log\n8\n" + base64.b64encode(ROOTS[7]).decode() + "\n"
    assert open_checkpoint(note, [NoteKey.of("example.com/log", private.public_key())]) == cp
    # The same key signing under another name does not vouch for this log's origin.
    other = sign_note(format_checkpoint(cp), "other.example/log", private).encode()
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(other, [NoteKey.of("other.example/log", private.public_key())])


def test_log_store_appends_proves_and_stays_consistent(tmp_path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    nkey = NoteKey.of("roomagent.test/firmware", key.public_key())
    store = LogStore(tmp_path / "log")
    store.init("roomagent.test/firmware")
    notes = []
    for v in range(1, 6):
        digest = hashlib.sha256(b"bundle %d" % v).hexdigest()
        index, note = store.append(Entry(v, 100 + v, digest, f"v{v}.raucb"), key)
        assert index == v - 1
        notes.append(note)
    with pytest.raises(LogStoreError):
        store.append(Entry(3, 1, "0" * 64, "dup-version"), key)
    proof = store.prove(store.find(hashlib.sha256(b"bundle 3").hexdigest()))
    wire = InclusionProof.from_json(proof.to_json())
    cp = verify_firmware_included(3, 103, hashlib.sha256(b"bundle 3").hexdigest(), wire, [nkey])
    assert cp.size == 5
    with pytest.raises(ProofError):  # same bytes, claimed as another version
        verify_firmware_included(4, 103, hashlib.sha256(b"bundle 3").hexdigest(), wire, [nkey])
    with pytest.raises(ProofError):
        verify_firmware_included(3, 104, hashlib.sha256(b"bundle 3").hexdigest(), wire, [nkey])
    old = open_checkpoint(notes[1], [nkey])
    merkle.verify_consistency(old.size, cp.size, old.root, cp.root, store.consistency(old.size))
    assert firmware_leaf(1, 2, "a" * 64).startswith(b"roomagent-firmware v1\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_as_a_note_give_a_note_error_or_a_note(data: bytes) -> None:
    key = NoteKey.of("PeterNeumann", _go_private().public_key())
    with contextlib.suppress(NoteError):
        open_checkpoint(data, [key])


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=50),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
        max_leaves=20,
    )
)
def test_any_json_as_a_proof_gives_a_proof_error_or_a_proof(obj: object) -> None:
    candidates = [obj]
    if isinstance(obj, dict):
        candidates.append({"index": 0, "tree_size": 1, "proof": [], "checkpoint": "x", **obj})
    for c in candidates:
        if not isinstance(c, dict):
            continue
        try:
            proof = InclusionProof.from_json(c)
        except ProofError:
            continue
        with pytest.raises((ProofError, NoteError)):
            verify_firmware_included(1, 1, "0" * 64, proof, [NoteKey.of("x", _go_private().public_key())])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 400), st.integers(0, 255))
def test_a_flipped_byte_in_a_signed_checkpoint_never_verifies(position: int, value: int) -> None:
    private = _go_private()
    cp = Checkpoint("example.com/log", 8, ROOTS[7])
    note = bytearray(sign_note(format_checkpoint(cp), "example.com/log", private).encode())
    position %= len(note)
    if note[position] == value:
        return
    note[position] = value
    try:
        got = open_checkpoint(bytes(note), [NoteKey.of("example.com/log", private.public_key())])
    except NoteError:
        return
    # Only changes the signature does not cover may pass: the base64 padding of the signature line.
    assert got == cp
