"""Prompt rendering, the Vicuna chat template, cache keys and the per-class request plan."""

import jinja2.sandbox
import pytest

from freecp.describe.plan import ClassPlan, build_plans, candidate_requests, request_key
from freecp.describe.prompts import PromptError, question_ids, render_prompts, vicuna_template_path
from freecp.vocab import ClassEntry, load_vocabulary


def test_every_question_is_rendered_in_order_with_synonyms_as_synonyms():
    prompts = render_prompts(ClassEntry(("aeroplane", "airplane", "plane")))
    assert [p.prompt_id for p in prompts] == question_ids() == ["look", "identify", "image", "features"]
    for prompt in prompts:
        assert 'an "aeroplane" (also called "airplane", "plane")' in prompt.user
        assert "aeroplane, airplane" not in prompt.user
        assert prompt.messages()[0]["role"] == "system" and prompt.messages()[1]["content"] == prompt.user
    assert "JSON list" in prompts[-1].user
    assert 'a "cat" look like' in render_prompts(ClassEntry(("cat",)))[0].user


def test_prompt_hash_follows_the_rendered_text():
    first = render_prompts(ClassEntry(("cat",)))
    again = render_prompts(ClassEntry(("cat",)))
    other = render_prompts(ClassEntry(("cat", "kitten")))
    assert [p.content_hash for p in first] == [p.content_hash for p in again]
    assert len({p.content_hash for p in first}) == len(first)
    assert all(a.content_hash != b.content_hash for a, b in zip(first, other, strict=True))


def test_unknown_prompt_set_is_a_clear_error():
    with pytest.raises(PromptError, match="not found"):
        render_prompts(ClassEntry(("cat",)), prompt_set="no-such-set")


def _vicuna(messages, **extra):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(vicuna_template_path().read_text()).render(messages=messages, **extra)


def test_vicuna_template_follows_the_v1_1_conversation_layout():
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "What is red?"}]
    assert _vicuna(turns, add_generation_prompt=True, bos_token="<s>", eos_token="</s>") == (
        "<s>Be brief. USER: Hi ASSISTANT: Hello</s>USER: What is red? ASSISTANT:")
    plain = _vicuna([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert plain.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert plain.endswith("questions. USER: Hi")


def test_cache_key_changes_with_every_input():
    base = ("cat",), "p" * 64, "model-a", '{"seed":0}'
    keys = {request_key(*base), request_key(("cat", "kitten"), *base[1:]), request_key(base[0], "q" * 64, *base[2:]),
            request_key(*base[:2], "model-b", base[3]), request_key(*base[:3], '{"seed":1}')}
    assert len(keys) == 5
    assert request_key(*base) == request_key(*base)


def test_candidates_cycle_questions_then_seeds():
    planned = candidate_requests(ClassEntry(("cat",)), llm_model="m", temperature=0.5, max_tokens=64, max_requests=6)
    assert [(p.prompt.prompt_id, p.request.seed) for p in planned] == [
        ("look", 0), ("identify", 0), ("image", 0), ("features", 0), ("look", 1), ("identify", 1)]
    assert len({p.key for p in planned}) == 6


def test_background_is_never_planned():
    vocab = load_vocabulary(["background: sky, wall", "cat", "dog"])
    plans = build_plans(vocab, llm_model="m", per_class=3, temperature=0.7, max_tokens=32)
    assert [p.entry.name for p in plans] == ["cat", "dog"]


def _plan(per_class: int, max_requests: int = 8) -> ClassPlan:
    candidates = candidate_requests(ClassEntry(("cat",)), llm_model="m", temperature=0.7, max_tokens=32,
                                    max_requests=max_requests)
    return ClassPlan(entry=ClassEntry(("cat",)), candidates=candidates, per_class=per_class, questions=4)


def test_plan_asks_in_waves_until_it_has_enough():
    plan = _plan(per_class=12)
    first = plan.next_wave()
    assert len(first) == 3  # 12 wanted at about 5 per answer
    for number, _ in enumerate(first):
        plan.record([f"feature {number} a", f"feature {number} b"])  # yield of 2 per answer
    second = plan.next_wave()
    assert len(second) == 3 and second[0].key == plan.candidates[3].key  # 6 missing at 2 per answer
    for number, _ in enumerate(second):
        plan.record([f"more {number} a", f"more {number} b"])
    assert plan.done and plan.next_wave() == []


def test_plan_stops_at_its_request_limit_and_says_why():
    plan = _plan(per_class=20, max_requests=3)
    while wave := plan.next_wave():
        for _ in wave:
            plan.record(["Same thing again"])
    assert not plan.done and plan.answered == 3
    assert "1 usable descriptions from 3 answers" in plan.shortfall()


def test_failed_plan_asks_nothing_more():
    plan = _plan(per_class=5)
    plan.next_wave()
    plan.fail("HTTP 500")
    assert plan.next_wave() == [] and plan.shortfall() == "request failed: HTTP 500"
