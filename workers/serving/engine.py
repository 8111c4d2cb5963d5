"""A replica's plan checked, its model loaded, and token-by-token decoding with the KV cache."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workers.execution import (
    ROLES,
    SCHEMES,
    ExecutionPlan,
    InputPlan,
    PlanInvalid,
    staged_path,
)
from workers.knobs import KnobError, ServeKnobs, serve_knobs
from workers.serving.request import (
    Completion,
    Delta,
    GenerationRequest,
    RequestInvalid,
    invalid_request,
)
from workers.tokenizer import ChatError, Tokenizer, with_system

# -- plans ----------------------------------------------------------------------------------


def serve_plan(raw: Any) -> ExecutionPlan:
    """A stored serve plan rebuilt and checked; raises :class:`PlanInvalid`.

    ``ExecutionPlan.from_dict`` validates it (a ``serve`` plan through
    :func:`check_serve_plan`: ``serve`` is not in ``KNOBS``, so that no member can submit it
    as a batch job); a plan of another kind is refused here.
    """
    plan = ExecutionPlan.from_dict(raw)  # a serve plan is checked by check_serve_plan there
    check_serve_plan(plan)  # and a batch plan refused here
    return plan


def check_serve_plan(plan: ExecutionPlan) -> ServeKnobs:
    """The plan's knobs, or :class:`PlanInvalid` for a plan a replica must not run."""
    if plan.kind != "serve" or plan.payload != "model":
        raise PlanInvalid(f"a replica runs serve plans, not {plan.kind}/{plan.payload}")
    if plan.model is None or plan.teacher is not None:
        raise PlanInvalid("a serve plan names one model and no teacher")
    try:
        knobs = serve_knobs(plan.knobs)
    except KnobError as exc:
        raise PlanInvalid(f"serve knobs: {exc}") from None
    for d in (plan.dirs.inputs, plan.dirs.checkpoints, plan.dirs.output, plan.dirs.scratch):
        if not Path(d).is_absolute() or Path(d).parent != Path(plan.dirs.root):
            raise PlanInvalid(f"directory {d} is not directly under {plan.dirs.root}")
    staged = [*plan.inputs, *(x for x in (plan.model.weights, plan.model.adapter) if x)]
    for item in staged:
        if item.role not in ROLES or item.scheme not in SCHEMES:
            raise PlanInvalid(f"input {item.id}: role {item.role!r}, uri {item.uri!r}")
    adapters = {i.id for i in plan.inputs if i.role == "adapter"}
    for name, input_id in knobs.adapters.items():
        if input_id not in adapters:
            raise PlanInvalid(f"adapter {name}: {input_id} is not an adapter input of the plan")
    return knobs


