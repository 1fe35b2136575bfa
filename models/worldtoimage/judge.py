"""The LLM's three jobs in the loop, each one JSON answer checked before use (a malformed one is retried by the
client, then ``LLMError``):

- ``judge``: a VLM looks at the generated image and the prompt and answers semantic alignment (0-10), which of the
  prompt's keywords it sees, optionally an aesthetic rating (0-10), and a one-line reason;
- ``plan``: the prompt-optimisation step: given the user's prompt, the last prompt, its score and the keywords the
  judge missed, it says whether the failure is one of rendering or of understanding (which decides the next step:
  the agent's ``route``), rewrites the prompt (obscure terms replaced by what they look like) and gives image-search
  queries for the concepts to show;
- ``pick``: the retrieval step: given up to five candidates (titles and sources), the index of the one to use.
"""
from __future__ import annotations

from ..llm import LLMClient, image_part
from .scoring import Score

MAX_PROMPT_CHARS = 2000

JUDGE_SYSTEM = (
    "You grade generated images against the text that asked for them. Look only at what is visible. "
    "Reply with one JSON object and nothing else.")
JUDGE_USER = (
    "Text prompt: {prompt}\n"
    "Keywords to look for: {keywords}\n\n"
    "Rate how well the image shows what the prompt describes (objects, attributes, relations, style) from 0 (not at "
    "all) to 10 (exactly). List the keywords whose concept is clearly visible.{aesthetic_ask}\n"
    'Answer as {{"alignment": <0-10>, "visible_keywords": [<keywords>],{aesthetic_key} "reason": "<one sentence>"}}.')
AESTHETIC_ASK = " Also rate the image's aesthetic quality (composition, lighting, colour) from 0 to 10."

PLAN_SYSTEM = (
    "You improve text-to-image prompts. A generator may fail because it renders badly (rendering) or because it does "
    "not know a term (understanding). Unknown names, new products, rare species and recent events are usually "
    "understanding failures: describe what they look like in plain visual words and ask for reference photos of them. "
    "Reply with one JSON object and nothing else.")
PLAN_USER = (
    "The user's prompt: {original}\n"
    "Prompt of the last attempt: {last}\n"
    "Its score (higher is better): {score}\n"
    "Keywords the judge did not see: {missing}\n\n"
    "Say which kind of failure this is, write an improved prompt that keeps the user's intent, and give up to "
    "{max_queries} short image-search queries for the concepts that need a visual reference. Your diagnosis decides "
    "the next step: rendering = only your new prompt is used, nothing is searched; understanding = your queries are "
    "searched and the images found are given to the generator as references.\n"
    'Answer as {{"diagnosis": "rendering" or "understanding", "prompt": "<new prompt>", '
    '"queries": ["<query>", ...], "reason": "<one sentence>"}}.')

PICK_SYSTEM = "You choose reference images for an image generator. Reply with one JSON object and nothing else."
PICK_USER = (
    "Concept to show: {query}\nPrompt: {prompt}\nCandidates:\n{listing}\n\n"
    'Pick the candidate most likely to show the concept clearly. Answer as {{"choice": <number>, "reason": "..."}}.')


def _num(obj: dict, key: str, lo: float, hi: float) -> float:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{key}' is not a number")
    value = float(value)
    if not lo <= value <= hi:
        raise ValueError(f"'{key}' = {value} is outside {lo:g}..{hi:g}")
    return value


def judge(client: LLMClient, image, prompt: str, keys: list[str], aesthetic: bool) -> Score:
    text = JUDGE_USER.format(prompt=prompt[:MAX_PROMPT_CHARS], keywords=", ".join(keys) or "(none)",
                             aesthetic_ask=AESTHETIC_ASK if aesthetic else "",
                             aesthetic_key=' "aesthetic": <0-10>,' if aesthetic else "")

    def check(obj):
        alignment = _num(obj, "alignment", 0, 10)
        seen = obj.get("visible_keywords", [])
        if not isinstance(seen, list):
            raise ValueError("'visible_keywords' is not a list")
        seen = {str(s).strip().lower() for s in seen}
        aes = _num(obj, "aesthetic", 0, 10) if aesthetic else None
        return alignment, seen, aes, str(obj.get("reason", ""))[:500]

    alignment, seen, aes, reason = client.chat_json(
        [{"role": "system", "content": JUDGE_SYSTEM},
         {"role": "user", "content": [{"type": "text", "text": text}, image_part(image)]}], check)
    missing = [k for k in keys if k not in seen]
    coverage = (len(keys) - len(missing)) / len(keys) if keys else 1.0
    return Score("vlm", alignment=alignment / 10.0, coverage=coverage, aesthetic=aes, missing_keywords=missing,
                 reason=reason)


def plan(client: LLMClient, original: str, last: str, score: float | None, missing: list[str], max_queries: int,
         image=None) -> dict:
    text = PLAN_USER.format(original=original[:MAX_PROMPT_CHARS], last=last[:MAX_PROMPT_CHARS],
                            score="not scored" if score is None else f"{score:.4f}",
                            missing=", ".join(missing) or "(none)", max_queries=max_queries)

    def check(obj):
        new = obj["prompt"]
        if not isinstance(new, str) or not new.strip():
            raise ValueError("'prompt' is empty")
        queries = obj.get("queries", [])
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise ValueError("'queries' is not a list of strings")
        diagnosis = str(obj.get("diagnosis", "")).strip().lower()
        return {"prompt": new.strip()[:MAX_PROMPT_CHARS], "queries": [q.strip()[:200] for q in queries if q.strip()]
                [:max_queries], "diagnosis": diagnosis if diagnosis in ("rendering", "understanding") else "unknown",
                "reason": str(obj.get("reason", ""))[:500]}

    content = [{"type": "text", "text": text}] + ([image_part(image)] if image is not None else [])
    return client.chat_json([{"role": "system", "content": PLAN_SYSTEM}, {"role": "user", "content": content}], check)


def pick(client: LLMClient, query: str, prompt: str, candidates: list) -> tuple[int, str]:
    listing = "\n".join(f"{i}. {c.title or '(untitled)'} [{c.source}, {c.licence}]" for i, c in enumerate(candidates))

    def check(obj):
        choice = obj["choice"]
        if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < len(candidates):
            raise ValueError(f"'choice' must be 0..{len(candidates) - 1}")
        return choice, str(obj.get("reason", ""))[:300]

    return client.chat_json([{"role": "system", "content": PICK_SYSTEM},
                             {"role": "user", "content": PICK_USER.format(query=query, prompt=prompt[:500],
                                                                          listing=listing)}], check)
