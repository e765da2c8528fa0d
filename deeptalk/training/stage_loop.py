"""One training stage: the optimisation loop over a stage's examples, resumable, logging loss.csv."""
from __future__ import annotations

import csv
import functools
import json
import time
from pathlib import Path

import torch
from accelerate.utils import send_to_device
from torch import nn
from tqdm import tqdm

from deeptalk.training.batching import epoch_order
from deeptalk.training.examples import Example, collate
from deeptalk.training.param_groups import set_trainable, stage_train_groups


class Trainee(nn.Module):
    """Projector + LLM as one module, so accelerate / DDP wrap a single thing."""

    def __init__(self, model, projector, stride: int, full_logits: bool = False):
        super().__init__()
        self.model, self.projector, self.stride = model, projector, stride
        self.full_logits = full_logits   # distillation reads every position's logits

    def forward(self, batch: dict):
        speech = None
        if batch["feats"]:
            w = self.projector.fc1.weight
            speech = torch.cat([self.projector(f.unsqueeze(0).to(w.device, w.dtype))[0] for f in batch["feats"]])
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_modality=batch["token_modality"], speech_embeds=speech,
                          audio_codes=batch.get("audio_codes"), labels=batch["labels"],
                          audio_labels=batch.get("audio_labels"), use_cache=False,
                          text_logits_where_labelled=not self.full_logits)


def decayed_lr(lr: float, max_steps: int, decay_steps: int, final_ratio: float):
    """step -> learning rate: `lr` until the last `decay_steps` steps, then down linearly to
    `final_ratio` x lr at the last step (warmup-stable-decay without the warmup: the step count a
    stage runs is known, and annealing at its end is where a constant rate leaves loss behind)."""
    if decay_steps < 0 or not 0 <= final_ratio <= 1:
        raise ValueError(f"lr_decay_steps must be >= 0 and lr_final_ratio in [0, 1], got {decay_steps}, {final_ratio}")
    begin = max_steps - decay_steps

    def at(step: int) -> float:
        if decay_steps == 0 or step < begin:
            return lr
        return lr * (1 - (1 - final_ratio) * (step - begin + 1) / decay_steps)

    return at


def resumes(out: Path, resume: bool) -> bool:
    """Whether `train_stage(..., out, resume)` goes on from a saved state instead of starting fresh."""
    return resume and (out / "state" / "progress.json").is_file()


