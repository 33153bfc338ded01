"""Groups `perf report --sort dso,symbol -g none` lines (on stdin) by what the code is, and
prints each group's share of the samples (scripts/profile-directory.sh)."""
import re
import sys

GROUPS = [
    ("Noise ChaCha20-Poly1305", r"chacha20|poly1305|core_arch::x86"),
    ("VRF / curve25519 (akd proofs)", r"curve25519|FieldElement|EdwardsPoint|ExtendedPoint|AffineNiels|LookupTable|subtle::"),
    ("Ed25519 in libsodium", r"fe25519|ge25519|sc25519|slide_vartime|crypto_sign|SHA512|sha512"),
    ("SQLite", r"sqlite3"),
    ("akd tree and its cache", r"akd|dashmap|NodeLabel|blake3"),
    ("memcpy / memcmp / memset", r"mem(move|cpy|cmp|set)"),
    ("malloc / free", r"malloc|free|calloc|realloc|_int_|consolidate"),
    ("Cap'n Proto RPC", r"capnp"),
    ("tokio / futures (tasks, wakers, pipes)", r"tokio|futures|waker|DuplexStream"),
    ("the answer cache", r"AnswerCache"),
]

shares = {}
for line in sys.stdin:
    m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if not m:
        continue
    pct, dso, kind, symbol = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    if kind == "k" or dso.startswith("[kernel"):
        group = "kernel (TCP, syscalls, scheduling)"
    else:
        group = next((name for name, rx in GROUPS if re.search(rx, symbol)), "other")
    shares[group] = shares.get(group, 0.0) + pct
for group, pct in sorted(shares.items(), key=lambda kv: -kv[1]):
    print(f"{pct:5.1f}%  {group}")
