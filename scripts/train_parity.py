"""Loss and gradient parity of our unified objective with FlagEmbedding 1.4.2's M3 fine-tuning model.

Both models are built from the same seeded random checkpoint (dropout set to 0) and fed the same
``input_ids`` / ``attention_mask``; FlagEmbedding's ``EncoderOnlyEmbedderM3Model.forward`` in training
mode (unified fine-tuning, self-distillation from step 0, temperature 0.02) against our
``encode_reps`` + ``m3_loss`` with ``colbert_padding: clamp`` (the reference's padded MaxSim). Prints
the two losses and the largest gradient difference per parameter group. Needs the reference's
environment::

    PYTHONPATH=src REFPY scripts/train_parity.py [--write-golden tests/golden/train_loss.json]

``--write-golden`` stores the inputs, FlagEmbedding's losses and gradients, for
``tests/test_train_parity.py`` (which runs without FlagEmbedding).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
TOKENIZER = REPO.parent / "shared" / "reference" / "xlmr-tokenizer"
QUERIES = ["what is the capital of france", "who wrote hamlet", "speed of light in vacuum"]
PASSAGES = [
    "Paris is the capital and most populous city of France.", "Berlin is the capital of Germany.",
    "Lyon is a city in France.", "Hamlet is a tragedy written by William Shakespeare.",
    "Macbeth was written around 1606.", "The Globe Theatre was built in 1599.",
    "The speed of light in vacuum is 299,792,458 metres per second.", "Sound travels slower than light.",
    "A vacuum is space devoid of matter.",
]
G = 3


def build_checkpoint(directory: Path, tokenizer: Path) -> Path:
    """The seeded tiny checkpoint of the parity check: dropout 0, sparse bias + 0.5 (most weights > 0)."""
    from m3embed.testing import build_random_checkpoint

    ckpt = build_random_checkpoint(directory, tokenizer, layers=2, hidden=32, heads=4, ffn=64)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # same network in both
    (ckpt / "config.json").write_text(json.dumps(cfg))
    head = torch.load(ckpt / "sparse_linear.pt")
    head["bias"] = head["bias"] + 0.5  # most token weights > 0, so the lexical path carries gradient
    torch.save(head, ckpt / "sparse_linear.pt")
    return ckpt


def main() -> None:
    from FlagEmbedding.finetune.embedder.encoder_only.m3.modeling import EncoderOnlyEmbedderM3Model
    from transformers import AutoModel, AutoTokenizer

    from m3embed import M3Model
    from m3embed.train.batching import encode_reps
    from m3embed.train.losses import LossConfig, m3_loss

    ckpt = build_checkpoint(Path(tempfile.mkdtemp()) / "ckpt", TOKENIZER)

    tok = AutoTokenizer.from_pretrained(ckpt)
    q = tok(QUERIES, padding=True, truncation=True, max_length=32, return_tensors="pt")
    p = tok(PASSAGES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    q = {k: v for k, v in q.items() if k in ("input_ids", "attention_mask")}
    p = {k: v for k, v in p.items() if k in ("input_ids", "attention_mask")}

    results = {}
    golden = {"q_ids": q["input_ids"].tolist(), "q_mask": q["attention_mask"].tolist(),
              "p_ids": p["input_ids"].tolist(), "p_mask": p["attention_mask"].tolist(), "group_size": G,
              "temperature": 0.02, "cases": {}}
    for skd in (True, False):
        base = AutoModel.from_pretrained(ckpt)
        hidden = base.config.hidden_size
        colbert, sparse = torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 1)
        colbert.load_state_dict({k: v.float() for k, v in torch.load(ckpt / "colbert_linear.pt").items()})
        sparse.load_state_dict({k: v.float() for k, v in torch.load(ckpt / "sparse_linear.pt").items()})
        ref = EncoderOnlyEmbedderM3Model({"model": base, "colbert_linear": colbert, "sparse_linear": sparse},
                                         tokenizer=tok, temperature=0.02, normalize_embeddings=True,
                                         unified_finetuning=True, use_self_distill=skd, self_distill_start_step=-1)
        ref.train()
        ref_loss = ref(queries=q, passages=p).loss
        ref_loss.backward()
        ref_grads = {"encoder": base.encoder.layer[0].attention.self.query.weight.grad,
                     "embeddings": base.embeddings.word_embeddings.weight.grad,
                     "colbert_linear": colbert.weight.grad, "sparse_linear": sparse.weight.grad}

        ours = M3Model.from_pretrained(ckpt)
        ours.train()
        qr = encode_reps(ours, q["input_ids"], q["attention_mask"])
        pr = encode_reps(ours, p["input_ids"], p["attention_mask"])
        out = m3_loss(qr, pr, G, LossConfig(temperature=0.02, colbert_clamp=True), self_distill=skd)
        out.loss.backward()
        our_grads = {"encoder": ours.backbone.encoder.layer[0].attention.self.query.weight.grad,
                     "embeddings": ours.backbone.embeddings.word_embeddings.weight.grad,
                     "colbert_linear": ours.colbert_linear.weight.grad, "sparse_linear": ours.sparse_linear.weight.grad}
        golden["cases"][f"self_distill={skd}"] = {
            "loss": ref_loss.item(), "grads": {k: ref_grads[k].tolist() for k in ("encoder", "colbert_linear",
                                                                                   "sparse_linear")}}
        results[f"self_distill={skd}"] = {
            "flagembedding_loss": ref_loss.item(), "m3embed_loss": out.loss.item(),
            "abs_diff": abs(ref_loss.item() - out.loss.item()),
            "max_grad_diff": {k: float((ref_grads[k] - our_grads[k]).abs().max()) for k in ref_grads},
            "max_grad": {k: float(ref_grads[k].abs().max()) for k in ref_grads},
        }
    print(json.dumps(results, indent=2))
    if "--write-golden" in sys.argv:
        Path(sys.argv[sys.argv.index("--write-golden") + 1]).write_text(json.dumps(golden))


if __name__ == "__main__":
    main()