def train_stage(acc, stage: str, scfg: dict, model, encoder, examples: list[Example], tokenizer, out: Path,
                seed: int, resume: bool, teacher=None) -> dict:
    """Train one stage; checkpoint every `checkpoint_every` steps into out/state; returns stats.

    `teacher`: the dense base LLM, needed when the stage sets `distill:` (deeptalk/distill.py)."""
    from deeptalk.distill import check_config, text_kl
    from deeptalk.lowrank import add_lowrank, merge_lowrank

    lowrank = "text_experts_lowrank" in stage_train_groups(model, stage, scfg)
    lowrank_rank = int(scfg.get("lowrank_rank", 8)) if lowrank else None
    if lowrank:  # W + B A on every text expert matrix, merged back once the stage ends
        add_lowrank(model, lowrank_rank, seed, "text")
    elif scfg.get("lowrank_rank") is not None:
        raise ValueError(f"stage {stage}: lowrank_rank is set but the stage does not train 'text_experts_lowrank'")
    routing = set_trainable(model, encoder, stage, scfg)
    dcfg = check_config(scfg["distill"], stage) if scfg.get("distill") else None
    if dcfg is not None:
        if teacher is None:
            raise ValueError(f"stage {stage}: distill needs the dense base LLM as teacher")
        n_teachable = sum(max(e.ids) < teacher.config.vocab_size for e in examples)
        if not n_teachable:
            raise ValueError(f"stage {stage}: distill is set but no training example is text-only "
                             "(the teacher only reads base-vocabulary tokens)")
        teacher = teacher.to(acc.device, model.dtype).eval()
    trainee = Trainee(model, encoder.projector, encoder.config.stride, full_logits=dcfg is not None)
    params = [p for p in trainee.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    if not params:
        raise ValueError(f"stage {stage}: nothing to train")
    if not examples:
        raise ValueError(f"stage {stage}: no training examples")
    opt = torch.optim.AdamW(params, lr=float(scfg["lr"]), weight_decay=float(scfg.get("weight_decay", 0.0)))
    trainee.train()  # the projector only: Whisper is not part of the trainee and stays in eval mode
    wrapped, opt = acc.prepare(trainee, opt)
    world, rank = acc.num_processes, acc.process_index
    bs = int(scfg["batch_size"])
    max_steps, max_seconds = int(scfg["max_steps"]), float(scfg.get("max_seconds", 1e12))
    every = int(scfg.get("checkpoint_every", 50))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    q = model.config.num_codebooks

    state_dir, csv_path = out / "state", out / "loss.csv"
    start, seconds, tokens, seq_tokens, idle = 0, 0.0, 0, 0, 0
    if resumes(out, resume):
        prog = json.loads((state_dir / "progress.json").read_text())
        acc.load_state(str(state_dir / "accelerate"))
        start, seconds, tokens = prog["step"], prog["seconds"], prog["tokens"]
        seq_tokens, idle = prog.get("seq_tokens", 0), prog.get("idle_steps", 0)
        acc.print(f"stage {stage}: resuming at step {start}")
        if acc.is_main_process and csv_path.is_file():  # drop rows logged after the checkpoint
            rows = list(csv.reader(csv_path.open()))
            keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= start]
            with csv_path.open("w", newline="") as f:
                csv.writer(f).writerows(keep)
    elif acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        with csv_path.open("w", newline="") as f:
            csv.writer(f).writerow(["step", "loss", "text_loss", "audio_loss", "tokens", "seconds", "distill_loss"])
    acc.wait_for_everyone()

    per_epoch = max(len(examples) // (bs * world), 1)

    lengths = [len(e.ids) for e in examples]
    group = bool(scfg.get("group_by_length", True))

    @functools.lru_cache(maxsize=2)
    def order_of(epoch: int) -> list[int]:
        return epoch_order(lengths, bs * world, seed, epoch, group)

    def batch_for(step: int) -> list[Example]:
        epoch, k = divmod(step, per_epoch)
        order = order_of(epoch)
        chunk = order[k * bs * world: (k + 1) * bs * world] or order[: bs * world]
        return [examples[i] for i in chunk[rank::world]]

    lr_at = decayed_lr(float(scfg["lr"]), max_steps, int(scfg.get("lr_decay_steps", 0)),
                       float(scfg.get("lr_final_ratio", 0.1)))
    bar = tqdm(range(start, max_steps), desc=f"stage {stage}", disable=not acc.is_main_process, initial=start,
               total=max_steps)
    t_last = time.monotonic()
    step = start
    for step in bar:
        # to the accelerator: accelerate moves what a prepared loader yields, not a hand-made batch
        batch = send_to_device(collate(batch_for(step), pad_id, q, scfg.get("max_len")), acc.device)
        out_ = wrapped(batch)
        loss_t, kl = out_.loss, None
        if dcfg is not None:
            kl, _ = text_kl(out_.logits, teacher, batch["input_ids"], batch["attention_mask"], dcfg["temperature"])
            loss_t = loss_t + dcfg["weight"] * kl
        for g in opt.param_groups:  # from the step alone: a resumed stage continues the same schedule
            g["lr"] = lr_at(step)
        # a batch can reach none of the trained parameters (text turns only, when only the speech
        # parts train): nothing to learn, no step. Under several processes all must step together:
        # one whose batch is idle while another's is not joins with zero gradients
        live = bool(acc.gather(torch.tensor([loss_t.requires_grad], device=acc.device)).any())
        if live:
            if not loss_t.requires_grad:
                loss_t = loss_t + sum(p.sum() for p in params) * 0.0
            acc.backward(loss_t)
            if scfg.get("grad_clip"):
                acc.clip_grad_norm_(params, float(scfg["grad_clip"]))
            opt.step()
        else:
            idle += 1
        opt.zero_grad(set_to_none=True)
        # supervised tokens (labels) and every token the forward pass processed
        n_tok = int(acc.gather(torch.tensor([sum(e.tokens for e in batch_for(step))], device=acc.device)).sum())
        seq_tokens += int(acc.gather(batch["attention_mask"].sum().reshape(1)).sum())
        now = time.monotonic()
        seconds += now - t_last
        t_last = now
        tokens += n_tok
        loss = float(acc.reduce(loss_t.detach(), "mean"))
        if acc.is_main_process:
            with csv_path.open("a", newline="") as f:
                tl = "" if out_.text_loss is None else float(out_.text_loss.detach())
                al = "" if out_.audio_loss is None else float(out_.audio_loss.detach())
                dl = "" if kl is None else float(kl.detach())
                csv.writer(f).writerow([step + 1, loss, tl, al, tokens, round(seconds, 3), dl])
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / max(seconds, 1e-9):.0f}")
        done = step + 1 >= max_steps or seconds >= max_seconds
        if (step + 1) % every == 0 or done:
            acc.save_state(str(state_dir / "accelerate"))
            if acc.is_main_process:
                (state_dir / "progress.json").write_text(json.dumps({"step": step + 1, "seconds": seconds,
                                                                     "tokens": tokens, "seq_tokens": seq_tokens,
                                                                     "idle_steps": idle}))
            acc.wait_for_everyone()
            t_last = time.monotonic()  # checkpoint writing is not training time
        if done:
            break
    steps_done = step + 1 if max_steps > start else start
    if lowrank:
        merge_lowrank(model)
    return {"stage": stage, "examples": len(examples), "steps": steps_done, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None, "seq_tokens": seq_tokens,
            "seq_tokens_per_s": round(seq_tokens / seconds, 1) if seconds else None, "routing_mode_train": routing,
            "trainable_params": n_trainable, "world_size": world, "batch_size": bs, "lr": scfg["lr"],
            "lr_decay_steps": int(scfg.get("lr_decay_steps", 0)), "lr_final_ratio": float(scfg.get("lr_final_ratio", 0.1)),
            "final_loss": loss if max_steps > start else None, "idle_steps": idle,
            "distill": dcfg, "distill_examples": n_teachable if dcfg is not None else None,
            "lowrank_rank": lowrank_rank}
