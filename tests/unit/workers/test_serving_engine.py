"""The serving engine on a tiny preset: token streaming, limits, stop strings, adapters."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.execution import (
    CapacityPlan,
    ExecutionPlan,
    InputPlan,
    JobDirs,
    ModelPlan,
    PlanInvalid,
)
from workers.knobs import KNOBS, KnobError, ServeKnobs, serve_knobs
from workers.serving import (
    GenerationEngine,
    GenerationRequest,
    ModelRunner,
    RequestInvalid,
    serve_plan,
)
from workers.tokenizer import ByteTokenizer, LocalHFTokenizer, load_tokenizer

PRESET = "axk1-tiny"
tok = ByteTokenizer()


# -- builders -------------------------------------------------------------------------------


def make_plan(root: Path, inputs: tuple[InputPlan, ...] = (), **knobs: Any) -> ExecutionPlan:
    """A serve plan as the control plane builds it: a preset, the replica's own dirs."""
    return ExecutionPlan(
        job_id="ep_1-r0",
        attempt=1,
        kind="serve",
        payload="model",
        model=ModelPlan(ref=PRESET, preset=PRESET),
        teacher=None,
        inputs=inputs,
        capacity=CapacityPlan(1, 1, 1, "bf16", None, False, False, 1, 1, 512, 80.0, 8),
        knobs=knobs,
        dirs=JobDirs.under(root),
    )


def make_adapter(directory: Path, seed: int, targets: list[str]) -> InputPlan:
    """A registered LoRA adapter of the tiny preset (non-zero weights, fixed seed)."""
    from peft import LoraConfig, get_peft_model

    from workers.presets import load_model, resolve_model
    from workers.staging import fingerprint

    base = load_model(resolve_model(PRESET), seed=0)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(directory), save_embedding_layers=False)
    fp = fingerprint(f"file://{directory}")
    return InputPlan(
        id=f"art_{directory.name}",
        name=directory.name,
        role="adapter",
        uri=f"file://{directory}",
        sha256=fp.sha256,
        size_bytes=fp.size_bytes,
    )


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> GenerationEngine:
    return GenerationEngine(make_plan(tmp_path_factory.mktemp("replica"), max_tokens_default=12))


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[InputPlan, InputPlan]:
    src = tmp_path_factory.mktemp("adapters")
    return (
        make_adapter(src / "kv", 1, ["kv_b_proj", "o_proj"]),
        make_adapter(src / "mlp", 2, ["q_b_proj", "o_proj"]),
    )


def req(**fields: Any) -> GenerationRequest:
    return GenerationRequest.from_dict(fields)


def reference(engine: ModelRunner, request: GenerationRequest, max_new: int) -> str:
    """An independent greedy answer through transformers' own generate."""
    ids = engine.prompt_ids(request)
    with torch.no_grad():
        out = engine.model.generate(
            input_ids=torch.tensor([ids]),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=tok.eos_id,
            pad_token_id=tok.pad_id,
        )
    new = out[0, len(ids) :].tolist()
    return tok.decode(new[: new.index(tok.eos_id)] if tok.eos_id in new else new)


PROMPTS = [
    {"prompt": "the cat sat"},
    {"prompt": "서울의 날씨는"},
    {"messages": [{"role": "user", "content": "안녕하세요"}]},
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and?"},
        ]
    },
]


# -- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", PROMPTS)
def test_stream_complete_and_generate_agree(engine: GenerationEngine, body: dict) -> None:
    request = req(**body, max_tokens=10)
    deltas = list(engine.stream(request))
    done = engine.complete(request)
    assert "".join(d.text for d in deltas) == done.text == reference(engine, request, 10)
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == done.finish_reason in ("stop", "length")
    assert [d.completion_tokens for d in deltas][:-1] == list(range(1, len(deltas)))
    assert done.prompt_tokens == len(engine.prompt_ids(request))
    assert engine.complete(request) == done  # greedy is deterministic


def test_two_replicas_of_one_plan_answer_alike(engine: GenerationEngine, tmp_path: Path) -> None:
    other = GenerationEngine(make_plan(tmp_path, max_tokens_default=12))
    for body in PROMPTS:
        assert other.complete(req(**body)) == engine.complete(req(**body))


