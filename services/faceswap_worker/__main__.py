"""``python -m services.faceswap_worker``: the RunPod serverless worker (what the container runs)."""

from services.faceswap_worker.handler import main

if __name__ == "__main__":
    main()
