"""Greedy generation for parity, through each side's key/value cache where it has one.

- torch modules with a ``step(input_ids, attention_mask, past)`` method: a transformers causal LM
  (its wrapper, see :mod:`modelport.models.hf_auto`) and modelport's own Llama, GPT-2 and GPT-NeoX;
- ONNX graphs with ``past_key_values.N.key/value`` inputs and ``present.N.key/value`` outputs: each
  step feeds the new token, the whole mask, its position and the previous step's ``present``;
- anything else (a graph without a cache, TorchScript, user modules) re-runs the growing sequence.

Each step returns the last position's logits, which parity keeps to tell a near-tie from a fault.

A candidate is checked against the reference's tokens by :func:`follow` instead: it is fed the reference's
generated tokens (through its cache in one piece after the prompt, where it has one) and its choice at each
step is read off. Its own greedy output equals the reference's exactly when every choice does (each step
then sees the same prefix), so two forwards stand for ``new_tokens`` sequential steps; where a choice
differs, the candidate generates on its own (see :func:`follow`).
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ModelportError
from ..models.runnable import Runnable

# (ids so far, mask so far, past, every) -> (the last position's logits (B, vocab), or with every those of each
# position that ran (B, T, vocab); past)
Stepper = Callable[[Any, Any, Any, bool], tuple[Any, Any]]


def _torch_stepper(r: Runnable) -> Stepper | None:
    step = getattr(r.module, "step", None) if r.backend == "torch" else None
    if step is None:
        return None

    def run(ids, mask, past, every=False):
        logits, past = step(ids.to(r.device), mask.to(r.device), past, every=every)
        return logits.detach().cpu().float(), past

    return run


def _ort_stepper(r: Runnable, output: str) -> Stepper | None:
    """A step of an onnxruntime graph with a cache; None when the graph has none (or returns no ``present``)."""
    cache = getattr(r, "cache", ())
    session = r.module
    if not cache or not hasattr(session, "get_outputs"):
        return None
    past_names = [c[0] for c in cache]
    present = [n.replace("past_key_values.", "present.", 1) for n in past_names]
    if not set(present) <= {o.name for o in session.get_outputs()}:
        return None
    import numpy as np
    import torch

    def run(ids, mask, past, every=False):
        if past is None:                       # the prompt: an empty cache, positions from the mask
            feeds = r.arrays({"input_ids": ids, "attention_mask": mask})
        else:
            done = past[0].shape[2]
            m = mask.cpu().numpy()
            feeds = {"input_ids": ids[:, done:].cpu().numpy(), "attention_mask": m, **dict(zip(past_names, past))}
            if getattr(r, "positions", False):
                feeds["position_ids"] = np.maximum(m.astype(np.int64).cumsum(-1) - 1, 0)[:, done:]
        from ..errors import FormatError
        from ..models.runnable import is_ort_error, ort_message

        try:
            values = session.run([output, *present], feeds)
        except Exception as exc:  # noqa: BLE001 - see is_ort_error
            if not is_ort_error(exc):
                raise
            raise FormatError(f"{r.path or r.origin}: onnxruntime failed running a cached generation step "
                              f"({ort_message(exc)})") from exc
        logits = values[0] if every else values[0][:, -1]
        return torch.from_numpy(logits).float(), values[1:]

    return run


def stepper(r: Runnable, output: str = "logits") -> Stepper | None:
    """How ``r`` takes one cached step, or None when it has no cache."""
    if r.backend == "onnxruntime":
        return _ort_stepper(r, output)
    return _torch_stepper(r)


def greedy(runnable: Runnable, feeds: dict, new_tokens: int, output: str = "logits", cache: bool = True):
    """``new_tokens`` greedy tokens per row and the last-position logits of every step: through the model's
    KV cache where it has one (``cache=False`` re-runs the growing sequence even then).

    A torch model on the CPU generates its rows apart, the cores shared among them (:func:`_rows_apart`): a
    cached step of one row is a matrix-vector product per weight, which reads the weights about twice as fast as
    the matrix product of a batch (SmolLM2-135M on 2 cores: 16 tokens for 2 rows in 1.8-2.1 s, 2.8-2.9 s as one
    batch). Each row keeps its own padding and mask, so its tokens are those it gets in the batch (up to float
    rounding, which the comparisons allow for)."""
    parts = _parts(runnable, feeds)
    if parts > 1:
        return _rows_apart(runnable, feeds, new_tokens, output, cache, parts)
    return _greedy(runnable, feeds, new_tokens, output, cache)


def _parts(runnable: Runnable, feeds: dict) -> int:
    """How many threads :func:`greedy` splits the rows among: one per core for a torch model on the CPU."""
    ids = feeds["input_ids"]
    if runnable.backend != "torch" or str(getattr(runnable, "device", "cpu")) != "cpu" or ids.dim() != 2:
        return 1
    if any(getattr(v, "shape", ())[:1] != ids.shape[:1] for v in feeds.values()):
        return 1
    import torch

    return min(ids.shape[0], torch.get_num_threads())


def _rows_apart(runnable: Runnable, feeds: dict, new_tokens: int, output: str, cache: bool, parts: int):
    """:func:`_greedy` of ``parts`` slices of the rows, each in a thread, torch's threads shared among them meanwhile
    (set and put back from this thread: the setting is the process's). The threads are daemons: Ctrl-C ends the
    process without waiting for them to finish their tokens."""
    import threading

    import torch

    slices = [{k: v for k, v in zip(feeds, vs)} for vs in zip(*(torch.tensor_split(v, parts) for v in feeds.values()))]
    results: list = [None] * parts
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = _greedy(runnable, slices[i], new_tokens, output, cache)
        except BaseException as exc:   # noqa: BLE001 - raised below, in the caller's thread
            errors.append(exc)

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // parts))
    try:
        workers = [threading.Thread(target=work, args=(i,), name=f"modelport-greedy-{i}", daemon=True)
                   for i in range(parts)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        torch.set_num_threads(threads)
    if errors:
        raise errors[0]
    tokens = torch.cat([t for t, _ in results], dim=0)
    steps = [torch.cat(per_step, dim=0) for per_step in zip(*(st for _, st in results))]
    return tokens, steps


def _greedy(runnable: Runnable, feeds: dict, new_tokens: int, output: str, cache: bool):
    import torch

    ids, mask = feeds["input_ids"], feeds.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    step = stepper(runnable, output) if cache else None
    past = None
    tokens, steps = [], []
    for _ in range(new_tokens):
        if step is not None:
            with torch.no_grad():
                last, past = step(ids, mask, past)
        else:
            step_feeds = {spec.name: {"input_ids": ids, "attention_mask": mask}.get(spec.name, torch.zeros_like(ids))
                          for spec in runnable.inputs}
            last = runnable.run(step_feeds)[output][:, -1].detach().cpu().float()
        steps.append(last)
        nxt = torch.nan_to_num(last, nan=float("-inf")).argmax(-1, keepdim=True)
        tokens.append(nxt)
        ids = torch.cat([ids, nxt.to(ids.dtype)], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt, dtype=mask.dtype)], dim=1)
    if not tokens:
        return torch.empty(ids.shape[0], 0, dtype=torch.int64), []
    return torch.cat(tokens, dim=1), steps


def follow(runnable: Runnable, feeds: dict, tokens, output: str = "logits", cache: bool = True):
    """The candidate's greedy choice at each step, fed the reference's ``tokens`` (B, n) after the prompt: the
    prompt and then every generated token but the last in one piece, through the model's cache where it has one
    (so the cache is exercised), else in one forward over the whole sequence. Returns ``(choices, steps)`` like
    :func:`greedy`. Where every choice equals ``tokens`` the model's own greedy output is ``tokens`` (step by
    step each choice sees the same prefix); where one differs, the model's own output is not known past it, so
    the model generates on its own (:func:`greedy`) and that is returned."""
    import torch

    ids, mask = feeds["input_ids"], feeds.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    n = tokens.shape[1]
    if n == 0:
        return greedy(runnable, feeds, 0, output, cache)
    fed = torch.cat([ids, tokens[:, :-1].to(ids.dtype)], dim=1)
    fed_mask = torch.cat([mask, torch.ones_like(tokens[:, :-1], dtype=mask.dtype)], dim=1)
    step = stepper(runnable, output) if cache else None
    try:
        with torch.no_grad():
            if step is not None:
                first, past = step(ids, mask, None)
                logits = first.unsqueeze(1)
                if n > 1:
                    logits = torch.cat([logits, step(fed, fed_mask, past, True)[0]], dim=1)
            else:
                step_feeds = {spec.name: {"input_ids": fed, "attention_mask": fed_mask}.get(spec.name,
                                                                                            torch.zeros_like(fed))
                              for spec in runnable.inputs}
                logits = runnable.run(step_feeds)[output][:, ids.shape[1] - 1:].detach().cpu().float()
    except (ModelportError, RuntimeError):    # e.g. a graph whose cache takes one token at a time
        return greedy(runnable, feeds, n, output, cache)
    choices = torch.nan_to_num(logits, nan=float("-inf")).argmax(-1)
    if not torch.equal(choices, tokens.to(choices.dtype)):
        return greedy(runnable, feeds, n, output, cache)
    return choices, list(logits.unbind(1))
