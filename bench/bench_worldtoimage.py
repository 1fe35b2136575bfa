"""World-To-Image on the tiny Flux with loopback stand-ins (a scripted VLM/LLM and an Openverse-format image search),
measured in one run: time per iteration split into generation (text encoding, sampling, VAE), retrieval (search
requests and image downloads through the guarded client), planning (the LLM's rewrite and pick) and scoring (the
VLM judge), and each part's share.

The shares are what carries over in kind (on a GPU with a real model generation dominates; with a remote LLM the
network round trips do); the absolute times (a CPU, a tiny model, loopback) do not.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import ROOT, figure, sized  # noqa: E402
sys.path.insert(0, str(ROOT / "tests"))  # the loopback stand-ins the tests use

ITERATIONS, RUNS, SIDE, STEPS = sized((4, 3, 128, 8), (2, 1, 32, 1))


def host():
    from editlab.client.hostenv import comfyui_path

    sys.path.insert(0, str(comfyui_path()))
    from comfy.cli_args import args

    args.cpu = True


class Timer:
    def __init__(self):
        self.t = {"generation": 0.0, "retrieval": 0.0, "planning": 0.0, "scoring": 0.0}

    def wrap(self, key, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[key] += time.perf_counter() - t
        return timed


class TimedSource:
    def __init__(self, source, timer):
        self.source, self.timer = source, timer
        self.name, self.describe = source.name, source.describe
        self.search = timer.wrap("retrieval", source.search)
        self.load = timer.wrap("retrieval", source.load)


def main():
    host()
    from standins import ChatStandIn, Reply, StandIn, png_bytes

    from editlab.models.tiny import build_tiny_models
    from editlab.models.worldtoimage import agent as agent_mod
    from editlab.models.worldtoimage import judge as J
    from editlab.nodes import llm as llm_nodes
    from editlab.nodes import worldtoimage as nodes

    def respond(body):
        system = body["messages"][0]["content"]
        if system == J.JUDGE_SYSTEM:
            return {"alignment": 4, "visible_keywords": ["lamp"], "reason": "partly"}
        if system == J.PLAN_SYSTEM:
            return {"diagnosis": "understanding", "prompt": "a brass desk lamp with a green shade",
                    "queries": ["zorblax lamp"], "reason": "brand"}
        return {"choice": 0, "reason": "first"}

    real_run, real_plan, real_pick = agent_mod.run_agent, J.plan, J.pick
    with torch.inference_mode(), ChatStandIn(responder=respond) as llm_site, StandIn() as site:
        site.routes["/v1/images/"] = Reply(200, {"results": [
            {"url": f"{site.url}/img/{i}.png", "title": f"lamp {i}", "license": "cc0", "license_version": "1.0"}
            for i in range(5)]})
        site.routes["*"] = Reply(200, png_bytes(512, 512, (30, 120, 200)), {"Content-Type": "image/png"})
        flux = build_tiny_models("flux", 0)
        llm = llm_nodes.EditLabLLM.execute(base_url=llm_site.base_url, model="stand-in", api_key_env="",
                                           temperature=0.0, timeout=10.0, max_retries=0, vision=True).result[0]
        scorer = nodes.EditLabImageScorer.execute(judge="vlm", formula="authors_gated", vlm_aesthetic=False,
                                                  llm=llm).result[0]
        totals = []
        for run in range(RUNS + 1):
            timer = Timer()
            web = nodes.EditLabWebImageSearch.execute(service="openverse", endpoint=site.url + "/v1/images/",
                                                      allow_loopback=True, use_cache=False, timeout=10.0,
                                                      max_megabytes=20.0, max_megapixels=40.0).result[0]

            def timed_run(prompt, generate, score_fn, sources, settings, **kw):
                J.plan, J.pick = timer.wrap("planning", real_plan), timer.wrap("planning", real_pick)
                try:
                    return real_run(prompt, timer.wrap("generation", generate), timer.wrap("scoring", score_fn),
                                    [TimedSource(s, timer) for s in sources], settings, **kw)
                finally:
                    J.plan, J.pick = real_plan, real_pick

            nodes.run_agent = timed_run
            t = time.perf_counter()
            out = nodes.EditLabWorldToImage.execute(
                model=flux.model, clip=flux.clip, vae=flux.vae, prompt="a Zorblax lamp on a desk", width=SIDE,
                height=SIDE, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple", seed=0,
                iterations=ITERATIONS, threshold=10.0, candidates=5, references=1,
                reference_mode="reference_latents", llm=llm, scorer=scorer, source_1=web).result
            wall = time.perf_counter() - t
            nodes.run_agent = real_run
            assert out[3].shape[0] == ITERATIONS
            if run:
                totals.append({"wall": wall, **timer.t})  # run 0 warms up
    per_it = {k: statistics.median(r[k] for r in totals) / ITERATIONS for k in totals[0]}
    other = per_it["wall"] - sum(v for k, v in per_it.items() if k != "wall")
    print(f"World-To-Image, tiny Flux {SIDE}x{SIDE}, {STEPS} steps, {ITERATIONS} iterations, median of {RUNS} runs, "
          f"loopback stand-ins; per iteration:")
    for k in ("generation", "retrieval", "planning", "scoring"):
        print(f"  {k:<11} {per_it[k] * 1000:8.1f} ms  ({per_it[k] / per_it['wall']:5.1%})")
    print(f"  {'other':<11} {other * 1000:8.1f} ms  ({other / per_it['wall']:5.1%})")
    print(f"  {'total':<11} {per_it['wall'] * 1000:8.1f} ms")
    figure("iteration_ms", per_it["wall"] * 1000, f"{per_it['wall'] * 1000:.0f} ms",
           f"World-To-Image per iteration, tiny Flux {SIDE}x{SIDE}, {STEPS} steps, loopback stand-ins")
    for k in ("generation", "retrieval", "planning", "scoring"):
        figure(f"share_{k}", per_it[k] / per_it["wall"], f"{per_it[k] / per_it['wall']:.1%}", f"{k}'s share of it")


if __name__ == "__main__":
    main()