# -- decoding -------------------------------------------------------------------------------


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` must wait for the next token: an unfinished
    UTF-8 character (decoded as U+FFFD) or the start of a stop string."""
    n = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), n, -1):
            if text.endswith(stop[:k]):
                n = k
                break
    return n


def _first_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


class ModelRunner:
    """One loaded model (a base, or a base with an adapter merged) and how to decode with it.

    Not thread-safe: one decoding step at a time per runner (the replica's lock sees to it).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Tokenizer,
        knobs: ServeKnobs,
        context_limit: int,
        adapter: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.knobs = knobs
        self.context_limit = context_limit
        self.adapter = adapter

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """A chat through the tokenizer's generation prompt (the knobs' system prompt when
        the messages have none); a completion as plain text after BOS."""
        if request.messages is not None:
            messages = with_system(request.messages, self.knobs.system_prompt)
            try:
                return self.tokenizer.generation_prompt(messages)
            except ChatError as exc:
                raise invalid_request(str(exc)) from None
        return [self.tokenizer.bos_id, *self.tokenizer.encode(request.prompt or "")]

    def budget(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """Tokens this request may generate: its ``max_tokens`` (or the default), cut to fit."""
        room = self.context_limit - prompt_tokens
        if room < 1:
            raise RequestInvalid(
                "context_length_exceeded",
                f"the prompt has {prompt_tokens} tokens; this endpoint's context is "
                f"{self.context_limit} tokens, prompt and completion together",
            )
        return min(max_tokens or self.knobs.max_tokens_default, room)

    def stream(self, request: GenerationRequest) -> Iterator[Delta]:
        """Deltas of the answer, one per generated token; the last says why it finished.

        Validates before returning (a request that cannot run raises here, not on the first
        ``next``); each ``next`` runs one forward step of the model.
        """
        prompt = self.prompt_ids(request)
        budget = self.budget(len(prompt), request.max_tokens)
        return self._decode(prompt, budget, request)

    def complete(self, request: GenerationRequest) -> Completion:
        """The whole answer: the concatenation of :meth:`stream`."""
        parts: list[str] = []
        last: Delta | None = None
        for last in self.stream(request):
            parts.append(last.text)
        if last is None or last.finish_reason is None:
            raise RuntimeError("a stream ended without a finish reason")
        return Completion(
            "".join(parts), last.prompt_tokens, last.completion_tokens, last.finish_reason
        )

    def _decode(
        self, prompt: list[int], budget: int, request: GenerationRequest
    ) -> Iterator[Delta]:
        import torch

        tok, stops = self.tokenizer, request.stop
        device = next(self.model.parameters()).device
        sampler: torch.Generator | None = None
        if request.temperature > 0:
            seed = request.seed if request.seed is not None else secrets.randbits(63)
            sampler = torch.Generator().manual_seed(seed)
        step_ids = torch.tensor([prompt], dtype=torch.long, device=device)
        past: Any = None
        generated: list[int] = []
        emitted = 0  # characters of the decoded text already sent
        longest_stop = max((len(s) for s in stops), default=0)
        for n in range(1, budget + 1):
            with torch.no_grad():
                out = self.model(input_ids=step_ids, cache=past, use_cache=True)
            past = out.cache  # transformers 5's name for the KV cache (was past_key_values)
            token = _pick(out.logits[0, -1].float(), request, sampler)
            if token == tok.eos_id:
                text = tok.decode(generated)
                yield Delta(text[emitted:], len(prompt), len(generated), "stop")
                return
            generated.append(token)
            # Decode everything so far and send the difference: a character split over
            # several tokens is never sent in pieces.
            text = tok.decode(generated)
            cut = _first_stop(text, stops, max(0, emitted - longest_stop)) if stops else None
            if cut is not None:
                yield Delta(text[emitted:cut], len(prompt), n, "stop")
                return
            if n == budget:
                yield Delta(text[emitted:], len(prompt), n, "length")
                return
            safe = max(emitted, len(text) - _held_back(text, stops))
            yield Delta(text[emitted:safe], len(prompt), n)
            emitted = safe
            step_ids = torch.tensor([[token]], dtype=torch.long, device=device)


def _pick(logits: Any, request: GenerationRequest, sampler: Any) -> int:
    """Greedy at temperature 0; otherwise seeded sampling from the top-p nucleus."""
    import torch

    if sampler is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / request.temperature, dim=-1).cpu()
    if request.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(ordered, dim=-1) - ordered >= request.top_p
        ordered[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=sampler))


# -- engine ---------------------------------------------------------------------------------


class GenerationEngine(ModelRunner):
    """A replica's model, loaded from its plan, and the runners of its multiplexed adapters.

    Staging, tokenizer and model loading follow batch inference: the plan's inputs are staged
    into the replica's own input directory, a preset without weights is initialised from
    ``knobs.seed`` (two replicas of one plan hold the same weights), ``plan.model.adapter``
    is merged into the base.
    """

    def __init__(self, plan: ExecutionPlan, device: str = "cpu") -> None:
        import torch

        from workers.presets import apply_adapter, load_model, resolve_model
        from workers.staging import plan_items, stage_plan
        from workers.tokenizer import load_tokenizer

        knobs = check_serve_plan(plan)
        if plan_items(plan):
            stage_plan(plan)
        model = plan.model
        if model is None:  # check_serve_plan refuses it; this keeps the type checker told
            raise PlanInvalid("a serve plan names its model")
        weights = str(staged_path(plan, model.weights)) if model.weights else None
        name = model.preset or weights
        if name is None:
            raise PlanInvalid("the plan's model has neither a preset nor weights")
        self.plan = plan
        self.source = resolve_model(name, weights if model.preset else None)
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self._apply_adapter = apply_adapter
        self._load_model = load_model
        self._build = threading.Lock()  # load_model seeds torch's global generator
        self.knobs = knobs
        tokenizer = load_tokenizer(self.source.tokenizer, self.source.weights_dir)
        base_adapter = str(staged_path(plan, model.adapter)) if model.adapter else None
        limit = min(knobs.max_context, self.source.context_limit)
        super().__init__(self._model(base_adapter), tokenizer, knobs, limit)
        self._runners: OrderedDict[str, ModelRunner] = OrderedDict()

    def _model(self, adapter_dir: str | None) -> Any:
        with self._build:
            model = self._load_model(self.source, dtype=self.dtype, seed=self.knobs.seed)
            model = model.to(self.device)
            if adapter_dir is not None:
                model = self._apply_adapter(model, adapter_dir, merge=True)
            return model.eval()

    def check_adapter(self, adapter: str) -> InputPlan:
        """The plan's input for ``adapter``, or ``unknown_adapter``."""
        input_id = self.knobs.adapters.get(adapter) if isinstance(adapter, str) else None
        for item in self.plan.inputs:
            if item.role == "adapter" and item.id == input_id:
                return item
        raise RequestInvalid("unknown_adapter", f"this endpoint serves no adapter {adapter!r}")

    def load_adapter(self, adapter: str) -> ModelRunner:
        """A new runner for the base with ``adapter`` merged (not cached; see
        :meth:`engine_for`)."""
        item = self.check_adapter(adapter)
        model = self._model(str(staged_path(self.plan, item)))
        return ModelRunner(model, self.tokenizer, self.knobs, self.context_limit, adapter)

    def engine_for(self, adapter: str | None) -> ModelRunner:
        """The base (``None`` or ``""``) or the runner of ``adapter``; at most
        ``max_adapters_per_replica`` adapter runners are kept, least recently used out."""
        if not adapter:
            return self
        if adapter in self._runners:
            self._runners.move_to_end(adapter)
            return self._runners[adapter]
        runner = self.load_adapter(adapter)
        self._runners[adapter] = runner
        while len(self._runners) > self.knobs.max_adapters_per_replica:
            self._runners.popitem(last=False)
        return runner

    @property
    def adapters_loaded(self) -> list[str]:
        return list(self._runners)
