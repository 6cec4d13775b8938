"""`python -m services.acquirer`: serve the acquirer with /metrics, /healthz and /readyz."""

from shared.runner import serve

if __name__ == "__main__":
    serve("acquirer")