def test_seeded_sampling_repeats_and_differs_from_greedy(engine: GenerationEngine) -> None:
    sampled = req(prompt="the cat", temperature=1.5, top_p=0.9, seed=7, max_tokens=12)
    first = engine.complete(sampled)
    assert engine.complete(sampled) == first
    assert first.text != engine.complete(req(prompt="the cat", max_tokens=12)).text
    assert engine.complete(replace(sampled, seed=8)).text != first.text


def test_chat_prompts_get_the_endpoints_system_prompt(tmp_path: Path) -> None:
    engine = GenerationEngine(make_plan(tmp_path, system_prompt="너는 비서다"))
    user = [{"role": "user", "content": "안녕"}]
    assert engine.prompt_ids(req(messages=user)) == tok.chat_prompt("안녕", False, "너는 비서다")
    own = [{"role": "system", "content": "mine"}, *user]
    assert engine.prompt_ids(req(messages=own)) == tok.chat_prompt("안녕", False, "mine")
    assert engine.prompt_ids(req(prompt="안녕")) == [tok.bos_id, *tok.encode("안녕")]


# -- limits ---------------------------------------------------------------------------------


def test_max_tokens_and_its_default(engine: GenerationEngine) -> None:
    long = req(prompt="the cat sat on", max_tokens=5)
    done = engine.complete(long)
    if done.finish_reason == "length":
        assert done.completion_tokens == 5
    assert engine.complete(req(prompt="the cat sat on")).completion_tokens <= 12  # the knob


def test_max_tokens_is_cut_to_the_context_and_a_full_prompt_is_refused(tmp_path: Path) -> None:
    engine = GenerationEngine(make_plan(tmp_path, max_context=16))
    fits = req(prompt="abcdefghijkl", max_tokens=100)  # 13 prompt tokens: room for 3
    done = engine.complete(fits)
    assert done.prompt_tokens == 13 and done.completion_tokens <= 3
    with pytest.raises(RequestInvalid) as exc:
        engine.stream(req(prompt="abcdefghijklmno"))  # 16 tokens: refused before streaming
    assert exc.value.code == "context_length_exceeded"
    assert "16" in exc.value.message


def test_the_presets_own_context_caps_the_knob(engine: GenerationEngine) -> None:
    assert engine.context_limit == 512  # axk1-tiny's max_position_embeddings < 2048


# -- scripted model: exact UTF-8 and stop-string behaviour ----------------------------------


