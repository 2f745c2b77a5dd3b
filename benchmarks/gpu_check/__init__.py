"""The GPU check: ragged's resource management on a real CUDA card.

    python -m benchmarks.gpu_check            # on the GPU machine, about 7 minutes (--budget-s 420)
    python -m benchmarks.gpu_check --smoke    # the same code paths on the CPU, tiny

Sections (``sections.py``), each in its own child process under its own
deadline, after a preflight that fails in seconds where the check cannot run:

1. tests: the CUDA-marked tests, for real.
2. build: ColQwen2 at Qwen2-VL-2B size and ColModernVBert at 250 M with
   random weights, bf16.
3. oom: caps the card just above one page's need, forces a batch that
   cannot fit, and asserts that real OOMs happened and every page came back.
4. sweep: adaptive batching against fixed sizes in both page orders, at an
   8 GiB cap and on the whole card, with model and preprocessing time apart.

Results reach ``--out`` (default ``$OUT``) as each run ends:
``gpu_check.md``, ``gpu_check.json`` and the whole log, ``gpu_check.log``.
Sizes are GiB (1024^3 bytes). docs/benchmarks.md says how to run it on the
GPU machine.
"""
