"""Encode a few texts with all three representations and score query/passage pairs.

Usage: python examples/quickstart.py [MODEL]   (default: m3embed-small, offline)
"""

import sys

from m3embed import M3Model

model = M3Model.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else "m3embed-small")
passages = [
    "BGE M3 gives every text a dense vector, sparse lexical weights and ColBERT token vectors.",
    "Der Rhein ist einer der längsten Flüsse Europas.",
    "长城是中国古代的军事防御工程。",
]
out = model.encode(passages, return_dense=True, return_sparse=True, return_colbert=True)
print("dense", out.dense.shape, "| colbert", [v.shape for v in out.colbert_vecs])
print("lexical weights of passage 0:", model.convert_id_to_token(out.lexical_weights[0]))
scores = model.compute_score(
    [("what does BGE M3 output?", p) for p in passages], weights_for_different_modes=[0.4, 0.2, 0.4]
)
for mode, values in scores.items():
    print(f"{mode:>22}: " + "  ".join(f"{v:.4f}" for v in values))
