"""Fine-tuning step throughput and MFU of BERT-base on one GPU, bf16.

BERT-base from its config (random init: no download), a sequence-classification head, AdamW,
bf16 autocast as the engine's `precision: bf16` uses (fp32 master weights). For each sequence
length the batch is sized to the GPU (doubled while a step fits in --memory-fraction of its
memory, unless --batch is given), then --steps timed steps follow --warmup ones.

    MFU = 6 * N * tokens / seconds / peak

with N the model's parameter count (embeddings included; attention's own FLOPs, about
12 * layers * hidden * seq per token, are left out as usual, so MFU slightly understates the
work done at length 512) and peak the GPU's dense bf16 FLOP/s: 989 TFLOP/s for H100/H200
SXM (--peak-tflops for others).

    .venv/bin/python bench/gpu_mfu.py [--seq-lens 128,512] [--steps 20] [--peak-tflops 989]
    .venv/bin/python bench/gpu_mfu.py --device cpu --layers 2 --hidden 128 --seq-lens 32 --batch 4
        (a seconds-long smoke test of this script on a machine without a GPU)

Without CUDA it prints "skipped: no GPU" and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time


def build_model(args, device):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(attn_implementation="sdpa")  # bert-base-uncased's shape
    if args.layers:
        config.num_hidden_layers = args.layers
    if args.hidden:
        config.hidden_size = args.hidden
        config.num_attention_heads = max(args.hidden // 64, 1)
        config.intermediate_size = 4 * args.hidden
    config.num_labels = 2
    torch.manual_seed(0)
    return BertForSequenceClassification(config).to(device).train(), config


def make_step(model, device):
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=device.type == "cuda")

    def step(batch: dict) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def make_batch(config, batch_size: int, seq_len: int, device) -> dict:
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (batch_size,), generator=g).to(device),
    }


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fits(model, config, step, batch_size: int, seq_len: int, device, fraction: float) -> bool:
    """One step at this batch size runs and peaks under `fraction` of the GPU's memory."""
    import torch

    try:
        torch.cuda.reset_peak_memory_stats(device)
        step(make_batch(config, batch_size, seq_len, device))
        sync(device)
    except torch.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return torch.cuda.max_memory_allocated(device) <= fraction * total


def size_batch(model, config, step, seq_len: int, device, fraction: float) -> int:
    batch = 8
    if not fits(model, config, step, batch, seq_len, device, fraction):
        return 4
    while batch < 4096 and fits(model, config, step, 2 * batch, seq_len, device, fraction):
        batch *= 2
    return batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-lens", default="128,512")
    ap.add_argument("--batch", type=int, default=0, help="per step; 0 = sized to the GPU")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak")
    ap.add_argument("--memory-fraction", type=float, default=0.8)
    ap.add_argument("--device", default="cuda", help="cuda (default) | cpu (smoke test)")
    ap.add_argument("--layers", type=int, default=0, help="override (smoke tests)")
    ap.add_argument("--hidden", type=int, default=0, help="override (smoke tests)")
    args = ap.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no GPU")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        print(
            f"{name}, {memory:.0f} GiB, torch {torch.__version__}, peak {args.peak_tflops:g} TFLOP/s"
        )
    else:
        print(f"{device} smoke test (MFU against {args.peak_tflops:g} TFLOP/s means nothing here)")

    model, config = build_model(args, device)
    n_params = sum(p.numel() for p in model.parameters())
    step = make_step(model, device)
    print(
        f"BERT {config.num_hidden_layers} layers, hidden {config.hidden_size}: "
        f"{n_params / 1e6:.1f} M parameters, bf16 autocast, AdamW",
        flush=True,
    )
    rows = []
    for seq_len in (int(s) for s in args.seq_lens.split(",")):
        batch_size = args.batch or size_batch(
            model, config, step, seq_len, device, args.memory_fraction
        )
        batch = make_batch(config, batch_size, seq_len, device)
        for _ in range(args.warmup):
            step(batch)
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step(batch)
        sync(device)
        seconds = (time.perf_counter() - start) / args.steps
        tokens = batch_size * seq_len
        tflops = 6 * n_params * tokens / seconds / 1e12
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0
        rows.append((seq_len, batch_size, seconds, tokens / seconds, tflops, peak_mem))
        print(f"  seq {seq_len}: batch {batch_size}, {seconds * 1000:.1f} ms/step", flush=True)

    print(
        f"\n{'seq':>5} {'batch':>6} {'ms/step':>8} {'samples/s':>10} {'tokens/s':>11} "
        f"{'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8}"
    )
    for seq_len, batch_size, seconds, tps, tflops, mem in rows:
        print(
            f"{seq_len:5d} {batch_size:6d} {seconds * 1000:8.1f} {batch_size / seconds:10.1f} "
            f"{tps:11,.0f} {tflops:8.1f} {100 * tflops / args.peak_tflops:5.1f}% {mem:8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
