"""The inputs a parity check feeds both models: seeded, re-creatable from the seed and shapes alone.

Language models get token ids spread over the whole vocabulary at several sequence lengths (1, a
short one, a long one), in a batch whose last row is left-padded (mask 0) as a batch of prompts of
different lengths is; or real prompts from a file through the source's tokenizer, left-padded.
Tensor models get seeded values of their ``--input-shape``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FormatError, MissingDependencyError, UnsupportedError
from ..models.runnable import CAUSAL_LM, ENCODER, Runnable, check_memory, example_feeds, feed_bytes, position_limit

DEFAULT_SEQ_LENS = (1, 8, 32)
DEFAULT_BATCH = 2


@dataclass
class InputSet:
    """One batch of inputs, named for reports (``"seq 8, batch 2, row 1 left-padded by 4"``)."""

    label: str
    feeds: dict[str, Any]
    seq_len: int
    left_pad: int = 0

    @property
    def mask(self):
        """Which (batch, position) entries are real tokens; None for tensor models."""
        return self.feeds.get("attention_mask")

    def describe(self) -> dict:
        return {"label": self.label, "seq_len": self.seq_len, "left_pad": self.left_pad,
                "shapes": {k: list(v.shape) for k, v in self.feeds.items()},
                "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in self.feeds.items()}}


def max_positions(runnable: Runnable) -> int | None:
    """The longest sequence the model takes, when its file or config says (position tables)."""
    return position_limit(runnable)


def check_sizes(ref: Runnable, *, batch: int, seq_lens, new_tokens: int, explicit: bool = True) -> None:
    """Refuse, before anything is allocated, sizes past the reference's position table (``explicit``:
    the caller chose ``seq_lens``; default ones are clipped to the table instead) or past half the memory
    available by estimate (inputs and both models' outputs of every set, and the generated sequence)."""
    where = ref.path or ref.origin
    if batch < 1:
        raise UnsupportedError(f"--batch {batch}: needs at least one row")
    lens = [int(n) for n in seq_lens]
    if ref.kind not in (CAUSAL_LM, ENCODER):
        check_memory(feed_bytes(ref, batch, lens[0] if lens else 8), f"{where}: inputs of batch {batch}, shapes "
                     f"{[list(i.shape) for i in ref.inputs]}", ref.device)
        return
    longest = max_positions(ref)
    if longest is not None:
        if new_tokens > longest:
            raise UnsupportedError(f"--new-tokens {new_tokens}: the reference's position table holds {longest} "
                                   f"positions ({where}); generate at most {longest // 2}")
        over = [n for n in lens if n > longest]
        if explicit and over:
            raise UnsupportedError(f"--seq-len {over[0]}: the reference's position table holds {longest} positions "
                                   f"({where}); use at most {longest}")
        lens = [min(n, longest) for n in lens]
    need = sum(feed_bytes(ref, batch, n) for n in lens) + feed_bytes(ref, batch, max(lens, default=1) + new_tokens)
    check_memory(need, f"{where}: parity at batch {batch}, sequences {lens}" +
                 (f" and {new_tokens} generated tokens" if new_tokens else ""), ref.device)


def token_sets(runnable: Runnable, *, batch: int, seq_lens, seed: int, reserve: int = 0) -> list[InputSet]:
    """Seeded token batches, one per sequence length; the last row left-padded by half its length."""
    longest = max_positions(runnable)
    sets = []
    for i, seq_len in enumerate(seq_lens):
        if seq_len < 1:
            raise UnsupportedError(f"--seq-len {seq_len}: a sequence needs at least one token")
        if longest is not None and seq_len + reserve > longest:
            clipped = max(1, longest - reserve)
            if clipped in [s.seq_len for s in sets]:
                continue
            seq_len = clipped
        pad = seq_len // 2 if batch > 1 and seq_len > 1 else 0
        feeds = example_feeds(runnable, batch=batch, seq_len=seq_len, seed=seed + i, left_pad=pad)
        label = f"seq {seq_len}, batch {batch}" + (f", last row left-padded by {pad}" if pad else "")
        sets.append(InputSet(label, feeds, seq_len, pad))
    return sets


def tensor_sets(runnable: Runnable, *, batch: int, seq_lens, seed: int) -> list[InputSet]:
    """Seeded values of the model's input shape (one set; a dynamic axis takes batch / the first length)."""
    feeds = example_feeds(runnable, batch=batch, seq_len=seq_lens[0] if seq_lens else 8, seed=seed)
    shape = "×".join(str(d) for d in next(iter(feeds.values())).shape)
    return [InputSet(f"input {shape}", feeds, 0)]


def prompt_sets(runnable: Runnable, prompts_file: Path, tokenizer_dir: Path | None) -> list[InputSet]:
    """The prompts of ``prompts_file`` (one per line) through the source's tokenizer, left-padded."""
    import torch

    try:
        prompts = [line for line in Path(prompts_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{prompts_file}: cannot read the prompts ({exc})") from exc
    if not prompts:
        raise FormatError(f"{prompts_file}: no prompts in the file; write one prompt per line")
    tok = load_tokenizer(tokenizer_dir, prompts_file)
    rows = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    if any(not r for r in rows):
        raise FormatError(f"{prompts_file}: a prompt encodes to no tokens; remove empty prompts")
    vocab = runnable.vocab_size
    if vocab is not None and max(max(r) for r in rows) >= vocab:
        raise UnsupportedError(f"{tokenizer_dir}: the tokenizer gives ids beyond the model's vocabulary of {vocab}")
    width = max(len(r) for r in rows)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    feeds = {spec.name: {"input_ids": ids, "attention_mask": mask}.get(spec.name, torch.zeros_like(ids))
             for spec in runnable.inputs}
    return [InputSet(f"{len(rows)} prompts from {Path(prompts_file).name}, up to {width} tokens, left-padded", feeds,
                     width, int(width - min(len(r) for r in rows)))]


def tokenizer_dir_of(path) -> Path | None:
    """The directory holding the source's tokenizer files, if there is one."""
    if path is None:
        return None
    path = Path(path)
    for d in (path, path.parent) if path.is_file() else (path,):
        if any((d / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
            return d
    return None


def load_tokenizer(tokenizer_dir: Path | None, prompts_file):
    if tokenizer_dir is None:
        raise UnsupportedError(f"--prompts {prompts_file}: the reference has no tokenizer beside it "
                               "(tokenizer.json / tokenizer_config.json); drop --prompts to use seeded token ids")
    from ..models.hf_auto import refuse_custom_code

    refuse_custom_code(tokenizer_dir, "its tokenizer")
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(f"--prompts: reading {tokenizer_dir}'s tokenizer needs transformers ({exc}); "
                                     "pip install 'modelport[hf]'") from exc
    try:
        return transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True,
                                                          trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise FormatError(f"{tokenizer_dir}: cannot load the tokenizer ({exc})") from exc


def input_sets(ref: Runnable, *, batch: int = DEFAULT_BATCH, seq_lens=DEFAULT_SEQ_LENS, seed: int = 0,
               prompts=None, reserve: int = 0) -> list[InputSet]:
    """Everything both models will be fed. ``reserve`` keeps room for generated tokens."""
    if batch < 1:
        raise UnsupportedError(f"--batch {batch}: needs at least one row")
    if ref.kind in (CAUSAL_LM, ENCODER):
        if prompts is not None:
            return prompt_sets(ref, Path(prompts), tokenizer_dir_of(ref.path))
        return token_sets(ref, batch=batch, seq_lens=list(seq_lens), seed=seed, reserve=reserve)
    if prompts is not None:
        raise UnsupportedError(f"--prompts {prompts}: the reference is a tensor model, not a language model; "
                               "use --input-shape")
    return tensor_sets(ref, batch=batch, seq_lens=list(seq_lens), seed=seed)
