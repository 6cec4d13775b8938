"""`python -m services.verifier`: serve the verifier with /metrics, /healthz and /readyz."""

from shared.runner import serve

if __name__ == "__main__":
    serve("verifier")
