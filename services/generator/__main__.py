"""`python -m services.generator`: serve the generator with /metrics, /healthz and /readyz."""

from shared.runner import serve

if __name__ == "__main__":
    serve("generator")
