"""python -m kvlab.bench COMMAND — the lab's benchmarks from the command line.

  decode      paged decode attention: GB/s vs measured copy bandwidth, vs torch SDPA (JSON → benchmarks/results/)
  versus-hf   kvlab batch-1 decode tokens/s vs HF transformers generate (CPU), identical tokens, fraction of the
              bandwidth bound (JSON → benchmarks/results/)
  versus-llamacpp  kvlab decode tokens/s at batch 1, 4, 16 vs llama.cpp on the same GGUF file (CPU; needs
              llama-cpp-python: make bench-deps), fraction of the bandwidth bound (JSON → benchmarks/results/)
  load        cold (GGUF) and warm (cached) model load times
  copy        measured copy bandwidth of the device
  gemv        one decode step's matrix-vector products on the real weights: F.linear vs kvlab's CPU kernel
  roofs       the device's roofs: copy bandwidth and matmul FLOP/s in the working dtype, and the ridge point
  roofline    the real model's prefill and decode steps and decode attention on the roofline; GB/s vs context
              and batch; TTFT and tokens/s vs batch (JSON → benchmarks/results/; notebook 06 shows it)
  gqa         MHA / GQA / MQA and SmolLM2's 9:3: the same decode attention, KV bytes and time side by side
              (JSON → benchmarks/results/; notebook 07 shows it)
  prefix      prefix caching: TTFT cold vs warm, hit rate, memory shared, token-exactness (JSON → benchmarks/results/)
  quant       quantized KV cache: decode-kernel time, bytes and GB/s per scheme vs bf16; perplexity, greedy
              agreement and memory per token on the real model (JSON → benchmarks/results/)
  serve       serving by the wall clock: decode step cost vs batch, static vs continuous batching, chunked
              prefill, latency vs request rate, beside CLAIMS.md 19–21 (JSON → benchmarks/results/)
  offload     K/V below the pool: tier GB/s (file in the page cache and flushed, host, pinned), swap vs recompute,
              prefix hits from the tier, recompute vs swap under memory pressure, what decode reads, beside
              CLAIMS.md 17 (JSON → benchmarks/results/)
  spec        speculative decoding: the self-draft's layer sweep, speedup / α / tokens per pass per drafter and k on
              grounded and open-ended prompts, the verify pass against k + 1, beside CLAIMS.md 22 (JSON →
              benchmarks/results/)
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kvlab.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["decode", "versus-hf", "versus-llamacpp", "load", "copy", "gemv", "roofs",
                                            "roofline", "gqa", "prefix", "quant", "serve", "offload", "spec"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int,
                        help="new tokens per generation (default: versus-hf and versus-llamacpp 64, prefix 16)")
    parser.add_argument("--requests", type=int, default=16, help="prefix: chatbot requests (2 to 20)")
    parser.add_argument("--runs", type=int, help="timed runs (default: versus-llamacpp 5, the others 3)")
    parser.add_argument("--prompt", default="The history of the printing press")
    parser.add_argument("--batches", type=int, nargs="+",
                        help="decode, roofline, versus-llamacpp: batch sizes (default by device; versus-llamacpp: 1 4 16)")
    parser.add_argument("--contexts", type=int, nargs="+", help="decode, roofline: context lengths (default by device)")
    parser.add_argument("--prompt-len", type=int, help="roofline: prefill length (default: 128 CPU, 1024 GPU)")
    parser.add_argument("--context", type=int, help="gqa: context length (default: 2048 CPU, 16384 GPU)")
    parser.add_argument("--batch", type=int, help="gqa: batch size (default: 4 CPU, 8 GPU)")
    parser.add_argument("--block-size", type=int, default=16, help="decode, prefix: tokens per KV block")
    parser.add_argument("--blocks", action="store_true",
                        help="roofline: CPU decode reads the GGUF blocks (default: float32 weights, as notebook 06)")
    parser.add_argument("--windows", type=int, default=8, help="quant: perplexity windows of 256 tokens")
    parser.add_argument("--skip-accuracy", action="store_true", help="quant: kernel timings only")
    parser.add_argument("--small", action="store_true",
                        help="serve, offload, spec: the CPU sizes (a few minutes) on any device")
    parser.add_argument("--no-save", action="store_true",
                        help="decode, prefix, quant, versus-hf, versus-llamacpp, roofline, gqa, serve, offload, spec: "
                             "print only, write no JSON")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 5 if args.command == "versus-llamacpp" else 3

    import kvlab
    from .roofs import device_label, measure_copy_bandwidth

    if args.command == "decode":
        from . import decode

        device = torch.device(args.device)
        gpu = device.type == "cuda"
        batches = args.batches or ([1, 4, 16, 64] if gpu else [1, 4, 16])
        contexts = args.contexts or ([1024, 8192, 32768, 131072] if gpu else [256, 1024, 4096])
        report = decode.run(device, batches, contexts, args.block_size, torch.bfloat16 if gpu else torch.float32)
        decode.print_table(report)
        if not args.no_save:
            print("saved", decode.save(report))
        return
    if args.command == "prefix":
        from . import prefix

        model, tokenizer = kvlab.load_model(device=args.device)
        new_tokens = 16 if args.tokens is None else args.tokens
        report = prefix.run_prefix_benchmark(model, tokenizer, args.requests, new_tokens, block_size=args.block_size)
        prefix.print_prefix_report(report)
        if not args.no_save:
            print("saved", prefix.save(report))
        if not report["token_exact"]:
            raise SystemExit("prefix benchmark FAILED: the prefix cache changed the generated tokens (see above)")
        return
    if args.command == "serve":
        from . import serve as serve_bench

        model, tokenizer = kvlab.load_model(device=args.device)
        report = serve_bench.run(model, tokenizer, **(serve_bench.CPU_SIZES if args.small else {}))
        serve_bench.print_report(report)
        if not args.no_save:
            print("saved", serve_bench.save(report))
        if not report["same_tokens"]:
            raise SystemExit("serve benchmark FAILED: batching or chunked prefill changed greedy tokens (see above)")
        return
    if args.command == "offload":
        from . import offload

        model, tokenizer = kvlab.load_model(device=args.device)
        report = offload.run(model, tokenizer, **(offload.CPU_SIZES if args.small else {}))
        offload.print_report(report)
        if not args.no_save:
            print("saved", offload.save(report))
        if offload.failures(report):
            raise SystemExit(f"offload benchmark FAILED: {' and '.join(offload.failures(report))} (see above)")
        return
    if args.command == "spec":
        from . import spec

        model, tokenizer = kvlab.load_model(device=args.device)
        report = spec.run(model, tokenizer, **(spec.CPU_SIZES if args.small else {}))
        spec.print_report(report)
        if not args.no_save:
            print("saved", spec.save(report))
        if spec.failures(report):
            raise SystemExit(f"spec benchmark FAILED: {' and '.join(spec.failures(report))} (see above)")
        return
    if args.command == "quant":
        from . import quant_accuracy, quant_speed
        from .results import save_result

        device = torch.device(args.device)
        report = quant_speed.run(device, batches=args.batches, contexts=args.contexts, block_size=args.block_size)
        quant_speed.print_speed(report)
        if not args.skip_accuracy:
            model, tokenizer = kvlab.load_model(device=args.device)
            report["accuracy"] = quant_accuracy.run_accuracy(model, tokenizer, num_windows=args.windows,
                                                             new_tokens=32 if args.tokens is None else args.tokens)
            quant_accuracy.print_accuracy(report["accuracy"])
        if not args.no_save:
            print("saved", save_result("quant", report))
        return
    if args.command in ("roofline", "gqa"):
        from . import gqa, roofline
        from .results import save_result

        device = torch.device(args.device)
        if args.command == "gqa":
            report = gqa.run(device, batch=args.batch, context=args.context, block_size=args.block_size)
            gqa.print_gqa(report)
        else:
            model, tokenizer = kvlab.load_model(device=args.device)
            model.decode_reads_blocks = args.blocks and model.can_read_blocks
            batches, contexts, prompt_len = roofline.default_sizes(device)
            report = roofline.run(model, tokenizer, args.batches or batches, args.contexts or contexts,
                                  args.prompt_len or prompt_len, progress=True)
            roofline.print_roofline(report)
        if not args.no_save:
            print("saved", save_result(args.command, report))
        return
    if args.command == "versus-llamacpp":
        versus_llamacpp(args, parser)
        return
    if args.command == "gemv":
        from . import gemv

        model, _ = kvlab.load_model(device=args.device)
        gemv.print_gemv(gemv.run(model, repeats=max(args.runs, 3)))
        return
    report: dict = {"device": device_label(args.device), "date": time.strftime("%Y-%m-%d")}
    if args.command == "copy":
        bw = measure_copy_bandwidth(args.device)
        report.update(copy_gb_s=bw.gb_per_s, bytes_moved=bw.bytes_moved)
    elif args.command == "roofs":
        from .roofs import device_roofs

        roofs = device_roofs(args.device)
        report.update(copy_gb_s=roofs.copy.gb_per_s, copy_bytes=roofs.copy.bytes_moved,
                      matmul_tflop_s=roofs.matmul.flops_per_s / 1e12, matmul_dtype=roofs.matmul.dtype,
                      matmul_size=roofs.matmul.size, ridge_flop_per_byte=roofs.ridge_flop_per_byte)
    elif args.command == "load":
        with tempfile.TemporaryDirectory() as cache_dir:
            os.environ["KVLAB_CACHE_DIR"] = cache_dir
            cold, _ = kvlab.load_model(device=args.device)
            cold.cache_writer.join()
            warm, _ = kvlab.load_model(device=args.device)
        report.update(cold_load_s=cold.load_seconds, warm_load_s=warm.load_seconds)
    else:
        from .results import save_result
        from .versus_hf import compare_with_hf, print_comparison

        if args.device != "cpu":
            parser.error("versus-hf compares float32 on the CPU")
        model, tokenizer = kvlab.load_model(device="cpu")
        report.update(compare_with_hf(model, tokenizer, args.prompt, 64 if args.tokens is None else args.tokens,
                                      args.runs))
        print_comparison(report)
        if not args.no_save:
            print("saved", save_result("versus_hf", report))
        if not report["tokens_identical"]:
            raise SystemExit("versus-hf FAILED: kvlab's tokens differ from HF's (see above)")
        return
    print(json.dumps(report, indent=2))


def versus_llamacpp(args, parser) -> None:
    import kvlab
    from .llamacpp_engine import import_llama_cpp
    from .results import save_result
    from .roofs import device_label
    from .versus_llamacpp import compare_with_llamacpp, print_comparison

    if args.device != "cpu":
        parser.error("versus-llamacpp compares CPU decode")
    try:
        import_llama_cpp()
    except ModuleNotFoundError as error:
        raise SystemExit(f"versus-llamacpp: {error}") from None
    model, tokenizer = kvlab.load_model(device="cpu")
    report = {"device": device_label("cpu"), "date": time.strftime("%Y-%m-%d")}
    report.update(compare_with_llamacpp(model, tokenizer, args.prompt, 64 if args.tokens is None else args.tokens,
                                        args.runs, args.batches or (1, 4, 16)))
    print_comparison(report)
    if not args.no_save:
        print("saved", save_result("versus_llamacpp", report))


if __name__ == "__main__":
    main()
