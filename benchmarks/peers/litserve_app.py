"""minilm on LitServe, as its documentation serves an embedding model: sentence-transformers in
a LitAPI with dynamic batching. It runs in the LitServe peer's own venv (scripts/peer-venv), so
it imports nothing of torchdock's.

    python litserve_app.py --model DIR --port 8000 [--max-batch-size 32] [--batch-timeout 0.005]

POST /predict {"input": "a sentence"} -> {"embedding": [384 floats]}
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run
# time to tell a JSON body from a query parameter.
import argparse
from typing import Any

import litserve as ls
import numpy as np
from sentence_transformers import SentenceTransformer


class MinilmEmbeddings(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model_dir: str, **batching: Any) -> None:
        super().__init__(**batching)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.model = SentenceTransformer(self.model_dir, device=device)

    def decode_request(self, request: dict[str, Any]) -> str:
        return str(request["input"])

    def predict(self, texts: list[str]) -> np.ndarray:
        # fp32, L2-normalised like the model's own Normalize module and torchdock's output.
        return self.model.encode(texts, batch_size=len(texts), normalize_embeddings=True)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, list[float]]:
        return {"embedding": output.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    args = parser.parse_args()
    api = MinilmEmbeddings(
        args.model, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout
    )
    server = ls.LitServer(api, accelerator="cpu")
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
