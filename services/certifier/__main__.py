"""`python -m services.certifier`: serve the certifier with /metrics, /healthz and /readyz."""

from shared.runner import serve

if __name__ == "__main__":
    serve("certifier")
