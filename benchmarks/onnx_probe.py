"""Would ONNX Runtime beat our CPU paths? The encoder backbone in torch vs ONNX Runtime, same batches.

The encode benchmark's XLM-R-base-shaped random checkpoint (``encode_bench.ensure_checkpoint``) and
its real passage mix; the backbone (what takes ~99 % of encode time) is exported to ONNX (opset 17,
dynamic batch and length), fused by ``onnxruntime.transformers.optimizer`` (attention, skip-layer-norm,
GELU) and, for the fast mode, quantised by ``quantize_dynamic`` (int8 weights, per channel).
Compared on the same length-sorted batches (batch 32, max length 512, 2 threads): torch fp32 (eager,
SDPA), our ``M3Model.optimize("fp32")`` and ``("int8")`` / ``("bf16")`` paths, ONNX Runtime fp32
and int8. Reported: non-pad tokens/s, the ratio to torch fp32, and the max abs deviation of the
last hidden state (and min cosine of the [CLS] state) from torch fp32.

Measured 2026-11-28 (``--n 200``: 200 passages, 40,960 non-pad tokens, 2 threads, quiet machine),
tokens/s and ratio to torch fp32 eager: torch 620 (1.00×); m3embed fp32 787 (1.27×, max|Δh| 5.7e-6),
bf16 1,239 (2.00×, cos[CLS] ≥ 0.99986), int8 1,257 (2.03×, ≥ 0.99931); ONNX Runtime 1.32 fp32 plain
export 632 (1.02×), fused 668 (1.08×); int8 s8 per-channel weights 1,623 (**2.62×**, but cos[CLS] ≥
0.99880, below the 0.999 bar), u8 per-tensor 950 (1.53×, ≥ 0.99797). ORT's dynamic int8 quantises
activations with one scale per tensor; keeping the Q/K/V projections in fp32 restores cos ≥ 0.99910
but falls to 1,129 tokens/s (1.82×), slower than our bf16 / int8 paths. So ONNX Runtime is not faster
in fp32, and in int8 it is faster only below the quality bar. (Quantising the *fused* graph fails in
ORT 1.32's shape inference, so the int8 models quantise the plain export's MatMuls and let the
session's optimiser fuse the rest.)

Needs ``pip install onnx onnxscript onnxruntime`` (not dependencies of m3embed)::

    python benchmarks/onnx_probe.py --n 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from encode_bench import DEFAULT_CKPT, DEFAULT_TOKENIZER, SHAPE, ensure_checkpoint, select_texts  # noqa: E402


def batches(model, texts: list[str], batch_size: int, max_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    ids = model.tokenizer.tokenize(texts, max_length=max_length)
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out = []
    for s in range(0, len(order), batch_size):
        chunk = [ids[i] for i in order[s : s + batch_size]]
        width = max(len(x) for x in chunk)
        a = np.full((len(chunk), width), model.tokenizer.special.pad, dtype=np.int64)
        m = np.zeros((len(chunk), width), dtype=np.int64)
        for r, x in enumerate(chunk):
            a[r, : len(x)] = x
            m[r, : len(x)] = 1
        out.append((a, m))
    return out


def timed(run, bs) -> tuple[float, list[np.ndarray]]:
    run(bs[-1:])  # warm-up on the shortest batch
    t = time.perf_counter()
    outs = run(bs)
    return time.perf_counter() - t, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from m3embed import M3Model

    torch.set_num_threads(args.threads)
    ckpt = ensure_checkpoint(DEFAULT_CKPT, DEFAULT_TOKENIZER)
    model = M3Model.from_pretrained(ckpt)
    texts = select_texts(args.n)
    bs = batches(model, texts, args.batch_size, args.max_length)
    tokens = int(sum(m.sum() for _, m in bs))
    backbone = model.backbone.eval()

    def torch_run(model_call):
        def run(xs):
            with torch.inference_mode():
                return [model_call(torch.from_numpy(a), torch.from_numpy(m)) for a, m in xs]
        return run

    results: dict[str, dict] = {}
    ref_t, ref = timed(torch_run(lambda a, m: backbone(input_ids=a, attention_mask=m).last_hidden_state.numpy()), bs)
    results["torch fp32 (eager, SDPA)"] = {"s": ref_t}
    for prec in ("fp32", "bf16", "int8"):
        fast = M3Model.from_pretrained(ckpt, precision=prec)  # hidden_states() takes the fast path
        t, outs = timed(torch_run(lambda a, m, fast=fast: fast.hidden_states(a, m).float().numpy()), bs)
        results[f"m3embed {prec}"] = {"s": t, "outs": outs}
        del fast

    work = Path(tempfile.mkdtemp(prefix="onnx-probe-"))
    onnx_path = work / "backbone.onnx"
    a0, m0 = (torch.from_numpy(x) for x in bs[0])
    t = time.perf_counter()
    class Backbone(torch.nn.Module):  # keyword call: transformers 5's forward takes no positional mask
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    torch.onnx.export(Backbone(backbone).eval(), (a0, m0), str(onnx_path), input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "b", 1: "l"}, "attention_mask": {0: "b", 1: "l"},
                                    "last_hidden_state": {0: "b", 1: "l"}})
    export_s = time.perf_counter() - t
    opt = optimize_model(str(onnx_path), model_type="bert", num_heads=SHAPE["heads"], hidden_size=SHAPE["hidden"])
    fused = work / "backbone.opt.onnx"
    opt.save_model_to_file(str(fused))
    # Quantising the fused graph fails in ORT 1.32's shape inference (its Attention / SkipLayerNorm
    # contrib ops), so the int8 model is the plain export with int8 MatMuls; the session's own
    # graph optimiser (ORT_ENABLE_ALL) then fuses what it can around them at load time.
    quant = work / "backbone.int8.onnx"
    quantize_dynamic(str(onnx_path), str(quant), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])
    quant_u8 = work / "backbone.u8.onnx"
    quantize_dynamic(str(onnx_path), str(quant_u8), weight_type=QuantType.QUInt8, per_channel=False,
                     op_types_to_quantize=["MatMul"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for label, path in (("onnxruntime fp32 (export)", onnx_path), ("onnxruntime fp32 (fused)", fused),
                        ("onnxruntime int8 (s8 per-channel)", quant), ("onnxruntime int8 (u8 per-tensor)", quant_u8)):
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def run(xs, sess=sess):
            return [sess.run(None, {"input_ids": a, "attention_mask": m})[0] for a, m in xs]

        t, outs = timed(run, bs)
        results[label] = {"s": t, "outs": outs}

    report = {"tokens": tokens, "batches": len(bs), "threads": args.threads, "export_s": export_s,
              "fused_ops": opt.get_fused_operator_statistics(), "engines": {}}
    print(f"{len(texts)} passages, {tokens:,} non-pad tokens, {len(bs)} batches, {args.threads} threads")
    for label, r in results.items():
        row = {"tokens_per_s": tokens / r["s"], "ratio_vs_torch_fp32": ref_t / r["s"]}
        if "outs" in r:
            dev = max(float(np.abs(o - x).max()) for o, x in zip(r["outs"], ref, strict=True))
            cls = np.concatenate([o[:, 0] for o in r["outs"]])
            rcls = np.concatenate([x[:, 0] for x in ref])
            cos = (cls * rcls).sum(1) / np.linalg.norm(cls, axis=1) / np.linalg.norm(rcls, axis=1)
            row.update(max_abs_dev=dev, cls_cos_min=float(cos.min()))
        report["engines"][label] = row
        print(f"  {label:30s} {row['tokens_per_s']:8.0f} tokens/s  {row['ratio_vs_torch_fp32']:.2f}×"
              + (f"  max|Δh| {row['max_abs_dev']:.2e}  cos[CLS] ≥ {row['cls_cos_min']:.5f}" if "outs" in r else ""))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
