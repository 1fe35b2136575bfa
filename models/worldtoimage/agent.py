"""The World-To-Image loop over callables (the node supplies generation, sources, scorer and LLM):

    iteration 0: generate from the user's prompt, no references; score it.
    iteration i >= 1: plan (the LLM diagnoses the last image's failure, rewrites the prompt and proposes search
        queries, or, without an LLM, the prompt stays and the queries are the keywords the scorer missed, else all
        keywords, rotated each iteration); route on the diagnosis, as the paper does (a rendering failure goes to
        the prompt optimiser alone, an understanding failure to the image retriever too): ``rendering`` generates
        from the rewritten prompt without references, ``understanding`` (and a plan without a diagnosis, and the
        keyword mode) retrieves (each query asks every source for up to ``candidates`` images; the LLM picks one of
        them, or the first that loads is taken; a refused download or an unreachable source is recorded and the
        next candidate or source is tried) and generates with the references; score.
    keep the best combined score; stop early once it reaches ``threshold`` (the authors run all iterations).

Everything that decides the result is in the history (prompts, queries, references with source and licence,
refusals, scores, seeds, what was skipped); nothing in it depends on time or the machine, so the same seed, library
and scripted LLM give the same history text bit for bit. The history never holds an API key: the LLM appears as
its public config only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..llm import LLMClient, LLMError
from . import judge as J
from .keywords import keywords as extract_keywords
from .scoring import Score
from .sources import SourceError


@dataclass(frozen=True)
class AgentSettings:
    iterations: int = 3
    threshold: float = 1.0
    seed: int = 0
    candidates: int = 5  # per query per source (the authors: 5, the LLM picks 1)
    references: int = 1  # per iteration
    max_queries: int = 2


@dataclass
class AgentResult:
    images: list  # one per iteration
    best: int
    final_prompt: str
    history: dict


def _score_value(score: Score | None) -> float | None:
    return None if score is None else score.combined


ACTIONS = {"rendering": "prompt_only", "understanding": "prompt_and_retrieval"}


def route(diagnosis: str | None) -> str:
    """What an iteration does for a diagnosis: ``prompt_only`` (rendering) or ``prompt_and_retrieval``
    (understanding; also no diagnosis, i.e. keyword mode or an LLM that named neither)."""
    return ACTIONS.get(diagnosis or "", "prompt_and_retrieval")


def run_agent(prompt: str, generate: Callable, score_fn: Callable | None, sources: list, settings: AgentSettings,
              llm: LLMClient | None = None, on_iteration: Callable | None = None,
              check_interrupted: Callable | None = None) -> AgentResult:
    """``generate(prompt, references: list[PIL], seed) -> (image, PIL image)``;
    ``score_fn(PIL image, prompt, keywords) -> Score`` (None: nothing is scored);
    ``sources``: objects with ``name``, ``describe()``, ``search()``, ``load()``;
    ``on_iteration(index, total, PIL image)`` after each iteration (progress, preview);
    ``check_interrupted()`` raises to stop."""
    keys = extract_keywords(prompt)
    skipped = []
    if llm is None:
        skipped.append("no LLM: the prompt is not rewritten, queries are the prompt's keywords, the first loadable "
                       "candidate is used")
    if score_fn is None:
        skipped.append("no scorer: nothing is scored, no early stop, the first iteration is kept as best")
    if not sources:
        skipped.append("no image source: no references are retrieved")
    history = {"method": "World-To-Image (arXiv 2510.04201), EditLab loop", "prompt": prompt, "keywords": keys,
               "settings": settings.__dict__.copy(), "llm": llm.config.public() if llm else None,
               "sources": [s.describe() for s in sources], "skipped": skipped, "iterations": []}
    images, best, best_value = [], 0, None
    current, last_score, used_urls = prompt, None, set()
    stopped = "iterations"
    for i in range(settings.iterations):
        if check_interrupted:
            check_interrupted()
        step = {"index": i, "seed": settings.seed, "diagnosis": None, "action": "text_to_image" if i == 0 else None,
                "queries": [], "references": [],
                "refused": [], "notes": []}
        refs = []
        if i > 0:
            queries = None
            if llm is not None:
                try:
                    planned = J.plan(llm, prompt, current, _score_value(last_score),
                                     last_score.missing_keywords if last_score else [], settings.max_queries,
                                     images[-1][1] if llm.config.vision else None)
                    current = planned["prompt"]
                    queries = planned["queries"]
                    step["diagnosis"], step["plan_reason"] = planned["diagnosis"], planned["reason"]
                except LLMError as exc:
                    step["notes"].append(f"LLM planning failed, keyword fallback: {exc}")
            if queries is None:
                pool = (last_score.missing_keywords if last_score and last_score.missing_keywords else keys) or \
                    [prompt]
                k = (i - 1) % len(pool)
                rotated = pool[k:] + pool[:k]
                queries = [" ".join(rotated[:2])] if sources else []
            step["action"] = route(step["diagnosis"])
            if step["action"] == "prompt_only":
                step["queries"] = []
                if queries:
                    step["notes"].append(f"rendering failure: prompt rewrite only, queries not searched: {queries}")
            else:
                step["queries"] = queries
                refs = _retrieve(queries, current, sources, settings, llm, step, used_urls, check_interrupted)
        step["prompt"] = current
        if check_interrupted:
            check_interrupted()
        image, pil = generate(current, [r for r in refs], settings.seed)
        score = None
        if score_fn is not None:
            try:
                score = score_fn(pil, prompt, keys)
            except LLMError as exc:
                step["notes"].append(f"scoring failed: {exc}")
        step["scores"] = score.record() if score else None
        value = _score_value(score)
        if value is not None and (best_value is None or value > best_value):
            best, best_value = i, value
        images.append((image, pil))
        last_score = score if score is not None else last_score
        history["iterations"].append(step)
        if on_iteration:
            on_iteration(i, settings.iterations, pil)
        if value is not None and value >= settings.threshold:
            stopped = "threshold"
            break
    history["best"] = best
    history["best_score"] = None if best_value is None else round(best_value, 6)
    history["stopped"] = stopped
    final_prompt = history["iterations"][best]["prompt"]
    history["final_prompt"] = final_prompt
    return AgentResult([im for im, _ in images], best, final_prompt, history)


def _retrieve(queries, prompt, sources, settings, llm, step, used_urls, check_interrupted) -> list:
    refs = []
    for query in queries:
        if len(refs) >= settings.references:
            break
        for source in sources:
            if len(refs) >= settings.references:
                break
            if check_interrupted:
                check_interrupted()
            try:
                found = [c for c in source.search(query, settings.candidates) if c.url not in used_urls]
            except SourceError as exc:
                step["refused"].append({"source": source.name, "query": query, "reason": str(exc)})
                continue
            if not found:
                step["notes"].append(f"{source.name}: nothing found for {query!r}")
                continue
            order = list(range(len(found)))
            if llm is not None and len(found) > 1:
                try:
                    choice, why = J.pick(llm, query, prompt, found)
                    order = [choice] + [j for j in order if j != choice]
                    step["notes"].append(f"LLM picked candidate {choice} for {query!r}: {why}")
                except LLMError as exc:
                    step["notes"].append(f"LLM pick failed, first loadable candidate used: {exc}")
            for j in order:
                cand = found[j]
                try:
                    image = source.load(cand)
                except SourceError as exc:
                    step["refused"].append({"source": source.name, "url": cand.url, "reason": str(exc)})
                    continue
                used_urls.add(cand.url)
                refs.append(image)
                step["references"].append({**cand.record(), "query": query, "size": list(image.size)})
                break
    return refs