class Scripted(torch.nn.Module):
    """A 'model' that writes ``script`` token by token through the KV-cache interface."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.script = script
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, cache: Any, use_cache: bool) -> Any:
        step = 0 if cache is None else cache
        assert (cache is None) == (input_ids.shape[1] > 1)  # prefill once, then one token
        logits = torch.zeros(1, input_ids.shape[1], tok.vocab_size)
        logits[0, -1, self.script[min(step, len(self.script) - 1)]] = 1.0
        return SimpleNamespace(logits=logits, cache=step + 1)


def scripted(text: bytes, eos: bool = True) -> ModelRunner:
    script = [b + tok.OFFSET for b in text] + ([tok.eos_id] if eos else [])
    return ModelRunner(Scripted(script), tok, ServeKnobs(), context_limit=512)


def test_a_character_is_never_sent_in_pieces() -> None:
    runner = scripted("가a😀".encode())  # 3-byte, 1-byte, 4-byte characters
    deltas = list(runner.stream(req(prompt="x", max_tokens=50)))
    assert [d.text for d in deltas] == ["", "", "가", "a", "", "", "", "😀", ""]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].completion_tokens == 8


@given(st.text(max_size=12))
@settings(max_examples=40, deadline=None)
def test_every_delta_extends_a_prefix_of_the_answer(text: str) -> None:
    deltas = list(scripted(text.encode()).stream(req(prompt="x", max_tokens=64)))
    sent = ""
    for d in deltas:
        sent += d.text
        assert text.startswith(sent)
    assert sent == text


def test_a_cut_off_character_ends_as_the_tokenizer_decodes_it() -> None:
    done = scripted("ab가".encode()[:-1], eos=False).complete(req(prompt="x", max_tokens=3))
    assert done.text == tok.decode(tok.encode("ab가")[:3]) and done.finish_reason == "length"


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("hello END world", ["END"], "hello "),
        ("hello EN! world", ["END"], "hello EN! world"),  # a false start is sent in the end
        ("aXbYc", ["Y", "X"], "a"),  # the earliest stop wins
        ("그만해 줘", ["해"], "그만"),
        ("no stop here", ["zz"], "no stop here"),
    ],
)
def test_stop_strings(text: str, stop: list[str], expected: str) -> None:
    runner = scripted(text.encode())
    deltas = list(runner.stream(req(prompt="x", stop=stop, max_tokens=64)))
    assert "".join(d.text for d in deltas) == expected
    assert deltas[-1].finish_reason == "stop"
    sent = ""
    for d in deltas[:-1]:  # nothing after the stop's first character was ever sent
        sent += d.text
        assert all(s not in sent for s in stop)


def test_a_stop_string_in_a_real_models_answer(engine: GenerationEngine) -> None:
    full = engine.complete(req(prompt="the cat sat", max_tokens=10)).text
    at = next(i for i in range(1, len(full) - 1) if "\ufffd" not in full[i : i + 2])
    stop = full[at : at + 2]
    cut = engine.complete(req(prompt="the cat sat", max_tokens=10, stop=stop))
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"


# -- adapters -------------------------------------------------------------------------------


def test_adapters_are_multiplexed_on_one_base(
    engine: GenerationEngine, adapters: tuple[InputPlan, InputPlan], tmp_path: Path
) -> None:
    a, b = adapters
    plan = make_plan(
        tmp_path, (a, b), adapters={"kv": a.id, "mlp": b.id}, max_adapters_per_replica=1
    )
    multi = GenerationEngine(plan)
    prompt = req(prompt="the cat sat", max_tokens=10)
    base = multi.complete(prompt).text
    assert base == engine.complete(prompt).text
    kv = multi.engine_for("kv").complete(prompt).text
    mlp = multi.engine_for("mlp").complete(prompt).text
    assert len({base, kv, mlp}) == 3
    assert multi.adapters_loaded == ["mlp"]  # LRU, one slot
    assert multi.engine_for("kv").complete(prompt).text == kv  # reloaded alike
    assert multi.engine_for(None) is multi and multi.engine_for("") is multi
    # Staged into the replica's own inputs, by the plan's ids.
    assert (tmp_path / "inputs" / "adapter" / a.id / "adapter_config.json").is_file()

    # The merged adapter answers like batch inference's base + adapter.
    from workers.presets import apply_adapter, load_model, resolve_model

    merged = apply_adapter(load_model(resolve_model(PRESET), seed=0), a.uri[7:], merge=True)
    assert reference(ModelRunner(merged.eval(), tok, ServeKnobs(), 512), prompt, 10) == kv


def test_an_adapter_the_plan_does_not_carry_is_refused(
    engine: GenerationEngine, adapters: tuple[InputPlan, InputPlan], tmp_path: Path
) -> None:
    for name in ("nope", "../kv", "/etc/passwd", ""):
        if name:
            with pytest.raises(RequestInvalid) as exc:
                engine.engine_for(name)
            assert exc.value.code == "unknown_adapter"
    a, _ = adapters
    with pytest.raises(PlanInvalid, match="not an adapter input"):
        GenerationEngine(make_plan(tmp_path, (), adapters={"kv": a.id}))
    with pytest.raises(RequestInvalid) as bad:
        req(prompt="x", adapter="../kv")
    assert bad.value.code == "invalid_request"


# -- requests, knobs, plans -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "exactly one"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one"),
        ({"prompt": 3}, "prompt"),
        ({"messages": []}, "non-empty"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "max_tokens": True}, "max_tokens"),
        ({"prompt": "a", "temperature": -1}, "temperature"),
        ({"prompt": "a", "temperature": float("nan")}, "temperature"),
        ({"prompt": "a", "top_p": 0}, "top_p"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({"prompt": "a", "stop": [""]}, "stop"),
        ({"prompt": "a", "stop": ["x" * 65]}, "stop"),
        ({"prompt": "a", "stop": 3}, "stop"),
        ({"prompt": "a", "adapter": "Bad Name"}, "adapter"),
        ({"prompt": "a", "model_path": "/etc"}, "unknown request field"),
    ],
)
def test_bad_requests_are_refused_with_a_code(body: dict, words: str) -> None:
    with pytest.raises(RequestInvalid) as exc:
        GenerationRequest.from_dict(body)
    assert exc.value.code == "invalid_request" and words in exc.value.message


def test_a_request_error_survives_pickling() -> None:
    import pickle

    again = pickle.loads(pickle.dumps(RequestInvalid("unknown_adapter", "no such adapter")))
    assert (again.code, again.message) == ("unknown_adapter", "no such adapter")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
request_like = st.dictionaries(
    st.sampled_from(
        ["messages", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "adapter", "x"]
    ),
    json_values
    | st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant", "bot"]),
                "content": json_values,
            }
        ),
        max_size=3,
    ),
)


@given(st.one_of(request_like, json_values))
@settings(max_examples=300, deadline=None)
def test_any_json_body_is_a_request_or_refused(body: Any) -> None:
    try:
        request = GenerationRequest.from_dict(body)
    except RequestInvalid as exc:
        assert exc.code == "invalid_request"
        return
    assert (request.messages is None) != (request.prompt is None)
    assert len(request.stop) <= 4


def test_serve_knobs_are_a_schema_and_no_batch_kind() -> None:
    assert "serve" not in KNOBS
    knobs = serve_knobs({"max_context": 4096, "adapters": {"ko-chat.v2": "art_1"}})
    assert knobs.max_tokens_default == 256 and knobs.max_ongoing_requests == 32
    for bad, key in [
        ({"max_context": 8}, "max_context"),
        ({"max_ongoing_requests": 0}, "max_ongoing_requests"),
        ({"adapters": {"Bad/Name": "art_1"}}, "adapters"),
        ({"adapters": {"ok\n": "art_1"}}, "adapters"),
        ({"model_dir": "/x"}, "model_dir"),
    ]:
        with pytest.raises(KnobError, match=key):
            serve_knobs(bad)
    with pytest.raises(KnobError):
        serve_knobs([])  # type: ignore[arg-type]


def test_serve_plans_round_trip_and_are_checked(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, max_tokens_default=8)
    assert serve_plan(plan.to_dict()) == plan
    for change, words in [
        ({"kind": "inference"}, "inference knobs|serve plans"),  # refused either way
        ({"model": None}, "one model"),
        ({"knobs": {"bogus": 1}}, "serve knobs"),
        ({"version": 99}, "version"),
        ({"dirs": {**plan.to_dict()["dirs"], "output": "/elsewhere/out"}}, "directly under"),
    ]:
        with pytest.raises(PlanInvalid, match=words):
            serve_plan({**plan.to_dict(), **change})


# -- tokenizers -----------------------------------------------------------------------------


def test_the_byte_generation_prompt_extends_chat_prompt() -> None:
    user = {"role": "user", "content": "안녕"}
    system = {"role": "system", "content": "sys"}
    for think in (False, True):
        assert tok.generation_prompt([user], think) == tok.chat_prompt("안녕", think)
        assert tok.generation_prompt([system, user], think) == tok.chat_prompt("안녕", think, "sys")
    turns = [system, user, {"role": "assistant", "content": "네"}, {"role": "user", "content": "?"}]
    ids, _ = tok.chat([*turns[:3]])
    assert tok.generation_prompt(turns)[: len(ids)] == ids
    assert tok.generation_prompt(turns)[-3:] == [tok.assistant_id, tok.think_id, tok.end_think_id]


def test_a_model_tokenizer_generation_prompt_uses_its_template(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    inner = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=inner, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    fast.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    fast.save_pretrained(str(tmp_path))
    hf = load_tokenizer("model-dir", tmp_path)
    assert isinstance(hf, LocalHFTokenizer)
    user = {"role": "user", "content": "안녕"}
    system = {"role": "system", "content": "sys"}
    assert hf.generation_prompt([user]) == hf.chat_prompt("안녕", False)
    assert hf.generation_prompt([system, user]) == hf.chat_prompt("안녕", False, "sys")
    turns = [user, {"role": "assistant", "content": "네"}, user]
    assert (
        hf.decode(hf.generation_prompt(turns))
        == "[user]안녕\n[assistant]네\n[user]안녕\n[assistant]"
    )
