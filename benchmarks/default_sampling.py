"""How often the bundled model answers "What is the capital of France?" right, per sampling choice.

The evidence for the bundled model's default sampling (README, ``BUNDLED_DEFAULTS``): 20 sampled
replies per setting (seeds 0..19), on each backend, counted as right when the reply names Paris.

    python benchmarks/default_sampling.py [--n 20] [--backends torch,openvino]
"""

from __future__ import annotations

import argparse
import json
import os

import chatstream_lab as csl
from chatstream_lab.admission import AdmissionGate
from chatstream_lab.config import Limits, SamplingParams
from chatstream_lab.engine.factory import build_generator
from chatstream_lab.prompts import encode_messages, resolve_template

QUESTIONS = ["What is the capital of France?", "What is the capital of Japan?",
             "What is the capital of Italy?"]
ANSWERS = ["Paris", "Tokyo", "Rome"]
SETTINGS = {
    "temperature 0.3, top_p 0.9 (old default)": dict(temperature=0.3, top_p=0.9),
    "temperature 0.3, top_p 0.9, min_p 0.1": dict(temperature=0.3, top_p=0.9, min_p=0.1),
    "temperature 0.2, top_p 0.9, min_p 0.1": dict(temperature=0.2, top_p=0.9, min_p=0.1),
    "temperature 0.7, top_p 0.9, min_p 0.1": dict(temperature=0.7, top_p=0.9, min_p=0.1),
    "SmolLM2's generation_config (temperature 0.2, top_p 0.9)": dict(temperature=0.2, top_p=0.9),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--backends", default="torch,openvino")
    args = ap.parse_args()
    out = {"load_avg": os.getloadavg(), "n": args.n, "results": []}
    for backend in args.backends.split(","):
        lm = csl.load_model(backend=backend, progress=False)
        tpl = resolve_template(None, lm.tokenizer)
        with build_generator(lm, AdmissionGate(Limits(8, 200))) as gen:
            for name, kw in SETTINGS.items():
                row = {"backend": backend, "setting": name}
                for q, a in zip(QUESTIONS, ANSWERS):
                    ids = list(encode_messages(tpl, lm.tokenizer, q).ids)
                    streams = [gen.submit(ids, SamplingParams(max_new_tokens=24, seed=s, **kw))
                               for s in range(args.n)]
                    replies = [s.result(300).text for s in streams]
                    row[a] = sum(a in r for r in replies)
                    if a == "Paris":
                        row["wrong_examples"] = [r for r in replies if a not in r][:2]
                print(json.dumps(row, ensure_ascii=False), flush=True)
                out["results"].append(row)
    print(json.dumps({"load_avg_end": os.getloadavg()}))


if __name__ == "__main__":
    main()
